"""Throughput and latency benchmark: the jobs against a pre-loaded topic, beside a
JVM-only reference, on the standalone cluster of `make up` (default) or on one
minicluster per run (``--target minicluster``).

1. loads ``--events`` generated JSON events (``jobs.generate``, seed 7) into a fresh
   topic (4 partitions);
2. runs, one after the other and each with its own consumer group:
   - ``reference``: Flink SQL reads the topic, decodes the JSON fields the jobs use with
     ``JSON_VALUE`` and writes to a blackhole sink — the JVM pass-through limit;
   - ``triggers`` and ``profiles``: the real jobs (outputs under ``bench`` names, Redis
     keys under ``bench:``);
   - ``source``: the shared source stage alone (decode, validate, de-duplicate) into a
     blackhole sink;
   - ``signals``: the triggers job up to the rows its Python function receives, into a
     blackhole sink — the limit of its SQL half;
3. reports events/s, the ratio to the reference at the same parallelism, peak memory of
   the TaskManager and its Python workers, checkpoint durations, and (cluster) the
   latency phase: notification latency after the deadline passes the watermark and
   profile freshness after a window end, under live traffic
   (scripts/bench_cluster.py says exactly how each is measured).

Results go to ``var/bench/results.json`` and a table on stdout. The stack must be up and
no nudge job running on the cluster.

    make bench                                   # = python scripts/bench.py
    python scripts/bench.py --events 600000 --parallelism 1,2
    python scripts/bench.py --target minicluster --jobs reference,source,triggers
"""

from __future__ import annotations

import argparse
import contextlib
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
JOBS = ("reference", "source", "signals", "triggers", "profiles")


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


def redis_writes(redis_url: str, count: int, batch: int) -> dict:
    """The profile job's Redis writes alone: one EVALSHA round trip per write (as before
    the pipelined writer) against batches of `batch` in one pipeline (RedisBatchWriter)."""
    import redis

    from udfs.profile import Lifetime, ProfileWrite, WindowFigures
    from udfs.profile_store import ProfileStore

    client = redis.Redis.from_url(redis_url)
    store = ProfileStore(client, "bench-redis:", 60_000)
    t0 = 1_767_225_600_000

    def op(i: int) -> tuple[str, str, list[str]]:
        life = Lifetime(t0, t0 + i, i + 1, 0, 0.0)
        write = ProfileWrite((("10m", WindowFigures(t0 + i * 60_000, views=i % 7)),
                              ("1h", WindowFigures(t0 + i * 60_000, views=i % 11))),
                             {**life.fields(), "segments": ""}, i + 1)
        return store.write_op(f"u{i % 5000}", write)

    ops = [op(i) for i in range(count)]
    store.apply(ops[:1])  # load the script
    began = time.perf_counter()
    for one in ops:
        store.apply([one])
    single = time.perf_counter() - began
    began = time.perf_counter()
    for i in range(0, count, batch):
        store.apply(ops[i:i + batch])
    piped = time.perf_counter() - began
    for key in client.scan_iter("bench-redis:*"):
        client.delete(key)
    client.close()
    return {"writes": count, "one_per_round_trip_per_s": round(count / single),
            f"pipelined_{batch}_per_s": round(count / piped)}


def run_reference(settings, topic: str, detached: bool = False) -> None:  # type: ignore[no-untyped-def]
    from jobs.runtime import create_environments
    from jobs.source import create_raw_source

    env, t_env = create_environments(settings)
    t_env.get_config().set("pipeline.name", "nudge-bench-reference")
    create_raw_source(t_env, settings, "bench_raw", topic, f"bench-{uuid.uuid4().hex}",
                      not detached)
    t_env.execute_sql("""CREATE TEMPORARY TABLE sink (
        event_id STRING, event_type STRING, user_id STRING, ts BIGINT, product_id STRING,
        category STRING, price DOUBLE) WITH ('connector' = 'blackhole')""")
    fields = ", ".join(
        f"JSON_VALUE(CAST(`v` AS STRING), '$.{f}')" for f in
        ("event_id", "event_type", "user_id"))
    result = t_env.execute_sql(f"""INSERT INTO sink SELECT {fields},
        TRY_CAST(JSON_VALUE(CAST(`v` AS STRING), '$.ts') AS BIGINT),
        JSON_VALUE(CAST(`v` AS STRING), '$.product_id'),
        JSON_VALUE(CAST(`v` AS STRING), '$.category'),
        TRY_CAST(JSON_VALUE(CAST(`v` AS STRING), '$.price') AS DOUBLE)
        FROM bench_raw""")
    if not detached:
        result.wait()


def run_source(settings, topic: str, bounded: bool) -> None:  # type: ignore[no-untyped-def]
    from jobs.runtime import create_environments
    from jobs.source import EVENT_COLUMNS, EVENT_FIELDS, read_events

    env, t_env = create_environments(settings)
    statements = t_env.create_statement_set()
    read_events(t_env, settings, statements, group_id=settings.kafka.group_id, topic=topic,
                bounded=bounded, dead_letters=False)
    columns = ", ".join(f"`{name}` {sql_type}" for name, sql_type in EVENT_COLUMNS)
    t_env.execute_sql(f"CREATE TEMPORARY TABLE sink ({columns}) WITH ('connector' = 'blackhole')")
    fields = ", ".join(f"`{f}`" for f in EVENT_FIELDS)
    statements.add_insert_sql(f"INSERT INTO sink SELECT {fields} FROM events")
    statements.attach_as_datastream()
    env.execute("nudge-bench-source")


def run_signals(settings, topic: str, bounded: bool) -> None:  # type: ignore[no-untyped-def]
    from jobs.runtime import create_environments
    from jobs.source import q
    from jobs.triggers import SIGNAL_COLUMNS, build_sources, signals

    env, t_env = create_environments(settings)
    t_env.get_config().set("pipeline.name", "nudge-bench-signals")
    statements = build_sources(t_env, settings, topic, bounded)
    columns = ", ".join(f"{q(name)} {sql_type}"
                        for name, sql_type in (column.split(" ") for column in SIGNAL_COLUMNS))
    t_env.execute_sql(f"CREATE TEMPORARY TABLE sink ({columns}) WITH ('connector' = 'blackhole')")
    statements.add_insert("sink", signals(t_env, settings))
    statements.attach_as_datastream()
    env.execute("nudge-bench-signals")


def run_job(job: str, topic: str, env_name: str = "local", detached: bool = False) -> None:
    """One bounded run of `job` on `topic` (in this process), or with `detached` the
    bench-only jobs submitted to a cluster by `flink run` (scripts/bench_cluster.py)."""
    from config.settings import load_settings
    from jobs.runtime import create_environments

    suffix = uuid.uuid4().hex[:8]
    settings = load_settings(env_name, {**os.environ,
                                        "NUDGE_KAFKA__GROUP_ID": f"bench-{suffix}",
                                        "NUDGE_REDIS__KEY_PREFIX": "bench:"})
    if job == "reference":
        run_reference(settings, topic, detached)
        return
    if job == "source":
        run_source(settings, topic, bounded=not detached)
        return
    if job == "signals":
        run_signals(settings, topic, bounded=not detached)
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
    parser.add_argument("--parallelism", default=None,
                        help="e.g. 2, or 1,2 to compare (cluster)")
    parser.add_argument("--target", choices=("cluster", "minicluster"), default="cluster",
                        help="the standalone cluster of `make up` (default), or one "
                             "embedded minicluster per run")
    parser.add_argument("--max-seconds", type=float, default=240,
                        help="cluster: stop measuring a job that has not drained by then")
    parser.add_argument("--live-rate", type=float, default=200,
                        help="cluster latency phase: events/s of live traffic (0: skip)")
    parser.add_argument("--live-seconds", type=float, default=90)
    parser.add_argument("--redis-writes", type=int, default=20_000,
                        help="also time this many profile writes, single vs pipelined (0: skip)")
    parser.add_argument("--run", choices=JOBS, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--env", default="local", help=argparse.SUPPRESS)
    parser.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.run:
        run_job(args.run, args.topic, args.env, args.detached)
        return 0

    from config.settings import load_settings

    settings = load_settings("local", os.environ)
    bootstrap = settings.kafka.bootstrap
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYFLINK_")}
    if args.parallelism and args.target == "minicluster":
        environ["NUDGE_FLINK__PARALLELISM"] = str(args.parallelism)
    OUT.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    topic, empty = f"bench-{run_id}", f"bench-{run_id}-empty"
    create_topic(bootstrap, topic, 4)
    create_topic(bootstrap, empty, 4)
    load_s = load(bootstrap, topic, args.events, args.seed)
    print(f"loaded {args.events} events into {topic} in {load_s:.1f}s", flush=True)

    jobs = [j for j in args.jobs.split(",") if j]
    if args.target == "cluster":
        report = cluster_bench(args, settings, jobs, topic)
    else:
        report = minicluster_bench(args, settings, jobs, topic, empty, environ)
    if args.redis_writes:
        report["redis_writes"] = redis_writes(settings.redis.url, args.redis_writes, 1000)
    (OUT / "results.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'job':10} {'p':>2} {'events/s':>10} {'× reference':>12}  notes")
    for r in report["results"]:
        ratio = "" if r["ratio_to_reference"] is None else f"{r['ratio_to_reference']:.2f}"
        notes = []
        if "drained" in r and not r["drained"]:
            notes.append(f"not drained: {r['events_read']:,} events in {r['seconds']}s")
        if "peak_rss_mb" in r:
            notes.append("peak RSS TM {taskmanager} MB, Python {python_workers} MB".format(
                **r["peak_rss_mb"]))
        if r.get("events_per_s_outside_checkpoints") is not None:
            notes.append(f"{r['events_per_s_outside_checkpoints']:,} events/s outside "
                         f"checkpoints ({r['checkpointing_share']:.0%} of the run in one)")
        if r.get("checkpoints", {}).get("duration_ms_max") is not None:
            notes.append(f"checkpoints max {r['checkpoints']['duration_ms_max']} ms")
        print(f"{r['job']:10} {r['parallelism']:>2} {r['events_per_s']:>10,} {ratio:>12}  "
              + "; ".join(notes))
    if report.get("latency"):
        lat = report["latency"]
        for name, label in (("notification_latency_after_deadline", "notification latency"),
                            ("notification_latency_after_processing_watermark",
                             "  … from the processing watermark"),
                            ("profile_freshness_after_window_end", "profile freshness")):
            v = lat[name]
            print(f"{label}: p50 {v['p50_s']} s, p99 {v['p99_s']} s ({v['count']} samples, "
                  f"live {lat['rate']:.0f} events/s)")
    if report.get("redis_writes"):
        print(f"Redis profile writes: {report['redis_writes']}")
    print(f"\n({args.target}; written to {OUT.relative_to(ROOT)}/results.json)")
    return 0


def with_ratios(results: list[dict]) -> list[dict]:
    """Each result's throughput as a ratio of the reference at the same parallelism."""
    reference = {r["parallelism"]: r["events_per_s"] for r in results if r["job"] == "reference"}
    for r in results:
        ref = reference.get(r["parallelism"])
        r["ratio_to_reference"] = round(r["events_per_s"] / ref, 2) if ref else None
    return results


def cluster_bench(args: argparse.Namespace, settings, jobs: list[str], topic: str) -> dict:  # type: ignore[no-untyped-def]
    from kafka.errors import TopicAlreadyExistsError

    from scripts import bench_cluster, ops

    for name in ("bench-notifications", "bench-dlq"):  # the jobs' outputs (profiles reads one)
        with contextlib.suppress(TopicAlreadyExistsError):
            create_topic(settings.kafka.bootstrap, name, 4)
    for name in ops.JOBS.values():
        if ops.find_job(name) is not None:
            raise SystemExit(f"error: {name} is running on the cluster; stop it first "
                             "(the benchmark needs the slots and the cores)")
    parallelisms = [int(p) for p in str(args.parallelism or settings.flink.parallelism)
                    .split(",")]
    results = []
    for parallelism in parallelisms:
        for job in jobs:
            r = bench_cluster.throughput_run(job, topic, args.events, parallelism,
                                             args.max_seconds)
            r["events"] = args.events
            print(f"{job} (p={parallelism}): {r['events_per_s']:,} events/s "
                  f"{'' if r['drained'] else '(not drained) '}{r}", flush=True)
            results.append(r)
    latency = None
    if args.live_rate > 0:
        latency = bench_cluster.latency_run(
            settings, parallelisms[-1], args.live_rate, args.live_seconds,
            lambda name: create_topic(settings.kafka.bootstrap, name, 4))
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{os.cpu_count()} cores", "target": "standalone cluster",
            "throughput": "events / (first record out of the source → source read all and "
                          "the last operator's input stopped growing), REST vertex counts",
            "results": with_ratios(results), "latency": latency}


def minicluster_bench(args: argparse.Namespace, settings, jobs: list[str], topic: str,  # type: ignore[no-untyped-def]
                      empty: str, environ: dict[str, str]) -> dict:
    results = []
    parallelism = int(args.parallelism or settings.flink.parallelism)
    for job in jobs:
        baseline = timed_run(job, empty, environ)
        drained = timed_run(job, topic, environ)
        net = max(drained - baseline, 1e-3)
        results.append({"job": job, "parallelism": parallelism, "events": args.events,
                        "drain_s": round(drained, 1), "empty_topic_s": round(baseline, 1),
                        "events_per_s": round(args.events / net),
                        "events_per_s_incl_startup": round(args.events / drained)})
        print(f"{job}: {drained:.1f}s drained, {baseline:.1f}s empty → "
              f"{args.events / net:,.0f} events/s", flush=True)
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{os.cpu_count()} cores", "target": "minicluster",
            "throughput": "events / (drain time - empty-topic time), bounded source",
            "results": with_ratios(results)}


if __name__ == "__main__":
    sys.exit(main())
