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
