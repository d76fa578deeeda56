"""The profiles job through real Kafka and real Redis.

Timeline (minutes after T0; users a, b, c, d; v product_view(category), + add_to_cart,
$ purchase, p page_view):

    a   v(k) v(k) p  +   v(m)        $ 600
        0    1    2  3   9          12
    b   p    v(m)                        (+ a cart_abandoned notification @ 5)
        1    4
    c   p (personalization denied)       ──► no profile at all
    d   p ... (consent withdrawn @ 6)    ──► profile deleted
        0

Phase 1: a clock event at T0 + 20 min on every partition moves the watermark to
T0 + 19:50 (the contract's: 10 s behind), so the newest complete 10m window ends at
19 min: [9, 19) and the newest 1h window ends at 15 min: [-45, 15).
Late events: a view of a at 18:54 — within the allowed lateness (60 s) of the watermark,
but its minute was already cut — is written into the 10m window ending at 19 at once;
a page view at 19:30 (behind the watermark, its minute not cut yet) counts in the
window ending at 20 (phase 2's lifetime figures).
Phase 2: clock events at T0 + 5 h: every window field of a and b is 0, lifetime figures
are exact, the TTL is set.
Replay: the same job run again over the whole topic (a new consumer group) must leave
the lifetime figures as they are, not doubled.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaProducer

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600_000
M = 60_000


def ev(user: str, minute: float, event_type: str, **extra: object) -> dict:
    return {"event_id": f"{user}-{minute}-{event_type}", "event_type": event_type,
            "user_id": user, "ts": T0 + int(minute * M), **extra}


EVENTS = [
    ev("a", 0, "product_view", product_id="p1", category="k"),
    ev("a", 1, "product_view", product_id="p2", category="k"),
    ev("b", 1, "page_view"),
    ev("a", 2, "page_view"),
    ev("a", 3, "add_to_cart", product_id="p2", price=300.0),
    ev("b", 4, "product_view", product_id="p9", category="m"),
    ev("a", 9, "product_view", product_id="p3", category="m"),
    ev("a", 12, "purchase", order_id="o1", order_total=600.0),
    ev("c", 0, "page_view", consent={"personalization": False, "marketing": False}),
    ev("d", 0, "page_view"),
    ev("d", 6, "page_view", consent={"personalization": False, "marketing": True}),
]


LATE = [ev("a", 18.9, "product_view", product_id="p4", category="m"),
        ev("a", 19.5, "page_view")]


def window_fields(user: str, start_min: float, end_min: float,
                  events: list[dict] = EVENTS) -> dict:
    """The six window figures of `user`'s events in [start, end), computed here."""
    inside = [e for e in events if e["user_id"] == user
              and T0 + start_min * M <= e["ts"] < T0 + end_min * M]
    views = [e for e in inside if e["event_type"] == "product_view"]
    counts: dict[str, int] = {}
    for e in views:
        counts[e["category"]] = counts.get(e["category"], 0) + 1
    top = ""
    if counts:
        first = {c: min(e["ts"] for e in views if e["category"] == c) for c in counts}
        top = min(counts, key=lambda c: (-counts[c], first[c]))
    revenue = sum(e["order_total"] for e in inside if e["event_type"] == "purchase")
    return {"views": len(inside), "product_views": len(views),
            "carts": sum(e["event_type"] == "add_to_cart" for e in inside),
            "purchases": sum(e["event_type"] == "purchase" for e in inside),
            "revenue": revenue, "top_category": top}


def lifetime(user: str, events: list[dict] = EVENTS) -> dict:
    mine = [e for e in events if e["user_id"] == user]
    return {"first_seen": min(e["ts"] for e in mine), "last_seen": max(e["ts"] for e in mine),
            "events_total": len(mine),
            "orders_total": sum(e["event_type"] == "purchase" for e in mine),
            "revenue_total": sum(e.get("order_total", 0) for e in mine)}


def as_read(profile: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in profile.items()}


def check_window(profile: dict[str, str], suffix: str, user: str, end_min: float,
                 size_min: float, events: list[dict] = EVENTS) -> None:
    assert int(profile[f"window_end_{suffix}"]) == T0 + int(end_min * M)
    want = window_fields(user, end_min - size_min, end_min, events)
    for name in ("views", "product_views", "carts", "purchases"):
        assert int(profile[f"{name}_{suffix}"]) == want[name], (name, suffix)
    assert float(profile[f"revenue_{suffix}"]) == want["revenue"]
    assert profile[f"top_category_{suffix}"] == want["top_category"]


def check_lifetime(profile: dict[str, str], user: str, events: list[dict] = EVENTS) -> None:
    want = lifetime(user, events)
    for name in ("first_seen", "last_seen", "events_total", "orders_total"):
        assert int(profile[name]) == want[name], name
    assert float(profile["revenue_total"]) == want["revenue_total"]


def wait_for(check: Callable[[], bool], timeout_s: float, job: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if job.poll() is not None:
            pytest.fail(f"the profiles job exited with code {job.returncode}")
        if check():
            return
        time.sleep(1)
    assert check(), "timed out"


@pytest.fixture
def setup(topic_factory, test_environ, redis_client):  # type: ignore[no-untyped-def]
    prefix = f"it-{uuid.uuid4().hex[:8]}:"
    events, notifications = topic_factory("events", 2), topic_factory("notif", 1)
    env = {**test_environ, "NUDGE_TOPICS__EVENTS": events,
           "NUDGE_TOPICS__NOTIFICATIONS": notifications, "NUDGE_REDIS__KEY_PREFIX": prefix,
           "NUDGE_FLINK__CHECKPOINT_INTERVAL_MS": "2s", "NUDGE_EVENTS__IDLE_TIMEOUT_MS": "3s"}
    yield {"events": events, "notifications": notifications, "prefix": prefix, "env": env}
    for key in redis_client.scan_iter(f"{prefix}*"):
        redis_client.delete(key)


@pytest.fixture
def start_job(setup, local_job) -> Callable[[str], subprocess.Popen]:  # type: ignore[no-untyped-def]
    def start(group: str) -> subprocess.Popen:
        return local_job("jobs.profiles", {**setup["env"], "NUDGE_KAFKA__GROUP_ID": group},
                         f"{setup['events']}-{group}")

    return start


def send(bootstrap: str, topic: str, records: list[dict], partitions: int = 1) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for record in records:
        producer.send(topic, key=record["user_id"].encode(), value=json.dumps(record).encode())
    producer.flush()
    producer.close()


def clocks(minute: float, partitions: int = 2) -> list[tuple[int, dict]]:
    return [(p, ev(f"zz-clock-{p}", minute, "page_view")) for p in range(partitions)]


def send_clocks(bootstrap: str, topic: str, minute: float) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for partition, record in clocks(minute):
        producer.send(topic, key=record["user_id"].encode(),
                      value=json.dumps(record).encode(), partition=partition)
    producer.flush()
    producer.close()


def test_profiles_follow_the_windows_decay_to_zero_and_survive_a_replay(
        stack, setup, start_job, redis_client) -> None:  # type: ignore[no-untyped-def]
    prefix, bootstrap = setup["prefix"], stack["bootstrap"]

    def profile(user: str) -> dict[str, str]:
        return as_read(redis_client.hgetall(f"{prefix}profile:{user}"))

    send(bootstrap, setup["notifications"],
         [{"notification_id": f"cart_abandoned:b:{T0 + 5 * M}", "user_id": "b",
           "trigger": "cart_abandoned", "fired_at": T0 + 5 * M, "emitted_at": T0 + 5 * M,
           "payload": {}, "schema_version": 1}])
    send(bootstrap, setup["events"], EVENTS)
    send_clocks(bootstrap, setup["events"], 20)
    job = start_job("it-profiles-1")

    # Phase 1: newest complete windows: 10m ending at 19 min, 1h ending at 15 min
    wait_for(lambda: profile("a").get("window_end_10m") == str(T0 + 19 * M)
             and profile("a").get("window_end_1h") == str(T0 + 15 * M), 150, job)
    a = profile("a")
    check_window(a, "10m", "a", 19, 10)
    check_window(a, "1h", "a", 15, 60)
    check_lifetime(a, "a")
    assert a["segments"] == "high_value,new_visitor"
    wait_for(lambda: "cart_abandoner" in profile("b").get("segments", ""), 30, job)
    assert profile("c") == {}
    assert profile("d") == {}

    # Late events: the written 10m window [9, 19) is corrected at once
    send(bootstrap, setup["events"], LATE)
    counted = EVENTS + LATE
    wait_for(lambda: profile("a").get("product_views_10m") == "2", 60, job)
    a = profile("a")
    check_window(a, "10m", "a", 19, 10, counted)
    check_window(a, "1h", "a", 15, 60)
    assert int(a["events_total"]) == lifetime("a")["events_total"] + 1  # 19:30: not yet

    # Phase 2: far ahead, every window field is 0, lifetime exact, TTL set
    send_clocks(bootstrap, setup["events"], 300)
    # a's first empty windows after its 19:30 event: 10m ending 30, 1h ending 80. After
    # the idle spell, its slice can reach the profile function after the watermark's
    # jump: it corrects the windows written without it at once, and the 0s follow at the
    # next move of event time — a clock tick per check here, as live traffic would bring.
    ticks = iter(range(1, 1000))

    def settled() -> bool:
        send_clocks(bootstrap, setup["events"], 300 + next(ticks) / 100)
        return (int(profile("a").get("window_end_10m", 0)) >= T0 + 30 * M
                and int(profile("a").get("window_end_1h", 0)) >= T0 + 80 * M
                and int(profile("b").get("window_end_1h", 0)) >= T0 + 65 * M)

    wait_for(settled, 90, job)
    for user in ("a", "b"):
        p = profile(user)
        for suffix in ("10m", "1h"):
            assert [p[f"{f}_{suffix}"] for f in ("views", "product_views", "carts",
                                                 "purchases", "revenue")] == ["0"] * 5
            assert p[f"top_category_{suffix}"] == ""
        check_lifetime(p, user, counted)
        ttl = redis_client.pttl(f"{prefix}profile:{user}")
        assert 0 < ttl <= 30 * 86_400_000

    # Replay: a second run of the job over the whole topic (a new consumer group)
    before = {u: profile(u) for u in ("a", "b")}
    job.terminate()
    job.wait(30)
    replay = start_job("it-profiles-2")
    time.sleep(45)  # long enough to re-read and re-write everything
    assert replay.poll() is None
    for user in ("a", "b"):
        check_lifetime(profile(user), user, counted)
        assert profile(user) == before[user]
