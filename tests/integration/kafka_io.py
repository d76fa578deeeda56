"""Reading topics in integration tests."""

from __future__ import annotations

import subprocess
import time

import pytest
from kafka import KafkaConsumer


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
