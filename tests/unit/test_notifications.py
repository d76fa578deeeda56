"""Firings and notification records (udfs.notifications)."""

from __future__ import annotations

import json
import pickle

import pytest

from udfs.notifications import (
    NOTIFICATION_KEYS,
    Firing,
    build_notification,
    notification_id,
    to_json_bytes,
)

FIRED_AT = 1_764_380_400_000


def test_notification_id_is_trigger_user_fired_at() -> None:
    assert notification_id("cart_abandoned", "u42", FIRED_AT) == "cart_abandoned:u42:1764380400000"
    assert Firing("high_intent", "u:7", 5, {}).notification_id == "high_intent:u:7:5"


def test_record_has_exactly_the_contract_keys() -> None:
    firing = Firing("cart_abandoned", "u42", FIRED_AT, {})
    record = build_notification(firing, FIRED_AT + 450)
    assert tuple(record) == NOTIFICATION_KEYS
    # the contract's example, byte for byte apart from key order
    example = ('{"notification_id": "cart_abandoned:u42:1764380400000",'
               ' "user_id": "u42", "trigger": "cart_abandoned",'
               ' "fired_at": 1764380400000, "emitted_at": 1764380400450,'
               ' "payload": {}, "schema_version": 1}')
    assert record == json.loads(example)


def test_record_copies_the_payload() -> None:
    payload = {"query": "shoes", "product_id": "p1"}
    record = build_notification(Firing("high_intent", "u1", 1, payload), 2)
    record["payload"]["query"] = "changed"
    assert payload["query"] == "shoes"


def test_json_is_compact_sorted_and_deterministic() -> None:
    a = {"b": 1, "a": {"y": [1, 2], "x": "é"}}
    b = {"a": {"x": "é", "y": [1, 2]}, "b": 1}
    assert to_json_bytes(a) == to_json_bytes(b) == '{"a":{"x":"é","y":[1,2]},"b":1}'.encode()
    record = build_notification(Firing("cart_abandoned", "u42", FIRED_AT, {}), FIRED_AT + 450)
    assert json.loads(to_json_bytes(record)) == record


def test_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        to_json_bytes({"cart_value": float("nan")})


def test_firing_round_trips() -> None:
    firing = Firing("browse_abandoned", "u1", FIRED_AT, {"category": "A", "product_ids": ["p"]})
    assert Firing.from_state(pickle.loads(pickle.dumps(firing.to_state()))) == firing
    assert pickle.loads(pickle.dumps(firing)) == firing


def test_avro_notification_round_trips_through_the_wire_format() -> None:
    import io
    import json as _json
    from pathlib import Path

    import fastavro

    from udfs.codecs import LocalSchemas
    from udfs.notifications import to_avro_bytes

    schemas = Path(__file__).resolve().parents[2] / "schemas"
    record = build_notification(
        Firing("high_intent", "u7", 1_000, {"query": "tea", "product_id": "p1"}), 1_450)
    raw = to_avro_bytes(record, LocalSchemas(schemas))
    assert raw[0] == 0 and int.from_bytes(raw[1:5], "big") == 3
    schema = fastavro.parse_schema(_json.loads((schemas / "notification.v1.avsc").read_text()))
    decoded = fastavro.schemaless_reader(io.BytesIO(raw[5:]), schema)
    assert decoded["notification_id"] == "high_intent:u7:1000"
    assert (decoded["fired_at"], decoded["emitted_at"]) == (1_000, 1_450)
    assert _json.loads(decoded["payload"]) == {"query": "tea", "product_id": "p1"}
