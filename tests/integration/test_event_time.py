"""Event time from every record's own ts, on the real stack (the triggers job on a local
minicluster, real Kafka): a backfill of historic events re-produced today, so that every
record's Kafka timestamp is now while its ts is a year back.

- The scripted trace of test_triggers_kafka, a year earlier, each event in one of three
  encodings in turn: JSON with an integer ts, JSON with an ISO-8601 ts (with an offset),
  Avro in the Confluent wire format — with malformed records first, some of them with a
  ts that is now, far in the future or garbage. Every expected notification arrives,
  nothing is `late`, and the DLQ holds exactly the malformed records, each with its reason.
- One rejected record at a time, each given time to be turned into a watermark, between
  two valid events a minute apart: none of them moves event time (before the fix each
  moved it to its Kafka timestamp, now, and the second event was `late`).

Avro and ISO-8601 values are written here with fastavro and datetime, not with the
project's codecs; the expected reasons are the contract's classes, written out.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import fastavro
from kafka import KafkaProducer

from tests.integration.kafka_io import consume
from tests.integration.test_triggers_kafka import (  # noqa: F401 (fixtures)
    EXPECTED,
    T0,
    ev,
    job_topics,
    scripted_trace,
    triggers_job,
)

ROOT = Path(__file__).resolve().parents[2]
YEAR = 365 * 86_400_000
EVENT_V1 = fastavro.parse_schema(json.loads((ROOT / "schemas" / "event.v1.avsc").read_text()))
NOW = int(time.time() * 1000)


def avro(event: dict, schema_id: int = 1) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, EVENT_V1, event)
    return b"\x00" + struct.pack(">I", schema_id) + body.getvalue()


def iso(ts_ms: int, offset_minutes: int) -> str:
    zone = timezone(timedelta(minutes=offset_minutes))
    return datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone(zone).isoformat(
        timespec="milliseconds")


def encoded(event: dict, i: int) -> bytes:
    """`event` as JSON with an integer ts, JSON with an ISO-8601 ts, or Avro (i mod 3)."""
    if i % 3 == 1:
        return json.dumps({**event, "ts": iso(event["ts"], (-300, 60, 330)[i % 9 // 3])}).encode()
    if i % 3 == 2:
        return avro(event)
    return json.dumps(event).encode()


def back(event: dict) -> dict:
    return {**event, "ts": event["ts"] - YEAR}


GOOD = {"event_id": "g-1", "event_type": "add_to_cart", "user_id": "u-bad",
        "product_id": "p1", "ts": NOW}
# (value, reason): malformed records, several with a ts a watermark could jump to
MALFORMED = [
    (b"{not json", "invalid_json"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "user_id"}).encode(), "missing:user_id"),
    (json.dumps({**GOOD, "ts": NOW + 400 * 86_400_000}).encode(), "future_ts"),
    (json.dumps({**GOOD, "ts": "yesterday"}).encode(), "bad_ts"),
    (json.dumps({**GOOD, "ts": "2026-12-07T10:00:00"}).encode(), "bad_ts"),  # no offset
    (json.dumps({**GOOD, "event_type": "teleport"}).encode(), "unknown_event_type"),
    (json.dumps([GOOD]).encode(), "not_an_object"),
    (avro(GOOD, schema_id=9_999), "unknown_schema_id:9999"),
    (avro(GOOD)[:12], "avro_truncated"),
    (avro({**GOOD, "ts": NOW + 400 * 86_400_000}), "future_ts"),
]


def dlq_reasons(bootstrap: str, topic: str, want: int) -> list[str]:
    """The `error` headers of the DLQ, once `want` records are there and a few seconds
    more have passed (so that an extra one, a `late` event say, is seen too)."""
    records = consume(bootstrap, topic, want, timeout_s=120, settle_s=6)
    return sorted(dict(r.headers)["error"].decode() for r in records)


def settled(bootstrap: str, dlq: str, want: int, job: subprocess.Popen) -> None:
    """Wait until the DLQ holds `want` records, then more than two watermark intervals
    (1 s): whatever the job read by then has had its chance to move the watermark."""
    assert len(consume(bootstrap, dlq, want, timeout_s=120, job=job)) >= want
    time.sleep(2.5)


def test_backfill_of_mixed_formats_behind_malformed_records_loses_nothing(
        stack: dict[str, str], job_topics: dict[str, str],  # noqa: F811
        triggers_job: subprocess.Popen) -> None:  # noqa: F811
    producer = KafkaProducer(bootstrap_servers=stack["bootstrap"], acks="all")
    topic = job_topics["events"]
    for partition in (0, 1):  # malformed records first, on both partitions
        for value, _ in MALFORMED:
            producer.send(topic, key=b"u-bad", value=value, partition=partition)
    producer.flush()
    # The job has read them, and had time to turn what it read into a watermark.
    settled(stack["bootstrap"], job_topics["dlq"], 2 * len(MALFORMED), triggers_job)
    for i, event in enumerate(scripted_trace()):
        producer.send(topic, key=event["user_id"].encode(), value=encoded(back(event), i))
    for partition, mover in enumerate((avro, lambda e: encoded(e, 1))):
        clock = back(ev(f"zz-clock-{partition}", 300, "page_view", 1))
        producer.send(topic, key=clock["user_id"].encode(), value=mover(clock),
                      partition=partition)
    producer.flush()
    producer.close()
    expected = {(trigger, user, fired_at - YEAR) for trigger, user, fired_at in EXPECTED}

    records = consume(stack["bootstrap"], job_topics["notifications"], len(expected),
                      timeout_s=240, settle_s=12, job=triggers_job,
                      isolation_level="read_committed")
    notifications = [json.loads(r.value) for r in records]
    got = [(n["trigger"], n["user_id"], n["fired_at"]) for n in notifications]
    assert sorted(got) == sorted(expected)
    assert all(T0 - YEAR <= n["fired_at"] < T0 - YEAR + 86_400_000 for n in notifications)

    reasons = dlq_reasons(stack["bootstrap"], job_topics["dlq"], 2 * len(MALFORMED))
    assert reasons == sorted(2 * [reason for _, reason in MALFORMED])  # no `late` among them
    assert triggers_job.poll() is None


def test_a_rejected_record_never_moves_event_time(
        stack: dict[str, str], job_topics: dict[str, str],  # noqa: F811
        triggers_job: subprocess.Popen) -> None:  # noqa: F811
    topic = job_topics["events"]
    producer = KafkaProducer(bootstrap_servers=stack["bootstrap"], acks="all")
    first = back(ev("u-first", 0, "add_to_cart", 1, product_id="p1"))
    producer.send(topic, key=b"u-first", value=json.dumps(first).encode(), partition=0)
    other = back(ev("u-other", 0, "page_view", 1))  # the other partition is at T too
    producer.send(topic, key=b"u-other", value=avro(other), partition=1)
    producer.flush()
    # each rejected record alone (on both partitions, so that no partition holds the
    # watermark back), read by the job and given time to be turned into a watermark
    rejected = [MALFORMED[i] for i in (1, 2, 3, 4, 7, 9)]
    for n, (value, _) in enumerate(rejected, 1):
        for partition in (0, 1):
            producer.send(topic, key=b"u-bad", value=value, partition=partition)
        producer.flush()
        settled(stack["bootstrap"], job_topics["dlq"], 2 * n, triggers_job)
    # a minute after the first event: on time unless a rejected record moved the watermark
    second = back(ev("u-second", 1, "add_to_cart", 1, product_id="p2"))
    producer.send(topic, key=b"u-second", value=avro(second), partition=0)
    for partition in (0, 1):
        clock = back(ev(f"zz-clock-{partition}", 120, "page_view", 1))
        producer.send(topic, key=clock["user_id"].encode(), value=json.dumps(clock).encode(),
                      partition=partition)
    producer.close()

    records = consume(stack["bootstrap"], job_topics["notifications"], 2, timeout_s=240,
                      settle_s=6, job=triggers_job, isolation_level="read_committed")
    got = sorted((n["user_id"], n["fired_at"]) for n in map(json.loads, (r.value for r in records)))
    assert got == [("u-first", first["ts"] + 30 * 60_000), ("u-second", second["ts"] + 30 * 60_000)]
    reasons = dlq_reasons(stack["bootstrap"], job_topics["dlq"], 2 * len(rejected))
    assert reasons == sorted(2 * [reason for _, reason in rejected])
