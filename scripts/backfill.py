"""Backfills: historic events through a job, bounded, then a report of what came out.

    python scripts/backfill.py --file events.jsonl              # = make backfill FILE=…
    python scripts/backfill.py --file events.avro --job all
    python scripts/backfill.py --from-topic events --since 2026-11-01T00:00Z \\
        --until 2026-11-02T00:00Z --job profiles

1. The input is copied into a topic of its own, ``<events topic>.backfill.<run id>``:
   the lines of a JSON-lines file (each line's bytes as they are, so a malformed line
   is dead-lettered with its reason as it would be live), the records of an Avro object
   container file (re-encoded in the Confluent wire format under the id that
   ``schemas/registry.json`` gives the file's schema), or the records of an existing
   topic whose Kafka timestamps lie in [--since, --until) (keys, values, timestamps and
   partitions kept). Records of a file are keyed by their ``user_id``, as the contract's
   producers key them, so that each user's events stay in order on one partition.
2. Each job (``--job triggers``, ``profiles`` or ``all`` = triggers then profiles) runs
   bounded over that topic on a local minicluster: it starts with empty state, reads
   to the end, and then event time runs to its end, so that every window and deadline
   still open is decided by the backfilled events alone (docs/operations.md,
   "Backfills"). Progress is printed every ``--progress`` seconds.
3. The report: notifications by trigger, dead letters by reason, profiles in Redis.

The jobs write where their settings say (``NUDGE_*`` variables, as for a live run):
the notifications and DLQ topics, Redis. Their consumer groups and transactional ids
are the run's own, so a backfill can run beside the live jobs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config.settings import Settings, SettingsError, load_settings  # noqa: E402

LOG_DIR = ROOT / "var" / "backfill"
JOB_CHOICES = {"triggers": ("triggers",), "profiles": ("profiles",),
               "all": ("triggers", "profiles")}


class BackfillError(RuntimeError):
    """A problem with the input or the run; the message says what."""


class Record(NamedTuple):
    key: bytes | None
    value: bytes
    timestamp_ms: int | None  # None: the time of the copy
    partition: int | None  # None: by key


# --- input ---------------------------------------------------------------------------------

def user_key(value: bytes) -> bytes | None:
    """The `user_id` of a JSON event as its Kafka key; None when there is none."""
    try:
        event = json.loads(value)
    except ValueError:
        return None
    user = event.get("user_id") if isinstance(event, dict) else None
    return user.encode() if isinstance(user, str) and user else None


def json_lines(path: Path) -> Iterator[Record]:
    """Each non-blank line of `path` as one record, its bytes unchanged."""
    with path.open("rb") as lines:
        for line in lines:
            value = line.rstrip(b"\r\n")
            if value.strip():
                yield Record(user_key(value), value, None, None)


def registered_schema_id(writer_schema: dict[str, Any], resolver: Any) -> int:
    """The id schemas/registry.json gives `writer_schema` (same parsing canonical form);
    `resolver` is a udfs.codecs.LocalSchemas of it."""
    from fastavro.schema import parse_schema, to_parsing_canonical_form

    wanted = to_parsing_canonical_form(parse_schema(writer_schema))
    for schema_id in resolver.files:
        if to_parsing_canonical_form(resolver.resolve(schema_id)) == wanted:
            return int(schema_id)
    raise BackfillError("the Avro file's schema is none of schemas/registry.json's; "
                        "write it with one of schemas/event.v*.avsc")


def avro_container(path: Path) -> Iterator[Record]:
    """Each record of an Avro object container file, in the Confluent wire format."""
    import fastavro

    from schemas import SCHEMA_DIR
    from udfs.codecs import LocalSchemas, encode_avro

    resolver = LocalSchemas(SCHEMA_DIR)
    with path.open("rb") as data:
        reader = fastavro.reader(data)
        if not isinstance(reader.writer_schema, dict):
            raise BackfillError(f"--file {path}: the Avro file's schema is not a record")
        schema_id = registered_schema_id(reader.writer_schema, resolver)
        for event in reader:
            if not isinstance(event, dict):
                raise BackfillError(f"--file {path}: a record that is not a record")
            user = event.get("user_id")
            yield Record(user.encode() if isinstance(user, str) and user else None,
                         encode_avro(event, schema_id, resolver), None, None)


def file_records(path: Path, fmt: str) -> Iterator[Record]:
    if not path.is_file():
        raise BackfillError(f"--file {path}: no such file")
    if fmt == "auto":
        with path.open("rb") as head:
            fmt = "avro" if head.read(4) == b"Obj\x01" else "json"
    return avro_container(path) if fmt == "avro" else json_lines(path)


def parse_time(text: str, option: str) -> int:
    """Epoch milliseconds, or an ISO-8601 time (UTC when it names no offset), as ms."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BackfillError(f"{option} {text!r}: not epoch ms nor ISO-8601") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def topic_records(bootstrap: str, topic: str, since_ms: int, until_ms: int | None
                  ) -> tuple[int, int, Iterator[Record]]:
    """How many partitions `topic` has, how many of its records have Kafka timestamps
    in [since, until), and them."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             isolation_level="read_committed")
    partitions = [TopicPartition(topic, p)
                  for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not partitions:
        consumer.close()
        raise BackfillError(f"--from-topic {topic}: no such topic")
    ends = consumer.end_offsets(partitions)

    def offsets_at(ms: int | None) -> dict[Any, int]:
        if ms is None:
            return dict(ends)
        found = consumer.offsets_for_times({tp: ms for tp in partitions})
        return {tp: ends[tp] if found[tp] is None else found[tp].offset for tp in partitions}

    start, stop = offsets_at(since_ms), offsets_at(until_ms)
    wanted = {tp: (start[tp], stop[tp]) for tp in partitions if stop[tp] > start[tp]}

    def read() -> Iterator[Record]:
        try:
            consumer.assign(list(wanted))
            for tp, (first, _) in wanted.items():
                consumer.seek(tp, first)
            open_ = dict(wanted)
            while open_:
                for tp, batch in consumer.poll(timeout_ms=1000).items():
                    for r in batch:
                        if tp in open_ and r.offset < open_[tp][1]:
                            yield Record(r.key, r.value, r.timestamp, tp.partition)
                    if tp in open_ and consumer.position(tp) >= open_[tp][1]:
                        del open_[tp]
                        consumer.pause(tp)
        finally:
            consumer.close()

    return len(partitions), sum(b - a for a, b in wanted.values()), read()


def copy_into(bootstrap: str, topic: str, records: Iterator[Record], total: int | None,
              progress_s: float) -> tuple[int, set[str]]:
    """Produce `records` to `topic`; return how many, and the users (keys) among them."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50,
                             batch_size=256 * 1024)
    users: set[str] = set()
    count, began, shown = 0, time.monotonic(), time.monotonic()
    for record in records:
        producer.send(topic, key=record.key, value=record.value,
                      timestamp_ms=record.timestamp_ms, partition=record.partition)
        if record.key:
            users.add(record.key.decode("utf-8", "replace"))
        count += 1
        if time.monotonic() - shown >= progress_s:
            shown = time.monotonic()
            of = f" of {total:,}" if total else ""
            print(f"copy: {count:,}{of} records into {topic} "
                  f"({time.monotonic() - began:.0f}s)", flush=True)
    producer.flush()
    producer.close()
    return count, users


# --- running a job -------------------------------------------------------------------------

def run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S")


def job_environ(settings: Settings, run: str) -> dict[str, str]:
    """The environment of a backfill job: the caller's settings, a consumer group of the
    run's own, read from the start."""
    return {**os.environ, "NUDGE_KAFKA__GROUP_ID": f"{settings.kafka.group_id}-backfill-{run}",
            "NUDGE_KAFKA__STARTING_OFFSETS": "earliest"}


def run_job(job: str, settings: Settings, run: str, topic: str, total: int,
            progress_s: float) -> float:
    """Run `job` bounded over `topic` in a child process (a local minicluster), printing
    progress; return its wall time. BackfillError when it fails."""
    from scripts.ops import consumer_lag

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{run}-{job}.log"
    environ = job_environ(settings, run)
    group = f"{environ['NUDGE_KAFKA__GROUP_ID']}-{job}"
    began = time.monotonic()
    with log_path.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--run-job", job, "--topic", topic,
             "--run-id", run, *(["--env", settings.env])],
            cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
        while child.poll() is None:
            try:
                child.wait(progress_s)
            except subprocess.TimeoutExpired:
                try:
                    # the topic holds exactly the `total` records copied into it
                    lag = consumer_lag(settings.kafka.bootstrap, group, topic)
                    done = "?" if lag is None else f"{total - lag:,}"
                except Exception as exc:  # progress is a courtesy; Kafka trouble shows later
                    done = f"? ({exc.__class__.__name__})"
                # The Kafka source commits at checkpoints while it reads; once a
                # partition is read to its end its count stays, and the job finishes
                # its windows and deadlines.
                print(f"{job}: {done} of {total:,} records read and checkpointed "
                      f"({time.monotonic() - began:.0f}s)", flush=True)
    if child.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise BackfillError(f"the {job} job exited with code {child.returncode}; "
                            f"{log_path.relative_to(ROOT)} ends:\n" + "\n".join(tail))
    took = time.monotonic() - began
    print(f"{job}: finished in {took:.0f}s", flush=True)
    return took


def execute_bounded(job: str, topic: str, run: str, env: str | None) -> None:
    """The child's side of run_job: build `job` over `topic`, bounded, and execute it,
    as a live job is run (jobs.runtime.run_job)."""
    import functools
    import importlib

    from jobs import runtime

    module = importlib.import_module(f"jobs.{job}")
    name = f"{module.JOB_NAME}-backfill-{run}"
    build = functools.partial(module.build, topic=topic, bounded=True, name=name)
    runtime.run_job(name, build, ["--env", env] if env else [], f"backfill of {job}")


# --- report --------------------------------------------------------------------------------

@dataclass
class Report:
    run: str
    input: str
    topic: str
    records: int
    jobs: dict[str, float] = field(default_factory=dict)  # job → seconds
    notifications: dict[str, int] = field(default_factory=dict)  # trigger → count
    notification_ids: list[str] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)  # reason → count
    users: int = 0
    profiles: int | None = None  # users with a profile in Redis after the run

    def text(self) -> str:
        def counts(c: dict[str, int]) -> str:
            return f"{sum(c.values())}  " + ", ".join(f"{k}={v}" for k, v in sorted(c.items()))

        lines = [f"=== backfill {self.run} ===",
                 f"input:          {self.input}: {self.records:,} records → {self.topic}",
                 "jobs:           " + ", ".join(f"{j} {s:.0f}s" for j, s in self.jobs.items()),
                 f"notifications:  {counts(self.notifications)}",
                 f"dead letters:   {counts(self.dead_letters)}"
                 + ("" if "triggers" in self.jobs else "  (only the triggers job writes them)"),
                 f"late:           {self.dead_letters.get('late', 0)}"]
        if self.profiles is not None:
            lines.append(f"profiles:       {self.profiles} of {self.users} users have one "
                         "in Redis")
        return "\n".join(lines)


def collect(report: Report, settings: Settings, notif_from: dict, dlq_from: dict,
            users: set[str]) -> None:
    """Fill `report` from what the run wrote: the notifications topic since `notif_from`
    (read_committed) for the backfilled users, the DLQ since `dlq_from` for the
    backfill topic, and the Redis profiles of the backfilled users."""
    from jobs.demo import read_since

    bootstrap = settings.kafka.bootstrap
    if "triggers" in report.jobs:
        found = [json.loads(r.value) for r in read_since(bootstrap, notif_from, quiet_s=3,
                                                            max_s=30, settle_after=0)]
        mine = [n for n in found if n.get("user_id") in users]
        report.notifications = dict(collections.Counter(n["trigger"] for n in mine))
        report.notification_ids = sorted(n["notification_id"] for n in mine)
        dead = [dict(r.headers) for r in read_since(bootstrap, dlq_from, quiet_s=3, max_s=30,
                                                     settle_after=0)]
        report.dead_letters = dict(collections.Counter(
            h.get("error", b"?").decode() for h in dead
            if h.get("source.topic", b"").decode() == report.topic))
    if "profiles" in report.jobs:
        import redis

        client = redis.Redis.from_url(settings.redis.url)
        try:
            pipe = client.pipeline(transaction=False)
            for user in sorted(users):
                pipe.exists(f"{settings.redis.key_prefix}profile:{user}")
            report.profiles = sum(pipe.execute())
        finally:
            client.close()
    report.users = len(users)


# --- command line --------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--file", type=Path, help="JSON lines or an Avro container file")
    source.add_argument("--from-topic", help="an existing topic, with --since/--until")
    parser.add_argument("--format", choices=("auto", "json", "avro"), default="auto")
    parser.add_argument("--since", help="Kafka timestamps from (epoch ms or ISO-8601)")
    parser.add_argument("--until", help="... to, exclusive (default: the topic's end)")
    parser.add_argument("--job", choices=tuple(JOB_CHOICES), default="triggers")
    parser.add_argument("--partitions", type=int, default=None,
                        help="of the backfill topic (default: the events topic's)")
    parser.add_argument("--keep-topic", action="store_true",
                        help="keep the backfill topic (deleted after a successful run)")
    parser.add_argument("--progress", type=float, default=10.0, help="seconds between lines")
    parser.add_argument("--report", type=Path, help="also write the report here, as JSON")
    parser.add_argument("--env", default=None, help="settings overlay (default: local)")
    parser.add_argument("--run-job", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_job is None and args.file is None and args.from_topic is None:
        parser.error("give --file or --from-topic")
    if args.from_topic and not args.since:
        parser.error("--from-topic needs --since")
    return args


def backfill(args: argparse.Namespace, settings: Settings) -> Report:
    from kafka import KafkaAdminClient

    from jobs.demo import end_offsets
    from scripts.bench import create_topic

    bootstrap = settings.kafka.bootstrap
    run = run_id()
    topic = f"{settings.topics.events}.backfill.{run}"
    if args.file is not None:
        source, total = f"file {args.file}", None
        records = file_records(args.file, args.format)
        partitions = args.partitions or len(end_offsets(bootstrap, settings.topics.events)) or 2
    else:
        since = parse_time(args.since, "--since")
        until = None if args.until is None else parse_time(args.until, "--until")
        partitions, total, records = topic_records(bootstrap, args.from_topic, since, until)
        source = f"topic {args.from_topic} [{args.since}, {args.until or 'end'})"
    create_topic(bootstrap, topic, partitions)
    copied, users = copy_into(bootstrap, topic, records, total, args.progress)
    if not copied:
        raise BackfillError(f"{source}: no records")
    print(f"copy: {copied:,} records from {source} into {topic} ({partitions} partitions)",
          flush=True)
    report = Report(run, source, topic, copied)
    notif_from = end_offsets(bootstrap, settings.topics.notifications)
    dlq_from = end_offsets(bootstrap, settings.topics.dlq)
    for job in JOB_CHOICES[args.job]:
        report.jobs[job] = run_job(job, settings, run, topic, copied, args.progress)
    collect(report, settings, notif_from, dlq_from, users)
    if not args.keep_topic:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.delete_topics([topic])
        finally:
            admin.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_job:
        execute_bounded(args.run_job, args.topic, args.run_id, args.env)
        return 0
    try:
        settings = load_settings(args.env, os.environ)
        report = backfill(args, settings)
    except (SettingsError, BackfillError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.text())
    if args.report:
        args.report.write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
