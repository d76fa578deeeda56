"""Throughput benchmark: the jobs against a pre-loaded topic, beside a JVM-only reference.

1. loads ``--events`` generated JSON events into a fresh topic (4 partitions);
2. runs, each in its own process on a local minicluster and with a *bounded* source
   (it stops at the offsets current at start-up, so a run ends when the topic is
   drained):
   - ``reference``: Flink SQL reads the topic, decodes the JSON fields the jobs use with
     ``JSON_VALUE`` and writes to a blackhole sink — the JVM pass-through limit;
   - ``source``: the shared source stage alone (Python decode + validate, de-duplicate,
     event time) into a blackhole sink;
   - ``triggers`` and ``profiles``: the real pipelines (Redis keys under ``bench:``);
3. runs each once more on an empty topic to measure start-up and shutdown, and reports
   events/s as ``events / (drain time - empty-topic time)``, plus the ratio to the
   reference.

Results go to ``var/bench/results.json`` and a table on stdout. The stack must be up.

    make bench                                   # = python scripts/bench.py
    python scripts/bench.py --events 100000 --jobs reference,triggers
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "var" / "bench"
JOBS = ("reference", "source", "triggers", "profiles")


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def load(bootstrap: str, topic: str, count: int, seed: int) -> float:
    from kafka import KafkaProducer

    from jobs.generate import generated_records

    start = (int(time.time() * 1000) - 2 * 86_400_000) // 60_000 * 60_000
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=50,
                             batch_size=512 * 1024, compression_type=None)
    began = time.monotonic()
    for record in itertools.islice(
            generated_records(seed, max(1, count // 20), start, fmt="json"), count):
        producer.send(topic, key=record.key, value=record.value, timestamp_ms=record.ts_ms)
    producer.flush()
    producer.close()
    return time.monotonic() - began


def run_reference(settings, topic: str) -> None:  # type: ignore[no-untyped-def]
    from jobs.runtime import create_environments
    from jobs.source import create_raw_source

    env, t_env = create_environments(settings)
    create_raw_source(t_env, settings, "bench_raw", topic, f"bench-{uuid.uuid4().hex}", True)
    t_env.execute_sql("""CREATE TEMPORARY TABLE sink (
        event_id STRING, event_type STRING, user_id STRING, ts BIGINT, product_id STRING,
        category STRING, price DOUBLE) WITH ('connector' = 'blackhole')""")
    fields = ", ".join(
        f"JSON_VALUE(CAST(`v` AS STRING), '$.{f}')" for f in
        ("event_id", "event_type", "user_id"))
    t_env.execute_sql(f"""INSERT INTO sink SELECT {fields},
        TRY_CAST(JSON_VALUE(CAST(`v` AS STRING), '$.ts') AS BIGINT),
        JSON_VALUE(CAST(`v` AS STRING), '$.product_id'),
        JSON_VALUE(CAST(`v` AS STRING), '$.category'),
        TRY_CAST(JSON_VALUE(CAST(`v` AS STRING), '$.price') AS DOUBLE)
        FROM bench_raw""").wait()


def run_source(settings, topic: str) -> None:  # type: ignore[no-untyped-def]
    from jobs.runtime import create_environments
    from jobs.source import EVENT_COLUMNS, EVENT_FIELDS, read_events

    env, t_env = create_environments(settings)
    statements = t_env.create_statement_set()
    read_events(t_env, settings, statements, group_id=settings.kafka.group_id, topic=topic,
                bounded=True, dead_letters=False)
    columns = ", ".join(f"`{name}` {sql_type}" for name, sql_type in EVENT_COLUMNS)
    t_env.execute_sql(f"CREATE TEMPORARY TABLE sink ({columns}) WITH ('connector' = 'blackhole')")
    fields = ", ".join(f"`{f}`" for f in EVENT_FIELDS)
    statements.add_insert_sql(f"INSERT INTO sink SELECT {fields} FROM events")
    statements.attach_as_datastream()
    env.execute("bench-source")


def run_job(job: str, topic: str) -> None:
    """One bounded run of `job` on `topic` (in this process)."""
    from config.settings import load_settings
    from jobs.runtime import create_environments

    suffix = uuid.uuid4().hex[:8]
    settings = load_settings("local", {**os.environ, "NUDGE_KAFKA__GROUP_ID": f"bench-{suffix}",
                                       "NUDGE_REDIS__KEY_PREFIX": "bench:"})
    if job == "reference":
        run_reference(settings, topic)
        return
    if job == "source":
        run_source(settings, topic)
        return
    from jobs import profiles, triggers

    env, t_env = create_environments(settings)
    (triggers if job == "triggers" else profiles).build(env, t_env, settings, topic=topic,
                                                        bounded=True)
    env.execute(f"bench-{job}")


def timed_run(job: str, topic: str, environ: dict[str, str]) -> float:
    began = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--run", job, "--topic", topic],
                          cwd=ROOT, env=environ, capture_output=True, text=True)
    elapsed = time.monotonic() - began
    if proc.returncode != 0:
        (OUT / f"{job}.log").write_text(proc.stdout + proc.stderr)
        raise SystemExit(f"error: {job} failed, see {OUT / (job + '.log')}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--jobs", default=",".join(JOBS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--parallelism", type=int, default=None)
    parser.add_argument("--run", choices=JOBS, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        run_job(args.run, args.topic)
        return 0

    from config.settings import load_settings

    settings = load_settings("local", os.environ)
    bootstrap = settings.kafka.bootstrap
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYFLINK_")}
    if args.parallelism:
        environ["NUDGE_FLINK__PARALLELISM"] = str(args.parallelism)
    OUT.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    topic, empty = f"bench-{run_id}", f"bench-{run_id}-empty"
    create_topic(bootstrap, topic, 4)
    create_topic(bootstrap, empty, 4)
    load_s = load(bootstrap, topic, args.events, args.seed)
    print(f"loaded {args.events} events into {topic} in {load_s:.1f}s", flush=True)

    results = []
    for job in [j for j in args.jobs.split(",") if j]:
        baseline = timed_run(job, empty, environ)
        drained = timed_run(job, topic, environ)
        net = max(drained - baseline, 1e-3)
        results.append({"job": job, "events": args.events, "drain_s": round(drained, 1),
                        "empty_topic_s": round(baseline, 1),
                        "events_per_s": round(args.events / net),
                        "events_per_s_incl_startup": round(args.events / drained)})
        print(f"{job}: {drained:.1f}s drained, {baseline:.1f}s empty → "
              f"{args.events / net:,.0f} events/s", flush=True)
    reference = next((r["events_per_s"] for r in results if r["job"] == "reference"), None)
    for r in results:
        r["ratio_to_reference"] = round(r["events_per_s"] / reference, 2) if reference else None
    parallelism = args.parallelism or settings.flink.parallelism
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": f"{os.cpu_count()} cores", "parallelism": parallelism,
              "results": results}
    (OUT / "results.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'job':10} {'events/s':>10} {'incl. start':>12} {'× reference':>12}")
    for r in results:
        ratio = "" if r["ratio_to_reference"] is None else f"{r['ratio_to_reference']:.2f}"
        print(f"{r['job']:10} {r['events_per_s']:>10,} {r['events_per_s_incl_startup']:>12,} "
              f"{ratio:>12}")
    print(f"\n(parallelism {parallelism}; written to {OUT.relative_to(ROOT)}/results.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
