"""The ingestion layer against real Kafka: the generator's records read back, and the
shared source stage (jobs/source.py) on a mixed JSON + Avro topic with malformed records.

The expected values are derived here from the raw records with json/fastavro directly,
not with the code under test (udfs.codecs, udfs.events).
"""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import fastavro
import pytest
from kafka import KafkaConsumer, KafkaProducer

from config.settings import load_settings
from jobs.generate import generated_records

ROOT = Path(__file__).resolve().parents[2]
EVENT_V1 = fastavro.parse_schema(json.loads((ROOT / "schemas" / "event.v1.avsc").read_text()))


def read_all(bootstrap: str, topic: str, want: int, timeout_s: float = 60) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < want and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def plain_decode(value: bytes) -> dict:
    """Decode a valid record without the project's codec."""
    if value[:1] == b"\x00":
        assert int.from_bytes(value[1:5], "big") == 1
        return fastavro.schemaless_reader(io.BytesIO(value[5:]), EVENT_V1)
    return json.loads(value)


def ts_ms(ts: int | str) -> int:
    if isinstance(ts, int):
        return ts
    return int(datetime.fromisoformat(ts).timestamp() * 1000)


@pytest.mark.parametrize("fmt", ["json", "avro"])
def test_generator_produces_n_records_a_consumer_reads_back(
        stack: dict[str, str], topic: str, fmt: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.generate", "--count", "500", "--format", fmt,
         "--seed", "11", "--bootstrap", stack["bootstrap"], "--topic", topic],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "count=500" in proc.stdout

    records = read_all(stack["bootstrap"], topic, 500)
    assert len(records) == 500
    events = [plain_decode(r.value) for r in records]
    assert len({e["event_id"] for e in events}) == 500
    assert all(r.key == e["user_id"].encode() for r, e in zip(records, events, strict=True))
    if fmt == "avro":
        assert all(r.value[:1] == b"\x00" for r in records)
    else:
        assert all(r.value[:1] == b"{" for r in records)


# events.json_decode: every record through Python, or JSON in SQL with the rest in
# Python, merged back in offset order (jobs/json_decode.py, OffsetOrderMerge)
@pytest.mark.parametrize("json_decode", ["python", "sql"])
def test_source_stage_normalizes_valid_events_and_dead_letters_the_rest(
        stack: dict[str, str], topic_factory,  # type: ignore[no-untyped-def]
        json_decode: str) -> None:
    from jobs.runtime import create_environments
    from jobs.source import EVENT_COLUMNS, EVENT_FIELDS, read_events

    events_topic, dlq_topic = topic_factory("events", 2), topic_factory("dlq", 1)
    out_topic = topic_factory("out", 1)
    # a day back: the broker refuses record timestamps more than 1 h ahead of its clock
    start = (int(time.time() * 1000) - 86_400_000) // 60_000 * 60_000
    generated = list(itertools.islice(
        generated_records(5, 15, start, fmt="mixed", malformed_ratio=0.2), 400))
    producer = KafkaProducer(bootstrap_servers=stack["bootstrap"], acks="all")
    for record in generated:
        producer.send(events_topic, key=record.key, value=record.value,
                      timestamp_ms=record.ts_ms)
    producer.flush()
    producer.close()
    bad = [r for r in generated if r.malformed]
    good = [plain_decode(r.value) for r in generated if not r.malformed]
    assert len(bad) >= 40 and len({r.malformed for r in bad}) == 10  # all ten classes

    settings = load_settings("local", {"NUDGE_KAFKA__BOOTSTRAP": stack["bootstrap"],
                                       "NUDGE_TOPICS__DLQ": dlq_topic,
                                       "NUDGE_EVENTS__JSON_DECODE": json_decode})
    env, t_env = create_environments(settings)
    statements = t_env.create_statement_set()
    read_events(t_env, settings, statements, group_id=f"it-{events_topic}",
                topic=events_topic, bounded=True)
    # The stage's output, as JSON on a topic (execute_and_collect would leave out the
    # DLQ inserts, which are part of the same job).
    columns = ", ".join(f"`{name}` {sql_type}" for name, sql_type in EVENT_COLUMNS)
    t_env.execute_sql(f"""CREATE TEMPORARY TABLE out_sink ({columns}) WITH (
        'connector' = 'kafka', 'topic' = '{out_topic}', 'format' = 'json',
        'properties.bootstrap.servers' = '{stack["bootstrap"]}')""")
    fields = ", ".join(f"`{f}`" for f in EVENT_FIELDS)
    statements.add_insert_sql(f"INSERT INTO out_sink SELECT {fields} FROM events")
    statements.attach_as_datastream()
    env.execute("source stage test")  # the source is bounded: this returns at the end
    out = [json.loads(r.value) for r in read_all(stack["bootstrap"], out_topic, len(good))]

    # every valid event once, normalized
    assert sorted(e["event_id"] for e in out) == sorted(e["event_id"] for e in good)
    by_id = {e["event_id"]: e for e in out}
    for original in good:
        got = by_id[original["event_id"]]
        assert got["user_id"] == original["user_id"]
        assert got["event_type"] == original["event_type"]
        assert got["ts"] == ts_ms(original["ts"])
        assert got["quantity"] == (original.get("quantity") or 1)
        assert got["currency"] == (original.get("currency") or "EUR")
        assert got["product_id"] == original.get("product_id")
        consent = original.get("consent")
        assert got["consent_marketing"] == (consent["marketing"] if consent else None)

    # every bad record on the DLQ, bytes unchanged, with its reason and coordinates
    dlq = read_all(stack["bootstrap"], dlq_topic, len(bad))
    assert len(dlq) == len(bad)
    assert sorted(r.value for r in dlq) == sorted(r.value for r in bad)
    for r in dlq:
        headers = {k: v.decode() for k, v in r.headers}
        assert headers["error"] and headers["error"] != "late"
        assert headers["source.topic"] == events_topic
        assert int(headers["source.partition"]) in (0, 1)
        assert int(headers["source.offset"]) >= 0
    reasons = {dict(r.headers)["error"].decode().split(":")[0] for r in dlq}
    assert {"invalid_utf8", "not_an_object", "unknown_event_type", "negative",
            "future_ts", "avro_truncated", "unknown_schema_id"} <= reasons
