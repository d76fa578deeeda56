"""Writing and reading topics in integration and fault tests."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer


def send_events(bootstrap: str, topic: str, events: list[dict],
                rate: float | None = None) -> None:
    """Send events as JSON, keyed by user, Kafka timestamp = `ts`; an event's
    `_partition` (not sent) pins its partition. With `rate`, about that many per second
    (so that faults hit a running stream)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                             retries=20, reconnect_backoff_ms=200)
    began = time.monotonic()
    for i, event in enumerate(events):
        body = {k: v for k, v in event.items() if k != "_partition"}
        producer.send(topic, key=event["user_id"].encode(), value=json.dumps(body).encode(),
                      partition=event.get("_partition"), timestamp_ms=event["ts"])
        if rate and i % 500 == 0:
            time.sleep(max(0.0, began + i / rate - time.monotonic()))
    producer.flush()
    producer.close()


def consume(bootstrap: str, topic: str, want: int, timeout_s: float, settle_s: float = 0.0,
            job: subprocess.Popen | None = None, **config: object) -> list:
    """Read `topic` from the start until `want` records came (or the time is up), then
    keep reading `settle_s` longer so that extra records would show up too."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, **config)
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(records) < want:
            if job is not None and job.poll() is not None:
                pytest.fail(f"the job exited with code {job.returncode}; see var/*.log")
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
        settle = time.monotonic() + settle_s
        while time.monotonic() < settle:  # anything extra would show up now
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records
