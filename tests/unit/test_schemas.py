"""The Avro schemas in schemas/: they parse, document every field, evolve compatibly,
and registry.json maps ids to files that exist.

    .venv/bin/python -m pytest tests/unit/test_schemas.py -q
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
AVSC = sorted(SCHEMAS.glob("*.avsc"))


def load(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


def all_fields(schema: dict):
    """Every field of the record and of records nested in it (through unions)."""
    for field in schema["fields"]:
        yield field
        types = field["type"] if isinstance(field["type"], list) else [field["type"]]
        for t in types:
            if isinstance(t, dict) and t.get("type") == "record":
                yield from all_fields(t)


def test_the_expected_schema_files_exist():
    names = {p.name for p in AVSC}
    assert {"event.v1.avsc", "event.v2.avsc", "notification.v1.avsc", "dlq.v1.avsc"} <= names


@pytest.mark.parametrize("path", AVSC, ids=lambda p: p.name)
def test_schema_parses(path):
    fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", AVSC, ids=lambda p: p.name)
def test_every_field_is_documented(path):
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema.get("doc")
    undocumented = [f["name"] for f in all_fields(schema) if not f.get("doc", "").strip()]
    assert undocumented == []


@pytest.mark.parametrize("path", AVSC, ids=lambda p: p.name)
def test_optional_fields_are_null_unions_defaulting_to_null(path):
    for field in all_fields(json.loads(path.read_text(encoding="utf-8"))):
        if isinstance(field["type"], list):
            assert field["type"][0] == "null", field["name"]
            assert "default" in field and field["default"] is None, field["name"]


def test_event_v1_has_the_contract_fields():
    names = [f["name"] for f in load("event.v1.avsc")["fields"]]
    assert names == [
        "event_id", "event_type", "user_id", "ts", "session_id", "product_id", "category",
        "price", "quantity", "order_id", "order_total", "currency", "query", "device",
        "country", "referrer", "page_url", "consent",
    ]
    types = {f["name"]: f["type"] for f in load("event.v1.avsc")["fields"]}
    assert types["ts"] == "long"
    assert types["quantity"] == ["null", "int"]
    assert types["price"] == ["null", "double"]
    assert types["order_total"] == ["null", "double"]
    consent = types["consent"][1]
    assert [(f["name"], f["type"]) for f in consent["fields"]] == [
        ("personalization", "boolean"), ("marketing", "boolean")]


def test_event_v2_only_adds_an_optional_field():
    v1, v2 = load("event.v1.avsc"), load("event.v2.avsc")
    assert v2["name"] == v1["name"] and v2["namespace"] == v1["namespace"]
    assert v2["fields"][: len(v1["fields"])] == v1["fields"]
    added = v2["fields"][len(v1["fields"]):]
    assert [(f["name"], f["type"], f["default"]) for f in added] == [
        ("app_version", ["null", "string"], None)]


FULL_V1 = {
    "event_id": "e1", "event_type": "add_to_cart", "user_id": "u42", "ts": 1764380400000,
    "session_id": "s1", "product_id": "p1", "category": "shoes", "price": 19.5,
    "quantity": 2, "order_id": None, "order_total": None, "currency": "EUR", "query": None,
    "device": "mobile", "country": "DE", "referrer": None, "page_url": "/p/p1",
    "consent": {"personalization": True, "marketing": False},
}


def roundtrip(record: dict, writer: dict, reader: dict) -> dict:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(writer), record)
    buf.seek(0)
    return fastavro.schemaless_reader(buf, fastavro.parse_schema(writer),
                                      fastavro.parse_schema(reader))


def test_v2_reader_reads_v1_data():
    got = roundtrip(FULL_V1, load("event.v1.avsc"), load("event.v2.avsc"))
    assert got == {**FULL_V1, "app_version": None}


def test_v1_reader_reads_v2_data():
    got = roundtrip({**FULL_V1, "app_version": "3.2.1"}, load("event.v2.avsc"),
                    load("event.v1.avsc"))
    assert got == FULL_V1


def test_notification_and_dlq_records_roundtrip():
    notification = {
        "notification_id": "cart_abandoned:u42:1764380400000", "user_id": "u42",
        "trigger": "cart_abandoned", "fired_at": 1764380400000, "emitted_at": 1764380400450,
        "payload": '{"items":[],"cart_value":0}', "schema_version": 1,
    }
    schema = load("notification.v1.avsc")
    assert roundtrip(notification, schema, schema) == notification
    dead = {"key": None, "value": b"\xff", "error": "invalid_utf8", "source_topic": "events",
            "source_partition": 3, "source_offset": 2**40}
    schema = load("dlq.v1.avsc")
    assert roundtrip(dead, schema, schema) == dead


def test_registry_maps_ids_to_existing_files():
    registry = json.loads((SCHEMAS / "registry.json").read_text(encoding="utf-8"))
    assert registry["1"] == "event.v1.avsc"
    assert registry["2"] == "event.v2.avsc"
    assert registry["3"] == "notification.v1.avsc"
    for schema_id, name in registry.items():
        assert int(schema_id) > 0
        assert (SCHEMAS / name).is_file(), name
    assert len(set(registry.values())) == len(registry)
