"""Privacy end to end (issue 9): consent changes and erasure requests on the privacy
topic, through both jobs, real Kafka, real Redis, real Flink.

Triggers (minicluster; minutes after T0, + add_to_cart, v product_view(shoes)):

    u-keep         +p1                                 ──► cart_abandoned @ 30 (control)
    u-optout       +p1     consent marketing=false @ 5 ──► nothing
    u-erased       +p1 ×3  erasure @ 10   +p2 @ 20     ──► never p1; cart_abandoned @ 50
                                                           with p2 only (a new user after
                                                           10) unless the preloaded events
                                                           overtook the request
    u-browse       v v v                               ──► browse_abandoned @ 32 (control)
    u-erased-b     v v v   erasure @ 2.5   v @ 3        ──► nothing: the session holds
                                                           events from before the erasure

Profiles (minicluster): profiles of a and b in Redis; then an erasure for a and a
withdrawal of personalization for b: both keys go within the contract's 60 s, one audit
record for a; a's next events make a new profile, a late event from before the erasure
is not counted.

Cluster: a pending cart of an erased user never fires, also after the job is restored
from a savepoint taken before the erasure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.conftest import CLUSTER_PARTITIONS, wait_for
from tests.integration.kafka_io import consume, send_events

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts import ops  # noqa: E402

T0 = 1_767_225_600_000
M = 60_000


def ev(user: str, minute: float, event_type: str, n: int, **extra: object) -> dict:
    return {"event_id": f"{user}-{n}", "event_type": event_type, "user_id": user,
            "ts": T0 + int(minute * M), **extra}


def consent(user: str, ts: int, **flags: bool) -> dict:
    return {"type": "consent", "user_id": user, "ts": ts, **flags}


def erasure(user: str, ts: int) -> dict:
    return {"type": "erasure", "user_id": user, "ts": ts}


def send_raw(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, int]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value, ts in records:
        producer.send(topic, key=key, value=value, timestamp_ms=ts)
    producer.flush()
    producer.close()


def clocks(minute: float, partitions: int = 2) -> list[dict]:
    """A page_view per partition: event time moves on everywhere."""
    return [{**ev(f"zz-clock-{p}", minute, "page_view", int(minute)), "_partition": p}
            for p in range(partitions)]


@pytest.fixture
def topics(topic_factory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"events": topic_factory("events", 2), "privacy": topic_factory("privacy", 1),
            "notifications": topic_factory("notif", 1), "dlq": topic_factory("dlq", 1),
            "audit": topic_factory("audit", 1)}


@pytest.fixture
def run_job(topics: dict[str, str], test_environ: dict[str, str],  # type: ignore[no-untyped-def]
            local_job) -> Callable[..., subprocess.Popen]:
    """Start `python -m jobs.<name>` on a local minicluster with the test's topics."""
    def start(name: str, **extra: str) -> subprocess.Popen:
        env = {**test_environ,
               "NUDGE_TOPICS__EVENTS": topics["events"],
               "NUDGE_TOPICS__PRIVACY": topics["privacy"],
               "NUDGE_TOPICS__NOTIFICATIONS": topics["notifications"],
               "NUDGE_TOPICS__DLQ": topics["dlq"],
               "NUDGE_TOPICS__AUDIT": topics["audit"],
               "NUDGE_KAFKA__GROUP_ID": f"it-{topics['events']}",
               "NUDGE_FLINK__CHECKPOINT_INTERVAL_MS": "2s",
               "NUDGE_EVENTS__IDLE_TIMEOUT_MS": "3s", **extra}
        return local_job(f"jobs.{name}", env, f"{topics['events']}-{name}")

    return start


def test_consent_withdrawal_and_erasure_in_the_triggers_job(
        stack: dict[str, str], topics: dict[str, str],
        run_job: Callable[..., subprocess.Popen]) -> None:
    bootstrap = stack["bootstrap"]
    events = [
        ev("u-keep", 0, "add_to_cart", 1, product_id="p1", price=5.0),
        ev("u-optout", 0, "add_to_cart", 1, product_id="p1", price=5.0),
        ev("u-erased", 0, "add_to_cart", 1, product_id="p1", quantity=3, price=9.0),
        ev("u-erased", 20, "add_to_cart", 2, product_id="p2", price=4.0),
        *(ev("u-browse", m, "product_view", m, product_id=f"s{m}", category="shoes")
          for m in (0, 1, 2)),
        *(ev("u-erased-b", m, "product_view", m, product_id=f"s{m}", category="shoes")
          for m in (0, 1, 2, 3)),
    ]
    requests = [consent("u-optout", T0 + 5 * M, marketing=False),
                erasure("u-erased", T0 + 10 * M), erasure("u-erased-b", T0 + int(2.5 * M))]
    send_raw(bootstrap, topics["privacy"], [
        (r["user_id"].encode(), json.dumps(r).encode(), r["ts"]) for r in requests] + [
        (b"x", b'{"type": "forget", "user_id": "x", "ts": 1767225600000}', T0),
        (b"y", b"{not json", T0)])
    send_events(bootstrap, topics["events"], sorted(events, key=lambda e: e["ts"]))
    send_events(bootstrap, topics["events"], clocks(300))
    job = run_job("triggers")

    expected = {("cart_abandoned", "u-keep", T0 + 30 * M),
                ("browse_abandoned", "u-browse", T0 + 32 * M)}
    records = consume(bootstrap, topics["notifications"], len(expected), timeout_s=240,
                      settle_s=15, job=job, isolation_level="read_committed")
    notifications = [json.loads(r.value) for r in records]
    got = [(n["trigger"], n["user_id"], n["fired_at"]) for n in notifications]
    assert sorted(g for g in got if g[1] != "u-erased") == sorted(expected)
    # Nothing of u-erased from before the request. Its cart from after the request fires
    # as a new user's, unless the preloaded events overtook the request (then it is
    # erased too: the known limit in docs/privacy.md).
    after = [n for n in notifications if n["user_id"] == "u-erased"]
    assert [(n["trigger"], n["fired_at"]) for n in after] in (
        [], [("cart_abandoned", T0 + 50 * M)])
    for n in after:
        assert n["payload"]["items"] == [{"product_id": "p2", "quantity": 1, "price": 4.0}]
        assert n["payload"]["last_activity_ts"] == T0 + 20 * M

    dlq = consume(bootstrap, topics["dlq"], 2, timeout_s=30)
    assert sorted(dict(r.headers)["error"].decode() for r in dlq) == \
        ["invalid_json", "unknown_privacy_type"]
    assert {dict(r.headers)["source.topic"].decode() for r in dlq} == {topics["privacy"]}
    assert job.poll() is None


def test_erasure_and_withdrawal_in_the_profiles_job(
        stack: dict[str, str], topics: dict[str, str], redis_client,  # type: ignore[no-untyped-def]
        run_job: Callable[..., subprocess.Popen]) -> None:
    bootstrap = stack["bootstrap"]
    prefix = f"it-{uuid.uuid4().hex[:8]}:"

    def profile(user: str) -> dict[str, str]:
        return {k.decode(): v.decode()
                for k, v in redis_client.hgetall(f"{prefix}profile:{user}").items()}

    send_events(bootstrap, topics["events"], [
        ev("a", 0, "page_view", 1), ev("a", 1, "product_view", 2, product_id="p", category="k"),
        ev("b", 0, "page_view", 1), ev("b", 1, "page_view", 2), *clocks(20)])
    # the cart_abandoned input of the profiles job; empty here
    job = run_job("profiles", NUDGE_REDIS__KEY_PREFIX=prefix)
    try:
        # the last 10m window with a's events ends at 11 min; the one after reads 0s
        wait_for(lambda: profile("a").get("window_end_10m") == str(T0 + 12 * M)
                 and profile("b").get("events_total") == "2", 180, "profiles of a and b")
        assert profile("a")["events_total"] == "2"

        requested_at = T0 + 21 * M
        sent = int(time.time() * 1000)
        send_raw(bootstrap, topics["privacy"], [
            (b"a", json.dumps(erasure("a", requested_at)).encode(), requested_at),
            (b"b", json.dumps(consent("b", requested_at, personalization=False)).encode(),
             requested_at)])
        # The contract: within 60 s the profile is gone and the audit record is there.
        wait_for(lambda: profile("a") == {} and profile("b") == {}, 60,
                 "the erased and the withdrawn profile to be deleted")
        audit = consume(bootstrap, topics["audit"], 1, timeout_s=60 - (time.time() * 1000 - sent)
                        / 1000, isolation_level="read_committed")
        assert len(audit) == 1
        record = json.loads(audit[0].value)
        assert audit[0].key == b"a"
        assert record["user_id"] == "a" and record["requested_at"] == requested_at
        assert record["redis_keys_deleted"] == [f"{prefix}profile:a"]
        assert sent <= record["completed_at"] <= int(time.time() * 1000)
        # A restore from a checkpoint older than the erasure would carry it out again,
        # after events that the job handled first (docs/privacy.md, "Known limit"): go on
        # once a checkpoint holds it.
        group = f"it-{topics['events']}-profiles"
        wait_for(lambda: ops.consumer_lag(bootstrap, group, topics["privacy"]) == 0, 60,
                 "a checkpoint after the erasure")

        # After the request: a is a new user; b stays without a profile. The event of a
        # at 20.5 min comes after the erasure but is from before it: not counted.
        # The clocks go only once these are read: after a pause, both partitions are
        # idle, and a clock read first on one partition would make the other's events
        # late (an idle partition does not hold the watermark back; contract).
        send_events(bootstrap, topics["events"], [
            ev("a", 20.5, "page_view", 3), ev("a", 22, "page_view", 4),
            ev("a", 23, "product_view", 5, product_id="p", category="m"),
            ev("b", 22, "page_view", 3)])
        wait_for(lambda: ops.consumer_lag(bootstrap, group, topics["events"]) == 0, 60,
                 "a's new events to be read")
        # Then event time moves on a minute at a time, as live traffic does, until a's
        # last window (its 0s, ending at 34 min) is written.
        minute = iter(range(40, 400))

        def a_rewritten() -> bool:
            if profile("a").get("window_end_10m") == str(T0 + 34 * M):
                return True
            send_events(bootstrap, topics["events"], clocks(next(minute)))
            return False

        wait_for(a_rewritten, 120, lambda: f"a's new profile (window_end_10m "
                 f"{T0 + 34 * M}); Redis has {profile('a')}")
        assert profile("a")["events_total"] == "2"
        assert profile("a")["first_seen"] == str(T0 + 22 * M)
        assert profile("b") == {}
        again = consume(bootstrap, topics["audit"], 2, timeout_s=5,
                        isolation_level="read_committed")
        assert len(again) == 1, "one audit record per erasure"
        assert job.poll() is None
    finally:
        for key in redis_client.scan_iter(f"{prefix}*"):
            redis_client.delete(key)


def test_an_erased_pending_cart_never_fires_even_after_restoring_an_older_savepoint(
        stack: dict[str, str], cluster_env: dict[str, str]) -> None:
    bootstrap = stack["bootstrap"]
    events_topic, privacy_topic = (cluster_env["NUDGE_TOPICS__EVENTS"],
                                   cluster_env["NUDGE_TOPICS__PRIVACY"])
    group = f"{cluster_env['NUDGE_KAFKA__GROUP_ID']}-triggers"
    t0 = (int(time.time() * 1000) - 2 * 3_600_000) // M * M

    def fill(minute: float) -> list[dict]:
        return [{"event_id": f"fill-{p}-{minute}", "event_type": "page_view",
                 "user_id": f"u-fill-{p}", "ts": t0 + int(minute * M), "_partition": p}
                for p in range(CLUSTER_PARTITIONS)]

    carts = [{"event_id": f"{u}-1", "event_type": "add_to_cart", "user_id": u,
              "product_id": "p1", "price": 10.0, "ts": t0} for u in ("u-erased", "u-control")]
    send_events(bootstrap, events_topic, [*carts, *fill(1), *fill(5), *fill(10)])
    ops.submit("triggers")
    wait_for(lambda: ops.consumer_lag(bootstrap, group, events_topic) == 0, 120,
             "the carts to be checkpointed")
    older = ops.stop("triggers")  # both carts pending in this savepoint

    ops.submit("triggers", older)
    requested_at = t0 + 12 * M
    send_raw(bootstrap, privacy_topic, [
        (b"u-erased", json.dumps(erasure("u-erased", requested_at)).encode(), requested_at)])
    wait_for(lambda: ops.consumer_lag(bootstrap, group, privacy_topic) == 0, 120,
             "the erasure to be checkpointed")
    job = ops.find_job(ops.JOBS["triggers"], ops.ACTIVE_STATES)
    assert job is not None
    ops.cancel(job["jid"])

    # Back to the savepoint from before the erasure, then event time passes the deadline.
    send_events(bootstrap, events_topic, fill(45))
    resumed = ops.submit("triggers", older)
    assert ops.rest(f"/jobs/{resumed}/checkpoints")["latest"]["restored"] is not None
    records = consume(bootstrap, cluster_env["NUDGE_TOPICS__NOTIFICATIONS"], want=1,
                      timeout_s=120, settle_s=15, isolation_level="read_committed")
    fired = [(n["trigger"], n["user_id"], n["fired_at"])
             for n in (json.loads(r.value) for r in records)]
    assert fired == [("cart_abandoned", "u-control", t0 + 30 * M)]
