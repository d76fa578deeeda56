"""`make bench` on the standalone cluster of `make up` — where users run the jobs.

Per job (``reference``, ``source``, ``triggers``, ``profiles``, ``signals``), against one
pre-loaded topic:

1. submit it with ``scripts/ops.py`` (a fresh consumer group, outputs under ``bench``
   names), the ``cluster`` overlay and ``--parallelism``;
2. throughput: events / (time from the first record the source emits until the source
   has read them all and the last operator's input has stopped growing), from the REST
   API's per-vertex record counts. A job that does not drain within ``--max-seconds`` is
   reported over the time it ran (``drained: false``): records the source read / time;
3. meanwhile, every second: resident memory of the TaskManager JVM and of its Python
   workers (peak reported), and at the end the checkpoint durations (REST);
4. cancel it.

Then the latency phase: live traffic (event time = wall clock) at ``--live-rate`` for
``--live-seconds`` into a fresh topic, both jobs running with short deadlines
(cart 20 s, checkout 10 s), and:

- notification latency = time a ``read_committed`` consumer sees it − (``fired_at`` +
  watermark delay), i.e. from when its deadline passed the contract's watermark; and the
  same minus the allowed lateness, from when it passed the jobs' processing watermark;
- profile freshness = time a new ``window_end_10m`` is seen in Redis (polled every
  200 ms) − that window end.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scripts import ops, stack

ROOT = Path(__file__).resolve().parent.parent


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class MemorySampler(threading.Thread):
    """Peak RSS (MB) of the TaskManager JVM and of its Python worker processes."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop_event = threading.Event()
        self.peak_tm_mb = 0.0
        self.peak_python_mb = 0.0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                tms = stack.taskmanager_pids()
                self.peak_tm_mb = max(self.peak_tm_mb, sum(_rss_mb(p) for p in tms))
                workers = [p for tm in tms for p in _descendants(tm)
                           if "beam_boot" in _cmdline(p) or "fn_execution" in _cmdline(p)]
                self.peak_python_mb = max(self.peak_python_mb,
                                          sum(_rss_mb(p) for p in workers))
            except (OSError, ValueError):  # a process ended between listing and reading
                pass
            self.stop_event.wait(1)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True)
    children: dict[int, list[int]] = {}
    for line in out.stdout.splitlines():
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _vertex_counts(job_id: str) -> tuple[int, int]:
    """(records the events source emitted, records all vertices received). The source's
    own operator metric, not the vertex's network output: a fully chained job (the
    reference) sends nothing over the network. The sum over all vertices stops growing
    only when nothing moves anywhere — timers firing and Redis writes included; the last
    vertex alone can be a sink that rarely receives anything (DLQ, audit)."""
    vertices = ops.rest(f"/jobs/{job_id}")["vertices"]
    source = next((v for v in vertices if v["name"].startswith("Source")
                   and "events_raw" in v["name"]), vertices[0])
    listed = ops.rest(f"/jobs/{job_id}/vertices/{source['id']}/subtasks/metrics")
    names = [m["id"] for m in listed
             if m["id"].startswith("Source") and m["id"].endswith(".numRecordsOut")]
    source_out = sum(ops.vertex_metrics(job_id, source["id"], names[:1]).values())
    return int(source_out), sum(int(v["metrics"]["read-records"]) for v in vertices)


def _checkpoint_stats(job_id: str) -> dict[str, Any]:
    data = ops.rest(f"/jobs/{job_id}/checkpoints")
    summary = data.get("summary", {}).get("end_to_end_duration", {})
    return {"completed": data.get("counts", {}).get("completed", 0),
            "failed": data.get("counts", {}).get("failed", 0),
            "duration_ms_max": summary.get("max"), "duration_ms_p99": summary.get("p99")}


def _checkpointing(job_id: str) -> bool:
    return bool(ops.rest(f"/jobs/{job_id}/checkpoints").get("counts", {}).get("in_progress"))


def rate_outside_checkpoints(samples: list[tuple[float, int, bool]], events: int
                             ) -> dict[str, Any]:
    """The source's rate over the polls with no checkpoint in progress at either end, and
    the share of the run a checkpoint was in progress. Under backpressure an aligned
    checkpoint takes 15–45 s and the job crawls meanwhile, so the drain rate of a short
    run depends on how many checkpoints fall into it; this rate does not (much)."""
    moved = [(b[0] - a[0], min(b[1], events) - min(a[1], events), a[2] or b[2])
             for a, b in zip(samples, samples[1:], strict=False) if 0 < a[1] < events]
    quiet = [(dt, dn) for dt, dn, checkpointing in moved if not checkpointing]
    total, quiet_s = sum(dt for dt, _, _ in moved), sum(dt for dt, _ in quiet)
    return {"events_per_s_outside_checkpoints":
            round(sum(dn for _, dn in quiet) / quiet_s) if quiet_s else None,
            "checkpointing_share": round(1 - quiet_s / total, 2) if total else None}


def job_env(topic: str, parallelism: int, extra: dict[str, str] | None = None
            ) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {"NUDGE_TOPICS__EVENTS": topic, "NUDGE_KAFKA__GROUP_ID": f"bench-{suffix}",
            "NUDGE_TOPICS__NOTIFICATIONS": "bench-notifications",
            "NUDGE_TOPICS__DLQ": "bench-dlq", "NUDGE_REDIS__KEY_PREFIX": "bench:",
            "NUDGE_FLINK__PARALLELISM": str(parallelism), **(extra or {})}


def throughput_run(job: str, topic: str, events: int, parallelism: int,
                   max_seconds: float) -> dict[str, Any]:
    env = job_env(topic, parallelism)
    if job in ("reference", "source", "signals"):  # bench-only: scripts/bench.py --run
        job_id = ops.submit(f"nudge-bench-{job}", script=ROOT / "scripts" / "bench.py",
                            args=("--run", job, "--topic", topic, "--detached"), env=env)
    else:
        job_id = ops.submit(job, env=env)
    sampler = MemorySampler()
    sampler.start()
    try:
        first = last_change = None
        last_counts, drained = (-1, -1), False
        samples: list[tuple[float, int, bool]] = []  # (time, source out, checkpointing)
        began = time.monotonic()
        while time.monotonic() - began < max_seconds + 60:
            counts = _vertex_counts(job_id)
            source_out = counts[0]
            now = time.monotonic()
            samples.append((now, source_out, _checkpointing(job_id)))
            if first is None and source_out > 0:
                first = now
            if counts != last_counts:
                last_counts, last_change = counts, now
            if source_out >= events and now - (last_change or now) >= 3:
                drained = True
                break
            if first is not None and now - first > max_seconds:
                break
            time.sleep(0.5)
        source_out, _ = _vertex_counts(job_id)
        end = last_change if drained else time.monotonic()
        elapsed = max((end or time.monotonic()) - (first or began), 1e-3)
        result = {"job": job, "parallelism": parallelism, "drained": drained,
                  "events_read": min(source_out, events), "seconds": round(elapsed, 1),
                  "events_per_s": round(min(source_out, events) / elapsed),
                  **rate_outside_checkpoints(samples, events),
                  "checkpoints": _checkpoint_stats(job_id)}
    finally:
        sampler.stop_event.set()
        sampler.join()
        ops.cancel(job_id)
    result["peak_rss_mb"] = {"taskmanager": round(sampler.peak_tm_mb),
                             "python_workers": round(sampler.peak_python_mb)}
    return result


# --- latency phase ---------------------------------------------------------------------

def live_producer(bootstrap: str, topic: str, rate: float, seconds: float,
                  stop: threading.Event) -> int:
    """Users that browse and fill carts with event time = now; some abandon them."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    rng = random.Random(11)
    sent, began = 0, time.monotonic()
    while not stop.is_set() and time.monotonic() - began < seconds:
        now = int(time.time() * 1000)
        user = f"live-{rng.randrange(2000)}"
        kind = rng.choices(["page_view", "product_view", "add_to_cart", "checkout_started"],
                           [50, 35, 12, 3])[0]
        event = {"event_id": uuid.uuid4().hex, "event_type": kind, "user_id": user, "ts": now,
                 "product_id": f"p{rng.randrange(50)}", "category": f"c{rng.randrange(5)}",
                 "price": 9.5}
        producer.send(topic, key=user.encode(), value=json.dumps(event).encode(),
                      timestamp_ms=now)
        sent += 1
        time.sleep(max(0.0, began + sent / rate - time.monotonic()))
    producer.flush()
    producer.close()
    return sent


def notification_latencies(bootstrap: str, topic: str, delay_ms: int, seconds: float,
                           stop: threading.Event, out: list[float]) -> None:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="latest",
                             isolation_level="read_committed", enable_auto_commit=False)
    began = time.monotonic()
    while not stop.is_set() and time.monotonic() - began < seconds:
        for batch in consumer.poll(timeout_ms=200).values():
            seen = time.time() * 1000
            for record in batch:
                fired_at = json.loads(record.value)["fired_at"]
                out.append((seen - fired_at - delay_ms) / 1000)
    consumer.close()


def profile_freshness(redis_url: str, seconds: float, stop: threading.Event,
                      out: list[float]) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    last: dict[bytes, int] = {}
    began = time.monotonic()
    while not stop.is_set() and time.monotonic() - began < seconds:
        keys = list(client.scan_iter("bench-live:profile:*", count=1000))[:300]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "window_end_10m")
        seen = time.time() * 1000
        for key, value in zip(keys, pipe.execute(), strict=True):
            if value is None:
                continue
            end = int(value)
            if key in last and end > last[key]:
                out.append((seen - end) / 1000)
            last[key] = end
        time.sleep(0.2)
    client.close()


def latency_run(settings: Any, parallelism: int, rate: float, seconds: float,
                create_topic: Callable[[str], None]) -> dict[str, Any]:
    topic = f"bench-live-{uuid.uuid4().hex[:8]}"
    create_topic(topic)
    extra = {"NUDGE_TRIGGERS__CART_ABANDON_AFTER_MS": "20s",
             "NUDGE_TRIGGERS__CHECKOUT_ABANDON_AFTER_MS": "10s",
             "NUDGE_TRIGGERS__ABANDON_COOLDOWN_MS": "1s",
             "NUDGE_REDIS__KEY_PREFIX": "bench-live:"}
    env = {**job_env(topic, parallelism, extra),
           "NUDGE_TOPICS__NOTIFICATIONS": f"{topic}-notifications"}
    create_topic(env["NUDGE_TOPICS__NOTIFICATIONS"])
    ids = [ops.submit("triggers", env=env), ops.submit("profiles", env=env)]
    latencies: list[float] = []
    freshness: list[float] = []
    stop = threading.Event()
    delay = settings.events.watermark_delay_ms
    threads = [
        threading.Thread(target=notification_latencies, daemon=True,
                         args=(settings.kafka.bootstrap, env["NUDGE_TOPICS__NOTIFICATIONS"],
                               delay, seconds + 40, stop, latencies)),
        threading.Thread(target=profile_freshness, daemon=True,
                         args=(settings.redis.url, seconds + 40, stop, freshness))]
    for t in threads:
        t.start()
    try:
        sent = live_producer(settings.kafka.bootstrap, topic, rate, seconds, stop)
        time.sleep(40)  # deadlines after the last event: cart 20 s + watermark delay
    finally:
        stop.set()
        for t in threads:
            t.join()
        for job_id in ids:
            ops.cancel(job_id)

    def summary(values: list[float]) -> dict[str, Any]:
        return {"count": len(values),
                "p50_s": None if not values else round(statistics.median(values), 2),
                "p99_s": None if not values else round(_percentile(values, 0.99) or 0, 2)}

    lateness_s = settings.events.allowed_lateness_ms / 1000
    return {"rate": rate, "seconds": seconds, "events": sent,
            "notification_latency_after_deadline": summary(latencies),
            # the jobs hold their processing watermark back by the allowed lateness
            "notification_latency_after_processing_watermark": summary(
                [v - lateness_s for v in latencies]),
            "profile_freshness_after_window_end": summary(freshness)}
