"""Operations on the standalone Flink cluster of the local stack (`scripts/ops.py`):
submit both jobs with `flink run`, read their health with `status`, and upgrade the
triggers job with stop-with-savepoint → resume without losing keyed state.

The stop → resume trace (minutes after T0, two hours ago):

    u-keep     +p1                                  ─ pending cart, deadline T0 + 30
    u-fill-*   v ... v (to T0 + 10)                 ─ watermark to T0 + 10 on every partition
               ── stop with savepoint; the topic's records are deleted ──
    u-fill-*   v (T0 + 45)                          ─ watermark past the deadline
               ── resume from the savepoint ──►  cart_abandoned for u-keep @ T0 + 30

The add_to_cart is gone from Kafka when the job resumes, so the notification can only
come from the cart state restored from the savepoint.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from tests.integration.kafka_io import consume, send_events

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts import ops  # noqa: E402
from scripts import stack as stack_mod  # noqa: E402
from tests.conftest import CLUSTER_PARTITIONS as PARTITIONS  # noqa: E402
from tests.conftest import wait_for  # noqa: E402

M = 60_000


def fillers(t0: int, minutes: list[float], tag: str) -> list[dict]:
    """A page_view per partition at each minute: event time moves on every partition."""
    return [{"event_id": f"fill-{tag}-{p}-{m}", "event_type": "page_view",
             "user_id": f"u-fill-{p}", "ts": t0 + int(m * M), "_partition": p}
            for m in minutes for p in range(PARTITIONS)]


def committed_all(bootstrap: str, group: str, topic: str) -> bool:
    return ops.consumer_lag(bootstrap, group, topic) == 0


def run_status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/ops.py", "status", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def watermarks(job_id: str) -> dict[str, list[str]]:
    """Each vertex's input watermarks, by subtask: what to look at when nothing fires."""
    return {v["name"][:60]: [r["value"] for r in ops.rest(
                f"/jobs/{job_id}/vertices/{v['id']}/watermarks")]
            for v in ops.rest(f"/jobs/{job_id}")["vertices"]}


def stalled_s(status_out: str) -> int | None:
    """The status line `event time  last moved 45s ago` (or 3m05s) in seconds."""
    found = re.search(r"^  event time +last moved (?:(\d+)m)?(\d+)s ago", status_out, re.M)
    return None if found is None else int(found[1] or 0) * 60 + int(found[2])


def test_submit_both_jobs_then_status_is_healthy_and_names_operators(
        stack: dict[str, str], cluster_env: dict[str, str]) -> None:
    t0 = (int(time.time() * 1000) - 2 * 3_600_000) // M * M
    events = [{"event_id": f"s-{i}", "event_type": "product_view", "user_id": f"u-s{i % 3}",
               "product_id": f"p{i}", "category": "shoes", "ts": t0 + i * 1000}
              for i in range(30)]
    send_events(stack["bootstrap"], cluster_env["NUDGE_TOPICS__EVENTS"], events)

    ids = {job: ops.submit(job) for job in ("triggers", "profiles")}

    overview = {j["jid"]: j for j in ops.rest("/jobs/overview")["jobs"]}
    for job, job_id in ids.items():
        assert overview[job_id]["state"] == "RUNNING"
        assert overview[job_id]["name"] == ops.JOBS[job]
    vertex_names = [v["name"] for v in ops.rest(f"/jobs/{ids['triggers']}")["vertices"]]
    assert any(n.startswith("triggers: cart, checkout, browse, high intent") for n in vertex_names)
    for job in ids:
        wait_for(lambda job=job: committed_all(
            stack["bootstrap"], f"{cluster_env['NUDGE_KAFKA__GROUP_ID']}-{job}",
            cluster_env["NUDGE_TOPICS__EVENTS"]), 90, f"{job} to commit all offsets")
    # Python metrics reach Flink at bundle ends; wait until the parse counter shows all.
    wait_for(lambda: "events_parsed          30" in run_status(cluster_env).stdout, 60,
             "events_parsed = 30 in the status output")

    result = run_status(cluster_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nudge-triggers: healthy" in result.stdout
    assert "nudge-profiles: healthy" in result.stdout
    assert "consumer lag           0 records" in result.stdout
    assert "last checkpoint" in result.stdout and "none yet" not in result.stdout

    unreachable = run_status({**cluster_env, "FLINK_REST": "http://127.0.0.1:1"})
    assert unreachable.returncode == 2
    assert "cannot reach the Flink cluster at http://127.0.0.1:1" in unreachable.stdout


def test_stop_with_savepoint_then_resume_keeps_a_pending_cart(
        stack: dict[str, str], cluster_env: dict[str, str]) -> None:
    bootstrap, topic = stack["bootstrap"], cluster_env["NUDGE_TOPICS__EVENTS"]
    group = f"{cluster_env['NUDGE_KAFKA__GROUP_ID']}-triggers"
    t0 = (int(time.time() * 1000) - 2 * 3_600_000) // M * M
    cart = {"event_id": "keep-1", "event_type": "add_to_cart", "user_id": "u-keep",
            "product_id": "p1", "quantity": 2, "price": 10.0, "ts": t0}
    send_events(bootstrap, topic, [cart, *fillers(t0, [1, 5, 10], "before")])

    first = ops.submit("triggers")
    wait_for(lambda: committed_all(bootstrap, group, topic), 90, "the first run's commits")
    savepoint = ops.stop("triggers")
    assert savepoint.startswith("file:")
    assert json.loads((ops.OPS_DIR / "triggers.savepoint").read_text())["job_id"] == first
    assert ops.find_job(ops.JOBS["triggers"]) is None

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    consumer.close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.delete_records(ends)  # the add_to_cart cannot be read again
    admin.close()
    send_events(bootstrap, topic, fillers(t0, [45], "after"))

    resumed = ops.submit("triggers", ops.latest_savepoint("triggers"))
    restored = ops.rest(f"/jobs/{resumed}/checkpoints")["latest"]["restored"]
    assert restored is not None
    assert restored["external_path"].rstrip("/").rsplit("/", 1)[1] == \
        savepoint.rstrip("/").rsplit("/", 1)[1]

    records = consume(bootstrap, cluster_env["NUDGE_TOPICS__NOTIFICATIONS"], want=1,
                      timeout_s=90, settle_s=5, isolation_level="read_committed")
    notifications = [json.loads(r.value) for r in records]
    assert [(n["trigger"], n["user_id"], n["fired_at"]) for n in notifications] == [
        ("cart_abandoned", "u-keep", t0 + 30 * M)], watermarks(resumed)  # seen flaky once
    assert notifications[0]["payload"]["cart_value"] == 20.0


def test_a_restart_on_a_quiet_topic_waits_for_the_next_event_and_status_warns(
        stack: dict[str, str], cluster_env: dict[str, str]) -> None:
    """The policy of docs/operations.md, "Quiet topics": after a restart from a retained
    checkpoint with no new record, event time stands still — the pending cart's deadline
    (T0 + 30) waits, and `status` warns (exit 0: a warning, not unhealthy); the next
    event moves it, and the cart fires, once."""
    bootstrap, topic = stack["bootstrap"], cluster_env["NUDGE_TOPICS__EVENTS"]
    notifications_topic = cluster_env["NUDGE_TOPICS__NOTIFICATIONS"]
    group = f"{cluster_env['NUDGE_KAFKA__GROUP_ID']}-triggers"
    t0 = (int(time.time() * 1000) - 2 * 3_600_000) // M * M
    cart = {"event_id": "quiet-1", "event_type": "add_to_cart", "user_id": "u-quiet",
            "product_id": "p1", "price": 4.0, "ts": t0}
    send_events(bootstrap, topic, [cart, *fillers(t0, [1, 5, 10], "before")])
    first = ops.submit("triggers")
    wait_for(lambda: committed_all(bootstrap, group, topic), 90, "the first run's commits")
    ops.cancel(first)
    checkpoint = ops.latest_retained_checkpoint(stack_mod.FLINK_DIR / "checkpoints", first)
    resumed = ops.submit("triggers", checkpoint)
    assert ops.rest(f"/jobs/{resumed}/checkpoints")["latest"]["restored"] is not None

    args = ("--jobs", "triggers", "--max-event-time-stall", "20")
    warning = "WARNING: event time has not moved"
    wait_for(lambda: warning in run_status(cluster_env, *args).stdout, 120,
             lambda: f"the stall warning; status said:\n{run_status(cluster_env, *args).stdout}")
    quiet = run_status(cluster_env, *args)
    assert quiet.returncode == 0, quiet.stdout  # a warning, not unhealthy
    assert (stalled_s(quiet.stdout) or 0) >= 20, quiet.stdout
    assert consume(bootstrap, notifications_topic, want=1, timeout_s=5,
                   isolation_level="read_committed") == []  # the deadline waits

    sent = time.monotonic()
    send_events(bootstrap, topic, fillers(t0, [45], "after"))
    records = consume(bootstrap, notifications_topic, want=1, timeout_s=120, settle_s=5,
                      isolation_level="read_committed")
    got = [(n["trigger"], n["user_id"], n["fired_at"]) for n in map(json.loads,
                                                                      (r.value for r in records))]
    assert got == [("cart_abandoned", "u-quiet", t0 + 30 * M)], watermarks(resumed)
    # The gauge was reset when that event moved event time: it now counts from then, so
    # it reads less than the time since we sent it (once the REST metric fetcher, every
    # 10 s, has a value from after it).
    wait_for(lambda: (stalled_s(run_status(cluster_env, *args).stdout) or 10**9)
             < time.monotonic() - sent, 60,
             lambda: f"the stall gauge to restart; status said:\n"
                     f"{run_status(cluster_env, *args).stdout}")
