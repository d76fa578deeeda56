"""Trigger firings and the notification records they become.

A ``Firing`` is what a pure trigger rule returns: which trigger, for whom, at which
event time, with which payload. The per-user gate (``udfs.gate``) decides whether it is
emitted; an emitted firing becomes one record on the ``notifications`` topic, built here
with exactly the contract's keys. ``notification_id`` depends only on
``(trigger, user_id, fired_at)``, so a replay produces the same id.

    python -c "from udfs.notifications import *; print(to_json_bytes(build_notification(
        Firing('high_intent', 'u42', 1764380400000, {'query': 'q', 'product_id': 'p'}), 0)))"
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from udfs.rules import (
    BROWSE_ABANDONED,
    CART_ABANDONED,
    CHECKOUT_ABANDONED,
    HIGH_INTENT,
    TRIGGERS,
)

__all__ = [
    "BROWSE_ABANDONED",
    "CART_ABANDONED",
    "CHECKOUT_ABANDONED",
    "HIGH_INTENT",
    "NOTIFICATION_KEYS",
    "SCHEMA_VERSION",
    "TRIGGERS",
    "Firing",
    "build_notification",
    "notification_id",
    "to_json_bytes",
]

SCHEMA_VERSION = 1
# The keys of a notification record, in the contract's order.
NOTIFICATION_KEYS: tuple[str, ...] = (
    "notification_id", "user_id", "trigger", "fired_at", "emitted_at", "payload",
    "schema_version",
)


@dataclass(frozen=True)
class Firing:
    """One trigger firing: ``fired_at`` is event time (ms); ``payload`` holds JSON values.

    The payload dict is treated as immutable by every function here; do not change it
    after building the firing.
    """

    trigger: str
    user_id: str
    fired_at: int
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def notification_id(self) -> str:
        """``<trigger>:<user_id>:<fired_at>``, stable across replays."""
        return notification_id(self.trigger, self.user_id, self.fired_at)

    def to_state(self) -> tuple[str, str, int, dict[str, Any]]:
        """Primitives only, for keyed state or a Flink ``Types.PICKLED_BYTE_ARRAY`` field."""
        return (self.trigger, self.user_id, self.fired_at, dict(self.payload))

    @classmethod
    def from_state(cls, state: tuple[str, str, int, Mapping[str, Any]]) -> Firing:
        """Inverse of ``to_state``."""
        trigger, user_id, fired_at, payload = state
        return cls(trigger, user_id, int(fired_at), dict(payload))


def notification_id(trigger: str, user_id: str, fired_at: int) -> str:
    """The notification's id: ``f"{trigger}:{user_id}:{fired_at}"``."""
    return f"{trigger}:{user_id}:{int(fired_at)}"


def build_notification(firing: Firing, emitted_at: int) -> dict[str, Any]:
    """The ``notifications`` record of an emitted firing; ``emitted_at`` is processing time."""
    return {
        "notification_id": firing.notification_id,
        "user_id": firing.user_id,
        "trigger": firing.trigger,
        "fired_at": int(firing.fired_at),
        "emitted_at": int(emitted_at),
        "payload": dict(firing.payload),
        "schema_version": SCHEMA_VERSION,
    }


def to_json_bytes(record: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON with keys sorted at every level, so equal records give equal bytes.

    ``ValueError`` for NaN or infinite numbers, which JSON cannot carry.
    """
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return text.encode("utf-8")


# schemas/registry.json id of notification.v1.avsc
NOTIFICATION_SCHEMA_ID = 3


def to_avro_bytes(record: Mapping[str, Any], resolver: Any,
                  schema_id: int = NOTIFICATION_SCHEMA_ID) -> bytes:
    """The record in the Confluent Avro wire format (``formats.notifications: avro``).

    ``payload`` travels as a JSON string (schemas/notification.v1.avsc): its shape
    differs per trigger.
    """
    from udfs.codecs import encode_avro

    payload = json.dumps(record["payload"], sort_keys=True, separators=(",", ":"))
    return encode_avro({**record, "payload": payload}, schema_id, resolver)
