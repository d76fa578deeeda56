"""The pure parts of scripts/backfill.py: reading its input files, its times, its report."""

from __future__ import annotations

import json
from pathlib import Path

import fastavro
import pytest

from schemas import SCHEMA_DIR
from scripts.backfill import (
    BackfillError,
    Report,
    file_records,
    parse_time,
    user_key,
)
from udfs.codecs import LocalSchemas
from udfs.events import Event, decode_and_validate

EVENT = {"event_id": "e1", "event_type": "add_to_cart", "user_id": "u1", "ts": 1_700_000_000_000,
         "product_id": "p1"}


def test_json_lines_are_sent_as_they_are_keyed_by_user(tmp_path: Path) -> None:
    lines = [json.dumps(EVENT).encode(), b"", b"{not json", b'  ', b'{"user_id": 7}',
             json.dumps({**EVENT, "user_id": "u2"}).encode()]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\n")
    records = list(file_records(path, "auto"))
    assert [r.value for r in records] == [lines[0], lines[2], lines[4], lines[5]]
    assert [r.key for r in records] == [b"u1", None, None, b"u2"]
    assert all(r.timestamp_ms is None and r.partition is None for r in records)


def test_an_avro_container_becomes_confluent_records_of_its_registered_schema(
        tmp_path: Path) -> None:
    schema = json.loads((SCHEMA_DIR / "event.v1.avsc").read_text())
    parsed = fastavro.parse_schema(schema)
    full = {field["name"]: None for field in schema["fields"]} | EVENT
    path = tmp_path / "events.avro"
    with path.open("wb") as out:
        fastavro.writer(out, parsed, [full, {**full, "user_id": "u2", "event_id": "e2"}])
    records = list(file_records(path, "auto"))
    assert [r.key for r in records] == [b"u1", b"u2"]
    assert records[0].value[:5] == b"\x00\x00\x00\x00\x01"  # magic byte, schema id 1
    decoded = decode_and_validate(records[0].value, EVENT["ts"], LocalSchemas(SCHEMA_DIR))
    assert isinstance(decoded, Event)
    assert (decoded.event_id, decoded.user_id, decoded.ts) == ("e1", "u1", EVENT["ts"])


def test_an_avro_container_of_an_unregistered_schema_is_refused(tmp_path: Path) -> None:
    schema = fastavro.parse_schema({"type": "record", "name": "Other",
                                    "fields": [{"name": "user_id", "type": "string"}]})
    path = tmp_path / "other.avro"
    with path.open("wb") as out:
        fastavro.writer(out, schema, [{"user_id": "u1"}])
    with pytest.raises(BackfillError, match="schemas/registry.json"):
        list(file_records(path, "auto"))


def test_a_missing_file_is_named() -> None:
    with pytest.raises(BackfillError, match="nowhere.jsonl"):
        file_records(Path("/nowhere.jsonl"), "auto")


def test_times_are_epoch_ms_or_iso_8601() -> None:
    assert parse_time("1700000000000", "--since") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20Z", "--since") == 1_700_000_000_000
    assert parse_time("2023-11-14T23:13:20+01:00", "--since") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20", "--since") == 1_700_000_000_000  # UTC
    with pytest.raises(BackfillError, match="--until"):
        parse_time("yesterday", "--until")


def test_user_key_only_for_a_json_object_with_a_user() -> None:
    assert user_key(b'{"user_id": "u9"}') == b"u9"
    assert user_key(b'[{"user_id": "u9"}]') is None
    assert user_key(b'{"user_id": ""}') is None
    assert user_key(b"\x00\x01") is None


def test_the_report_names_counts_late_and_profiles() -> None:
    report = Report("r1", "file x.jsonl", "events.backfill.r1", 12,
                    jobs={"triggers": 30.0, "profiles": 40.0},
                    notifications={"high_intent": 1, "cart_abandoned": 2},
                    dead_letters={"invalid_json": 1}, users=5, profiles=4)
    text = report.text()
    assert "notifications:  3  cart_abandoned=2, high_intent=1" in text
    assert "dead letters:   1  invalid_json=1" in text
    assert "late:           0" in text
    assert "profiles:       4 of 5 users" in text
