"""Fault injection on the standalone cluster of the local stack: the triggers job keeps
its promise — every expected notification exactly once, read with `read_committed` —
while TaskManagers are killed, the JobManager is restarted and the Kafka broker bounces.

The trace is the scripted multi-user trace of tests/integration/test_triggers_kafka.py
(whose expected notifications are written out by hand there), repeated COPIES times
for distinct users, each copy 7 minutes of event time after the previous one, mixed
with page views of filler users (who never fire anything) for volume. Expected:
EXPECTED of that test, shifted per copy.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest

from scripts import ops
from scripts import stack as stack_mod
from tests.conftest import CLUSTER_PARTITIONS, wait_for
from tests.integration.kafka_io import consume, send_events
from tests.integration.test_triggers_kafka import EXPECTED, T0, scripted_trace

# Not in `make test` (CI): ~20 min, and they restart the stack's services. `make test-faults`.
pytestmark = pytest.mark.cluster_faults

M = 60_000
COPIES = 120
FILLER_USERS = 40
FILLER_EVERY_MS = 90_000

Firing = tuple[str, str, int]


def multi_user_trace(t0: int, copies: int = COPIES, fillers: int = FILLER_USERS
                     ) -> tuple[list[dict], set[Firing]]:
    """`copies` shifted copies of the scripted trace + filler page views, sorted by ts."""
    events: list[dict] = []
    expected: set[Firing] = set()
    for k in range(copies):
        shift = t0 - T0 + k * 7 * M
        for e in scripted_trace():
            events.append({**e, "user_id": f"{e['user_id']}-{k}",
                           "event_id": f"{e['event_id']}-{k}", "ts": e["ts"] + shift})
        expected |= {(trigger, f"{user}-{k}", fired + shift)
                     for trigger, user, fired in EXPECTED}
    end = t0 + copies * 7 * M + 60 * M
    for i in range(fillers):
        events += [{"event_id": f"fill-{i}-{ts}", "event_type": "page_view",
                    "user_id": f"fill-{i}", "ts": ts}
                   for ts in range(t0 + i * 1000, end, FILLER_EVERY_MS)]
    events.sort(key=lambda e: e["ts"])
    last = events[-1]["ts"]
    events += [{"event_id": f"clock-{p}", "event_type": "page_view", "user_id": f"clock-{p}",
                "ts": last + 5 * 60 * M, "_partition": p} for p in range(CLUSTER_PARTITIONS)]
    return events, expected


def failures(job_id: str) -> int:
    return len(ops.rest(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"])


def wait_for_restart(job_id: str, before: int, timeout_s: float = 120) -> None:
    """Until Flink has noticed the loss (one more entry in the exception history)."""
    wait_for(lambda: failures(job_id) > before, timeout_s,
             f"job {job_id} to restart after the fault")


def wait_running(job_id: str, timeout_s: float = 120) -> None:
    if not ops.wait_running(job_id, timeout_s):
        pytest.fail(f"job {job_id} not running again after {timeout_s:.0f}s")


def compare(case: str, injected: str, expected: set[Firing], records: list) -> None:
    got = [(n["trigger"], n["user_id"], n["fired_at"])
           for n in (json.loads(r.value) for r in records)]
    missing = expected - set(got)
    extra = set(got) - expected
    duplicated = len(got) - len(set(got))
    print(f"\n[{case}] injected: {injected}\n[{case}] expected {len(expected)}, got "
          f"{len(got)}, missing {len(missing)}, duplicated {duplicated}, extra {len(extra)}")
    if missing:
        print(f"[{case}] missing by trigger: {missing_by_trigger(missing)}")
    if extra:
        print(f"[{case}] extra by trigger: {missing_by_trigger(extra)}; first: "
              f"{sorted(extra)[:5]}")
    assert not missing, f"missing {sorted(missing)[:5]}"
    assert not extra, f"unexpected {sorted(extra)[:5]}"
    assert duplicated == 0


def missing_by_trigger(missing: set[Firing]) -> dict[str, str]:
    """Per trigger: how many are missing and from which copies of the trace (the copy
    number is the user id's suffix), e.g. {'cart_abandoned': '48 of copies 12-23'}."""
    copies: dict[str, list[int]] = {}
    for trigger, user, _ in missing:
        copies.setdefault(trigger, []).append(int(user.rsplit("-", 1)[1]))
    return {t: f"{len(ks)} of copies {min(ks)}-{max(ks)}" for t, ks in sorted(copies.items())}


def run_case(stack_info: dict[str, str], env: dict[str, str], case: str,
             inject: Callable[[str], str]) -> None:
    t0 = (int(time.time() * 1000) - 3 * 86_400_000) // M * M
    events, expected = multi_user_trace(t0)
    job_id = ops.submit("triggers")
    producer = threading.Thread(target=send_events, args=(
        stack_info["bootstrap"], env["NUDGE_TOPICS__EVENTS"], events, 2500))
    producer.start()
    try:
        injected = inject(job_id)
    finally:
        producer.join()
    records = consume(stack_info["bootstrap"], env["NUDGE_TOPICS__NOTIFICATIONS"],
                      want=len(expected), timeout_s=300, settle_s=10,
                      isolation_level="read_committed")
    compare(case, f"{injected}; {len(events)} events", expected, records)


@pytest.fixture
def taskmanager_back() -> object:
    """Whatever a case does to the cluster, it ends with one TaskManager running."""
    yield None
    if not ops.rest("/overview")["taskmanagers"]:
        stack_mod.taskmanager_start()


def test_taskmanager_killed_twice(stack: dict[str, str], cluster_env: dict[str, str],
                                  taskmanager_back: object) -> None:
    def inject(job_id: str) -> str:
        kills = []
        for delay in (4, 6):
            time.sleep(delay)
            before = failures(job_id)
            kills += stack_kill_and_restart_taskmanager()
            wait_for_restart(job_id, before)
            wait_running(job_id)
        assert failures(job_id) >= 2
        return f"kill -9 of the TaskManager twice (pids {kills}), restarted each time"

    run_case(stack, cluster_env, "taskmanager", inject)


def stack_kill_and_restart_taskmanager() -> list[int]:
    killed = stack_mod.taskmanager_kill()
    assert killed, "no TaskManager to kill"
    time.sleep(2)
    stack_mod.taskmanager_start()
    return killed


def test_kafka_broker_restart(stack: dict[str, str], cluster_env: dict[str, str]) -> None:
    def inject(job_id: str) -> str:
        time.sleep(5)
        stack_mod.down(["kafka"])
        time.sleep(5)
        stack_mod.up(["kafka"])
        return "Kafka broker stopped for 5 s mid-stream, then started again"

    run_case(stack, cluster_env, "kafka", inject)


def test_jobmanager_restart_then_resubmit_from_latest_checkpoint(
        stack: dict[str, str], cluster_env: dict[str, str], taskmanager_back: object) -> None:
    def inject(job_id: str) -> str:
        time.sleep(6)
        wait_for_checkpoint(job_id)
        stack_mod.down(["flink"])  # no HA in the session cluster: the job goes with it
        checkpoint = ops.latest_retained_checkpoint(stack_mod.FLINK_DIR / "checkpoints", job_id)
        stack_mod.up(["flink"])
        resumed = ops.submit("triggers", checkpoint)
        return f"JobManager + cluster restarted; job {resumed} resubmitted from {checkpoint}"

    run_case(stack, cluster_env, "jobmanager", inject)


def wait_for_checkpoint(job_id: str) -> None:
    wait_for(lambda: bool((ops.rest(f"/jobs/{job_id}/checkpoints").get("latest") or {})
                          .get("completed")), 60, "a completed checkpoint to resume from")


def expected_lifetimes(events: list[dict]) -> dict[str, dict[str, float]]:
    """Lifetime figures per user, computed here from the trace (each event_id once)."""
    seen: set[tuple[str, str]] = set()
    out: dict[str, dict[str, float]] = {}
    for e in events:
        if (e["user_id"], e["event_id"]) in seen:
            continue
        seen.add((e["user_id"], e["event_id"]))
        life = out.setdefault(e["user_id"], {"events_total": 0, "orders_total": 0,
                                             "revenue_total": 0.0, "first_seen": e["ts"],
                                             "last_seen": e["ts"]})
        life["events_total"] += 1
        life["first_seen"] = min(life["first_seen"], e["ts"])
        life["last_seen"] = max(life["last_seen"], e["ts"])
        if e["event_type"] == "purchase":
            life["orders_total"] += 1
            life["revenue_total"] += e.get("order_total", 0.0)
    return out


def test_redis_down_for_60s_then_slowed(stack: dict[str, str], cluster_env: dict[str, str],
                                        redis_client) -> None:  # type: ignore[no-untyped-def]
    t0 = (int(time.time() * 1000) - 3 * 86_400_000) // M * M
    events, _ = multi_user_trace(t0, copies=30, fillers=10)
    # The clock users' own windows never complete (they move the watermark).
    expected = {u: life for u, life in expected_lifetimes(events).items()
                if not u.startswith("clock-")}
    prefix = cluster_env["NUDGE_REDIS__KEY_PREFIX"]
    job_id = ops.submit("profiles")
    # Redis goes down before the stream starts and stays down until the job has failed on
    # it (redis_max_wait_ms of retries), at least 60 s: the writes certainly meet the
    # outage, whenever the watermark lets the first window ends fire.
    stack_mod.down(["redis"])
    down_since = time.monotonic()
    producer = threading.Thread(target=send_events, args=(
        stack["bootstrap"], cluster_env["NUDGE_TOPICS__EVENTS"], events, 1000))
    producer.start()
    try:
        wait_for(lambda: failures(job_id) >= 1, 240, "the job to fail on the Redis outage")
        time.sleep(max(0.0, 60 - (time.monotonic() - down_since)))
        down_s = time.monotonic() - down_since
        stack_mod.up(["redis"])
        for _ in range(3):  # then slow: all writes paused for 3 s, three times
            redis_client.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
            time.sleep(5)
    finally:
        producer.join()

    def profiles() -> dict[str, dict[str, str]]:
        found = {}
        for user in expected:
            raw = redis_client.hgetall(f"{prefix}profile:{user}")
            found[user] = {k.decode(): v.decode() for k, v in raw.items()}
        return found

    # Watermarks are not in checkpoints: after the restart event time moves on with the
    # next records, as live traffic would bring them. A tick per partition every loop.
    clock = events[-1]["ts"]
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        clock += 1000
        send_events(stack["bootstrap"], cluster_env["NUDGE_TOPICS__EVENTS"],
                    [{"event_id": f"tick-{p}-{clock}", "ts": clock, "event_type": "page_view",
                      "user_id": f"clock-{p}", "_partition": p}
                     for p in range(CLUSTER_PARTITIONS)])
        got = profiles()
        if all(p.get("events_total") == str(expected[u]["events_total"])
               and p.get("views_10m") == "0" and p.get("views_1h") == "0"
               for u, p in got.items()):
            break
        time.sleep(3)
    got = profiles()
    wrong = [u for u, life in expected.items()
             if [got[u].get(f) for f in ("events_total", "orders_total", "first_seen",
                                         "last_seen")]
             != [str(int(life[f])) for f in ("events_total", "orders_total", "first_seen",
                                              "last_seen")]
             or abs(float(got[u].get("revenue_total", "nan")) - life["revenue_total"]) > 1e-6
             or got[u].get("views_10m") != "0" or got[u].get("views_1h") != "0"]
    retried = failures(job_id)
    print(f"\n[redis] injected: Redis stopped {down_s:.0f} s from the stream's start, then "
          f"CLIENT PAUSE 3 s × 3; "
          f"{len(events)} events, job failures {retried}\n[redis] expected {len(expected)} "
          f"profiles, got {sum(1 for p in got.values() if p)}, wrong {len(wrong)}")
    assert not wrong, {u: got[u] for u in wrong[:3]}
    assert retried >= 1  # Redis down longer than redis_max_wait_ms fails the job (restart)
    assert all(redis_client.pttl(f"{prefix}profile:{u}") > 0 for u in expected)


def test_overload_keeps_checkpointing_then_drains(stack: dict[str, str],
                                                   cluster_env: dict[str, str]) -> None:
    """300,000 events arrive at once (pre-loaded at ~12k/s, then the job starts): the
    triggers job (~1.7k events/s here) works under full backpressure for minutes. No
    TaskManager loss, no job failure, checkpoints keep completing, the backlog drains."""
    from kafka import KafkaProducer as Producer

    from jobs.generate import generated_records

    topic, group = cluster_env["NUDGE_TOPICS__EVENTS"], \
        f"{cluster_env['NUDGE_KAFKA__GROUP_ID']}-triggers"
    start = (int(time.time() * 1000) - 2 * 86_400_000) // M * M
    producer = Producer(bootstrap_servers=stack["bootstrap"], linger_ms=50,
                        batch_size=512 * 1024)
    began, sent = time.monotonic(), 0
    for record in generated_records(11, 15_000, start, fmt="json"):
        producer.send(topic, key=record.key, value=record.value, timestamp_ms=record.ts_ms)
        sent += 1
        if sent == 300_000:
            break
    producer.flush()
    producer.close()
    load_s = time.monotonic() - began
    job_id = ops.submit("triggers")
    began = time.monotonic()
    completed: list[int] = []
    lag = ops.consumer_lag(stack["bootstrap"], group, topic)
    while time.monotonic() - began < 900 and lag:
        time.sleep(10)
        completed.append(ops.rest(f"/jobs/{job_id}/checkpoints")["counts"]["completed"])
        lag = ops.consumer_lag(stack["bootstrap"], group, topic)
    drained_s = time.monotonic() - began
    counts = ops.rest(f"/jobs/{job_id}/checkpoints")["counts"]
    print(f"\n[overload] injected: {sent} events pre-loaded in {load_s:.0f} s "
          f"({sent / load_s:,.0f}/s) before the job started; drained in {drained_s:.0f} s "
          f"({sent / drained_s:,.0f} events/s); checkpoints completed every 10 s: "
          f"{completed}; in all {counts['completed']} completed / {counts['failed']} "
          f"failed; lag now {lag}")
    assert ops.rest(f"/jobs/{job_id}")["state"] == "RUNNING"
    assert failures(job_id) == 0
    assert ops.rest("/overview")["taskmanagers"] == 1
    minutes = max(1, int(drained_s // 60))
    assert counts["completed"] >= minutes  # at least one checkpoint a minute under load
    assert lag == 0
