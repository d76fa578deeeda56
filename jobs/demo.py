"""A newcomer's first look: synthetic shop traffic through the real jobs on the local
stack, then a summary of what happened.

1. starts the jobs (``python -m jobs.triggers``, and ``jobs.profiles`` when it exists)
   on local miniclusters, logging to ``var/demo/``;
2. produces ``--events`` generated events (JSON and Avro, 1 % malformed) to the events
   topic;
3. waits until the notifications stop coming, then prints: events in, dead letters by
   reason, notifications by trigger with a sample, and a few Redis profiles;
4. erases one user with a profile (a request on the privacy topic) and shows the key
   gone and the audit record;
5. stops the jobs. Run it again and it picks up where the consumer groups left off.

    make demo            # or: python -m jobs.demo --events 5000
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from config.settings import ROOT, Settings, SettingsError, load_settings

LOG_DIR = ROOT / "var" / "demo"


def end_offsets(bootstrap: str, topic: str) -> dict:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return dict(consumer.end_offsets(parts))
    finally:
        consumer.close()


def read_since(bootstrap: str, offsets: dict, quiet_s: float, max_s: float,
               settle_after: int = 1) -> list:
    """Read from `offsets` (read_committed) until nothing new came for `quiet_s` seconds
    after at least `settle_after` records, or `max_s` passed."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                             enable_auto_commit=False)
    consumer.assign(list(offsets))
    for tp, offset in offsets.items():
        consumer.seek(tp, offset)
    records: list = []
    began = last_new = time.monotonic()
    try:
        while time.monotonic() - began < max_s:
            batch = [r for rs in consumer.poll(timeout_ms=1000).values() for r in rs]
            if batch:
                records.extend(batch)
                last_new = time.monotonic()
            elif len(records) >= settle_after and time.monotonic() - last_new > quiet_s:
                break
    finally:
        consumer.close()
    return records


def start_job(module: str) -> subprocess.Popen:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = open(LOG_DIR / f"{module.split('.')[-1]}.log", "w")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "NUDGE_ENV": "local"})


def stop_job(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def produce(settings: Settings, count: int, seed: int) -> collections.Counter:
    from kafka import KafkaProducer

    from jobs.generate import generated_records

    start = (int(time.time() * 1000) - 86_400_000) // 60_000 * 60_000
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all",
                             linger_ms=20)
    counts: collections.Counter = collections.Counter()
    for record in itertools.islice(
            generated_records(seed, max(1, count // 20), start, fmt="mixed",
                              malformed_ratio=0.01), count):
        producer.send(settings.topics.events, key=record.key, value=record.value,
                      timestamp_ms=record.ts_ms)
        kind = "malformed" if record.malformed else (
            "avro" if record.value[:1] == b"\x00" else "json")
        counts[kind] += 1
    producer.flush()
    producer.close()
    return counts


def print_profiles(settings: Settings, user_ids: list[str]) -> None:
    import redis

    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    shown = 0
    for user in user_ids:
        profile = client.hgetall(f"{settings.redis.key_prefix}profile:{user}")
        if profile:
            print(f"  profile:{user}  {json.dumps(profile, sort_keys=True)}")
            shown += 1
        if shown == 3:
            break
    if not shown:
        print("  (none yet: profiles are written as the watermark passes each window end)")


def erase_one(settings: Settings, user_ids: list[str], max_wait_s: float = 60.0) -> int:
    """Send an erasure for the first of `user_ids` with a profile; wait for its key to
    go and its audit record; print both. Returns 0, or 1 when it did not happen."""
    import redis
    from kafka import KafkaProducer

    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    key_of = {u: f"{settings.redis.key_prefix}profile:{u}" for u in user_ids}
    user = next((u for u in user_ids if client.exists(key_of[u])), None)
    if user is None:
        print("erasure:          skipped (no profile in Redis yet)")
        return 0
    bootstrap = settings.kafka.bootstrap
    audit_from = end_offsets(bootstrap, settings.topics.audit)
    requested_at = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send(settings.topics.privacy, key=user.encode(), value=json.dumps(
        {"type": "erasure", "user_id": user, "ts": requested_at}).encode())
    producer.close()
    began = time.monotonic()
    mine = {"user_id": user, "requested_at": requested_at}
    audit = [r for r in read_since(bootstrap, audit_from, quiet_s=2, max_s=max_wait_s)
             if mine.items() <= json.loads(r.value).items()]
    took = time.monotonic() - began
    gone = not client.exists(key_of[user])
    print(f"erasure of {user}: key {'deleted' if gone else 'STILL THERE'}, "
          f"{len(audit)} audit record(s) after {took:.1f}s")
    for record in audit:
        print(f"  {record.value.decode()}")
    return 0 if gone and len(audit) == 1 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the jobs on synthetic traffic.")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-wait", type=float, default=180.0,
                        help="seconds to wait for notifications at most")
    args = parser.parse_args(argv)
    try:
        settings = load_settings("local", os.environ)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    bootstrap = settings.kafka.bootstrap
    notif_from = end_offsets(bootstrap, settings.topics.notifications)
    dlq_from = end_offsets(bootstrap, settings.topics.dlq)
    modules = ["jobs.triggers"]
    if (ROOT / "jobs" / "profiles.py").exists():
        modules.append("jobs.profiles")
    print(f"starting {', '.join(modules)} (logs in {LOG_DIR.relative_to(ROOT)}/)")
    jobs = [start_job(m) for m in modules]
    try:
        began = time.monotonic()
        counts = produce(settings, args.events, args.seed)
        print(f"produced {sum(counts.values())} records to '{settings.topics.events}': "
              f"{counts['json']} JSON, {counts['avro']} Avro, {counts['malformed']} malformed "
              f"({time.monotonic() - began:.1f}s)")
        print("waiting for the notifications to settle …", flush=True)
        notifications = read_since(bootstrap, notif_from, quiet_s=20, max_s=args.max_wait)
        for job, module in zip(jobs, modules, strict=True):
            if job.poll() is not None:
                print(f"error: {module} exited with code {job.returncode}; see "
                      f"{LOG_DIR.relative_to(ROOT)}/", file=sys.stderr)
                return 1
        dead = read_since(bootstrap, dlq_from, quiet_s=2, max_s=15)
        users = list(dict.fromkeys(json.loads(r.value)["user_id"] for r in notifications))
        print_summary(settings, counts, notifications, dead, users)
        erased = erase_one(settings, users)
    finally:
        for job in jobs:
            stop_job(job)

    if not notifications:
        print("error: no notifications came out", file=sys.stderr)
        return 1
    if erased:
        print("error: the erasure was not carried out", file=sys.stderr)
        return 1
    return 0


def print_summary(settings: Settings, counts: collections.Counter, notifications: list,
                  dead: list, users: list[str]) -> None:
    by_trigger = collections.Counter(json.loads(r.value)["trigger"] for r in notifications)
    reasons = collections.Counter(dict(r.headers).get("error", b"?").decode() for r in dead)
    print("\n=== nudge demo summary ===")
    print(f"events in:        {sum(counts.values())}")
    print(f"dead letters:     {len(dead)}  "
          + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())))
    print(f"notifications:    {len(notifications)}  "
          + ", ".join(f"{k}={v}" for k, v in sorted(by_trigger.items())))
    for record in notifications[:3]:
        print(f"  {record.value.decode()}")
    print("profiles:")
    print_profiles(settings, users or [f"u{i}" for i in range(10)])


if __name__ == "__main__":
    sys.exit(main())
