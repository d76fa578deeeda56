"""State stays flat: a long run of users who come once and go quiet does not make the
keyed state of either job grow (issue 9, minimization).

The job runs on the stack's standalone cluster with the clean-up horizons shortened
(users are quiet after 2 h of event time, stated consent is kept 3 h, caps 1 h). Every
event-time hour brings 100 new users: each searches, views, adds to the cart (which is
then abandoned: high_intent and cart_abandoned fire) and half of them state consent.
Phase 1 sends hours 0–5, phase 2 hours 6–17: three times as many users in total. The
checkpointed state of each job's Python keyed function — read from the REST API — must not
grow with them; without the clean-up timers it triples (measured: docs/privacy.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.conftest import CLUSTER_PARTITIONS, wait_for
from tests.integration.kafka_io import send_events

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from config.settings import load_settings  # noqa: E402
from jobs.source import watermark_lag_ms  # noqa: E402
from scripts import ops  # noqa: E402

M = 60_000
H = 60 * M
USERS_PER_HOUR = 100
SHORT_HORIZONS = {
    "NUDGE_TRIGGERS__ABANDON_COOLDOWN_MS": "1h",
    "NUDGE_PRIVACY__STATE_IDLE_MS": "2h",
    "NUDGE_PRIVACY__CONSENT_RETENTION_MS": "3h",
    "NUDGE_PRIVACY__ERASURE_TOMBSTONE_MS": "1h",
    "NUDGE_REDIS__PROFILE_TTL_MS": "1h",
    # a heap backend with full checkpoints: its size is the live state (RocksDB would
    # keep deleted entries until a compaction)
    "NUDGE_FLINK__STATE_BACKEND": "hashmap",
    "NUDGE_FLINK__INCREMENTAL_CHECKPOINTS": "false",
}
# How far the jobs' watermark trails the highest ts (the cluster settings they run with).
WATERMARK_LAG_MS = watermark_lag_ms(load_settings("cluster", {}))
# The keyed Python function of each job, by the start of its vertex name.
KEYED = {"triggers": "triggers: cart", "profiles": "profiles: windows"}


def hour_of_users(t0: int, hour: int) -> list[dict]:
    events = []
    for i in range(USERS_PER_HOUR):
        user, base = f"u-{hour}-{i}", t0 + hour * H + (i % 50) * 1000
        consent = {"consent": {"personalization": True, "marketing": True}} if i % 2 else {}
        for n, (event_type, extra) in enumerate([
                ("search", {"query": "shoes"}),
                ("product_view", {"product_id": f"p{i}", "category": "shoes"}),
                ("add_to_cart", {"product_id": f"p{i}", "price": 10.0, **consent})]):
            events.append({"event_id": f"{user}-{n}", "event_type": event_type,
                           "user_id": user, "ts": base + n * M, **extra})
    # event time moves on every partition, every 10 minutes
    for minute in range(0, 60, 10):
        for p in range(CLUSTER_PARTITIONS):
            events.append({"event_id": f"fill-{hour}-{minute}-{p}", "event_type": "page_view",
                           "user_id": f"u-fill-{p}", "ts": t0 + hour * H + minute * M,
                           "_partition": p})
    return sorted(events, key=lambda e: e["ts"])


def keyed_vertex(job_id: str, vertex_prefix: str) -> str:
    """The id of the job's vertex whose name starts with `vertex_prefix`."""
    return next(v["id"] for v in ops.rest(f"/jobs/{job_id}")["vertices"]
                if v["name"].startswith(vertex_prefix))


def keyed_state_size(job_id: str, vertex_prefix: str) -> tuple[int, int]:
    """(checkpoint id, checkpointed state size in bytes) of the vertex named so, from
    the newest completed checkpoint."""
    vertex = keyed_vertex(job_id, vertex_prefix)
    latest = ops.rest(f"/jobs/{job_id}/checkpoints")["latest"]["completed"]
    detail = ops.rest(f"/jobs/{job_id}/checkpoints/details/{latest['id']}")
    return int(latest["id"]), int(detail["tasks"][vertex]["state_size"])


def keyed_watermark(job_id: str, vertex_prefix: str) -> int:
    return ops.min_watermark(job_id, keyed_vertex(job_id, vertex_prefix)) or 0


def emitted(job_id: str, trigger: str) -> int:
    vertex = keyed_vertex(job_id, KEYED["triggers"])
    return int(ops.custom_metrics(job_id, vertex).get(f"emitted_{trigger}", 0))


def notifications_read(job_id: str) -> int:
    """cart_abandoned notifications the profiles job's notifications source passed on."""
    return sum(int(v["metrics"]["write-records"]) for v in ops.rest(f"/jobs/{job_id}")["vertices"]
               if "notifications_in" in v["name"])


def run_phase(ids: dict[str, str], env: dict[str, str], bootstrap: str, t0: int,
              hours: range) -> dict[str, int]:
    """Send `hours` of users; once both jobs have read everything — the profiles job the
    triggers job's cart_abandoned notifications too — move event time to the end of the
    last hour with one event per partition, wait until each keyed function's event time
    is there and two more checkpoints completed; return each keyed function's state size.

    The final step makes both phases end at the same point of event time, and after
    every input: a notification that reached the profiles job after its watermark had
    passed the user's clean-up time (the notifications input idles while the triggers
    job works through a batch) registers a clean-up timer in the past, which fires at
    the next move of event time, as it would with live traffic."""
    group, topic = env["NUDGE_KAFKA__GROUP_ID"], env["NUDGE_TOPICS__EVENTS"]
    send_events(bootstrap, topic, [e for h in hours for e in hour_of_users(t0, h)])
    for job in ids:
        wait_for(lambda job=job: ops.consumer_lag(bootstrap, f"{group}-{job}", topic) == 0,
                 240, f"{job} to read everything")
    if "profiles" in ids:
        last_filler = t0 + hours[-1] * H + 50 * M
        wait_for(lambda: keyed_watermark(ids["triggers"], KEYED["triggers"])
                 >= last_filler - WATERMARK_LAG_MS, 240, "the triggers job's last deadlines")
        wait_for(lambda: notifications_read(ids["profiles"])
                 >= emitted(ids["triggers"], "cart_abandoned") > 0,
                 240, "profiles to read the triggers job's cart_abandoned notifications")
    end = t0 + (hours[-1] + 1) * H
    send_events(bootstrap, topic, [
        {"event_id": f"tick-{hours[-1]}-{p}", "event_type": "page_view",
         "user_id": f"u-fill-{p}", "ts": end, "_partition": p}
        for p in range(CLUSTER_PARTITIONS)])
    watermark = end - WATERMARK_LAG_MS
    for job in ids:
        wait_for(lambda job=job: keyed_watermark(ids[job], KEYED[job]) >= watermark, 240,
                 lambda job=job: f"{job}'s event time to reach {watermark} (at "
                 f"{keyed_watermark(ids[job], KEYED[job])})")
    marks = {job: keyed_state_size(ids[job], KEYED[job])[0] for job in ids}
    for job in ids:
        wait_for(lambda job=job: keyed_state_size(ids[job], KEYED[job])[0] >= marks[job] + 2,
                 120, f"two more checkpoints of {job}")
    return {job: keyed_state_size(ids[job], KEYED[job])[1] for job in ids}


def test_keyed_state_stays_flat_while_users_come_and_go(
        stack: dict[str, str], cluster_env: dict[str, str]) -> None:
    t0 = (int(time.time() * 1000) - 20 * H) // H * H
    ids = {job: ops.submit(job, env=SHORT_HORIZONS) for job in KEYED}
    first = run_phase(ids, cluster_env, stack["bootstrap"], t0, range(6))
    second = run_phase(ids, cluster_env, stack["bootstrap"], t0, range(6, 18))

    print(f"keyed state after 600 users: {first}, after 1800 users: {second}")
    for job in KEYED:
        assert first[job] > 20_000, f"{job}: too little state to measure ({first[job]} B)"
        assert second[job] <= first[job] * 1.25, \
            f"{job}: keyed state grew from {first[job]} to {second[job]} bytes"
        vertex = keyed_vertex(ids[job], KEYED[job])
        assert ops.custom_metrics(ids[job], vertex).get("cleared_idle", 0) > 0
