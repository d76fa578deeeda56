"""The triggers job end to end through real Kafka: a scripted multi-user trace in, the
expected notifications out (read_committed), nothing missing, extra or doubled; malformed
records on the DLQ while the job keeps running.

Timeline (minutes after T0 = 2026-01-01T00:00Z; + add_to_cart, - remove, c checkout,
$ purchase, v product_view, s search):

    u-cart      +p1 +p2                          ──► cart_abandoned      @ 5 + 30 = 35
                0   5
    u-checkout  +p1  c                           ──► checkout_abandoned  @ 2 + 15 = 17
                0    2
    u-paid      +p1 c $                          ──► nothing (purchase empties the cart)
    u-browse    v v v v(hats)                    ──► browse_abandoned    @ 3 + 30 = 33
                0 1 2 3          (3 × shoes)
    u-intent    s   v   +p9                      ──► high_intent @ 4, cart_abandoned @ 34
                0   2   4
    u-optout    +p1 (consent: marketing false)   ──► nothing (suppressed by consent)
    u-again     +p1 ............ +p2             ──► cart_abandoned @ 30 (deadline passed
                0                40                  before the next event); the one @ 70
                                                     is suppressed by the 24 h cap
    u-dup       +p1 +p1 (same event_id)          ──► cart_abandoned @ 30 with quantity 1
    u-gone      +p1 -p1                          ──► nothing (removed to zero)

A page_view at T0 + 5 h on every partition then moves the watermark past all deadlines;
an add_to_cart at T0 + 1 min sent after that is late: it goes to the DLQ, fires nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.integration.kafka_io import consume

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600_000
M = 60_000


def ev(user: str, minute: float, event_type: str, n: int, **extra: object) -> dict:
    return {"event_id": f"{user}-{n}", "event_type": event_type, "user_id": user,
            "ts": T0 + int(minute * M), **extra}


def scripted_trace() -> list[dict]:
    events = [
        ev("u-cart", 0, "add_to_cart", 1, product_id="p1", quantity=2, price=10.0),
        ev("u-cart", 5, "add_to_cart", 2, product_id="p2", price=5.5),
        ev("u-checkout", 0, "add_to_cart", 1, product_id="p1", price=20.0),
        ev("u-checkout", 2, "checkout_started", 2),
        ev("u-paid", 0, "add_to_cart", 1, product_id="p1", price=1.0),
        ev("u-paid", 1, "checkout_started", 2),
        ev("u-paid", 3, "purchase", 3, order_id="o1", order_total=1.0),
        ev("u-browse", 0, "product_view", 1, product_id="s1", category="shoes"),
        ev("u-browse", 1, "product_view", 2, product_id="s2", category="shoes"),
        ev("u-browse", 2, "product_view", 3, product_id="s1", category="shoes"),
        ev("u-browse", 3, "product_view", 4, product_id="h1", category="hats"),
        ev("u-intent", 0, "search", 1, query="red shoes"),
        ev("u-intent", 2, "product_view", 2, product_id="p9", category="shoes"),
        ev("u-intent", 4, "add_to_cart", 3, product_id="p9", price=80.0),
        ev("u-optout", 0, "add_to_cart", 1, product_id="p1",
           consent={"personalization": True, "marketing": False}),
        ev("u-again", 0, "add_to_cart", 1, product_id="p1", price=3.0),
        ev("u-again", 40, "add_to_cart", 2, product_id="p2", price=4.0),
        ev("u-dup", 0, "add_to_cart", 1, product_id="p1", price=2.0),
        ev("u-dup", 0.5, "add_to_cart", 1, product_id="p1", price=2.0),  # same event_id
        ev("u-gone", 0, "add_to_cart", 1, product_id="p1"),
        ev("u-gone", 1, "remove_from_cart", 2, product_id="p1"),
    ]
    events.sort(key=lambda e: e["ts"])
    # A little disorder, well within the allowed lateness: swap neighbours 20 s apart.
    events[1], events[2] = events[2], events[1]
    return events


EXPECTED = {
    ("cart_abandoned", "u-cart", T0 + 35 * M),
    ("checkout_abandoned", "u-checkout", T0 + 17 * M),
    ("browse_abandoned", "u-browse", T0 + 33 * M),
    ("high_intent", "u-intent", T0 + 4 * M),
    ("cart_abandoned", "u-intent", T0 + 34 * M),
    ("cart_abandoned", "u-again", T0 + 30 * M),
    ("cart_abandoned", "u-dup", T0 + 30 * M),
}


@pytest.fixture
def job_topics(topic_factory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"events": topic_factory("events", 2), "notifications": topic_factory("notif", 2),
            "dlq": topic_factory("dlq", 1)}


@pytest.fixture
def triggers_job(job_topics: dict[str, str],
                 test_environ: dict[str, str]) -> Iterator[subprocess.Popen]:
    env = {**test_environ,
           "NUDGE_TOPICS__EVENTS": job_topics["events"],
           "NUDGE_TOPICS__NOTIFICATIONS": job_topics["notifications"],
           "NUDGE_TOPICS__DLQ": job_topics["dlq"],
           "NUDGE_KAFKA__GROUP_ID": f"it-{job_topics['events']}",
           "NUDGE_FLINK__CHECKPOINT_INTERVAL_MS": "2s"}
    log = open(ROOT / "var" / f"{job_topics['events']}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "jobs.triggers"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        assert proc.returncode is not None


def produce(bootstrap: str, topic: str, events: list[dict], partitions: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for event in events:
        producer.send(topic, key=event["user_id"].encode(), value=json.dumps(event).encode())
    producer.send(topic, key=b"junk", value=b"{not json")
    producer.send(topic, key=b"junk", value=b'{"event_id": "x", "event_type": "page_view"}')
    for partition in range(partitions):  # move event time forward everywhere
        mover = ev(f"zz-clock-{partition}", 300, "page_view", 1)
        producer.send(topic, key=mover["user_id"].encode(), value=json.dumps(mover).encode(),
                      partition=partition)
    producer.flush()
    producer.close()


def test_scripted_trace_gives_exactly_the_expected_notifications(
        stack: dict[str, str], job_topics: dict[str, str],
        triggers_job: subprocess.Popen) -> None:
    produce(stack["bootstrap"], job_topics["events"], scripted_trace(), partitions=2)

    records = consume(stack["bootstrap"], job_topics["notifications"], len(EXPECTED),
                      timeout_s=240, settle_s=12, job=triggers_job,
                      isolation_level="read_committed")
    notifications = [json.loads(r.value) for r in records]
    got = [(n["trigger"], n["user_id"], n["fired_at"]) for n in notifications]

    assert sorted(got) == sorted(EXPECTED), f"got {sorted(got)}"
    assert len(set(got)) == len(got), "a firing was emitted twice"
    for record, n in zip(records, notifications, strict=True):
        assert record.key == n["user_id"].encode()
        assert n["notification_id"] == f"{n['trigger']}:{n['user_id']}:{n['fired_at']}"
        assert n["schema_version"] == 1
        assert n["emitted_at"] > n["fired_at"]
    by_id = {(n["trigger"], n["user_id"]): n["payload"] for n in notifications}
    assert by_id[("cart_abandoned", "u-cart")] == {
        "items": [{"product_id": "p1", "quantity": 2, "price": 10.0},
                  {"product_id": "p2", "quantity": 1, "price": 5.5}],
        "cart_value": 25.5, "currency": "EUR", "last_activity_ts": T0 + 5 * M}
    assert by_id[("cart_abandoned", "u-dup")]["items"] == [
        {"product_id": "p1", "quantity": 1, "price": 2.0}]
    assert by_id[("browse_abandoned", "u-browse")] == {
        "category": "shoes", "product_ids": ["s1", "s2"], "session_start": T0,
        "session_end": T0 + 3 * M}
    assert by_id[("high_intent", "u-intent")] == {"query": "red shoes", "product_id": "p9"}

    # The watermark now stands at T0 + 5 h - 70 s: an add_to_cart at T0 + 1 min is late.
    late = ev("u-late", 1, "add_to_cart", 1, product_id="p1")
    producer = KafkaProducer(bootstrap_servers=stack["bootstrap"], acks="all")
    producer.send(job_topics["events"], key=b"u-late", value=json.dumps(late).encode())
    producer.close()

    dlq = consume(stack["bootstrap"], job_topics["dlq"], 3, timeout_s=60)
    errors = sorted(dict(r.headers)["error"].decode() for r in dlq)
    assert errors == ["invalid_json", "late", "missing:user_id"]
    assert [json.loads(r.value) for r in dlq if dict(r.headers)["error"] == b"late"] == [late]
    again = consume(stack["bootstrap"], job_topics["notifications"], len(EXPECTED) + 1,
                    timeout_s=8, isolation_level="read_committed")
    assert len(again) == len(EXPECTED), "the late event must not fire anything"
    for r in dlq:
        headers = dict(r.headers)
        assert headers["source.topic"].decode() == job_topics["events"]
        assert int(headers["source.offset"]) >= 0
    assert triggers_job.poll() is None, "the job must keep running after bad input"
