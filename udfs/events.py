"""Validate and normalize input events (contract, "Event (schema version 1)").

`validate` turns a decoded object into an `Event` (typed, normalized: `ts` as integer
ms, `quantity` defaulting to 1, `currency` defaulting to the configured code) or a
`Rejection` whose `reason` is the DLQ `error` header. Bad input is data: nothing here
raises for it. `decode_and_validate` runs `udfs.codecs.decode_value` first, so one call
takes a record value from the `events` topic to an `Event` or a `Rejection`.

Rules are checked in this order and the first failure is the reason:

    not_an_object                        the value is not a JSON object / Avro record
    missing:<f> bad_type:<f> empty:<f>   event_id, event_type, user_id (in that order;
                                         an empty event_type is unknown_event_type)
    unknown_event_type                   event_type is not one of EVENT_TYPES
    too_long:user_id                     user_id longer than rules.max_user_id_len
    missing:ts bad_ts future_ts          ts absent; not integer ms (>= 0) nor an ISO-8601
                                         string with an offset; more than
                                         rules.max_future_ms after the Kafka timestamp
    missing:/bad_type:/empty:product_id  for product_view, add_to_cart, remove_from_cart
    missing:/bad_type:/empty:order_id    for purchase
    missing:order_total                  for purchase
    bad_type:<f> bad_value:<f>           optional fields: strings must be strings, numbers
    negative:price negative:order_total  int or float but not bool, and finite; quantity an
                                         integer in 1..2**31-1; currency three upper-case
                                         letters
    bad_type:consent                     consent not an object
    missing:/bad_type:consent.<flag>     personalization or marketing absent / not a bool

Choices where the contract is silent: a field whose value is null counts as absent
(Avro writes absent optional fields as null); unknown fields are ignored (newer
schema versions may add some); numbers that are integral floats (2.0) are accepted for
`ts` and `quantity`, since JSON does not distinguish them; a negative Kafka
timestamp (-1, "none") disables the future check.

    .venv/bin/python -m pytest tests/unit/test_validation.py -q
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from udfs.codecs import SchemaResolver, decode_value

__all__ = [
    "Consent",
    "DEFAULT_RULES",
    "EVENT_TYPES",
    "Event",
    "EventRules",
    "Invalid",
    "Rejection",
    "checked_ts",
    "decode_and_validate",
    "event_to_dict",
    "parse_ts",
    "required_str",
    "validate",
]

EVENT_TYPES = frozenset(
    {
        "page_view",
        "product_view",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "checkout_started",
        "purchase",
    }
)
NEEDS_PRODUCT = frozenset({"product_view", "add_to_cart", "remove_from_cart"})

MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last ISO-8601 instant
MAX_QUANTITY = 2**31 - 1  # Avro int
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_OPTIONAL_STRINGS = ("session_id", "category", "query", "device", "country", "referrer",
                     "page_url")


@dataclass(frozen=True, slots=True)
class EventRules:
    """Validation settings (the `events` section of the settings)."""

    max_future_ms: int = 86_400_000
    default_currency: str = "EUR"
    max_user_id_len: int = 128


DEFAULT_RULES = EventRules()


@dataclass(frozen=True, slots=True)
class Consent:
    """Consent stated with an event."""

    personalization: bool
    marketing: bool


@dataclass(frozen=True, slots=True)
class Event:
    """A valid event, normalized. Optional fields are None when absent."""

    event_id: str
    event_type: str
    user_id: str
    ts: int
    quantity: int = 1
    currency: str = "EUR"
    session_id: str | None = None
    product_id: str | None = None
    category: str | None = None
    price: float | None = None
    order_id: str | None = None
    order_total: float | None = None
    query: str | None = None
    device: str | None = None
    country: str | None = None
    referrer: str | None = None
    page_url: str | None = None
    consent: Consent | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record is not a valid event; `reason` goes to the DLQ `error` header."""

    reason: str


class Invalid(Exception):
    """Raised by the checks here (`required_str`, `checked_ts`, ...); `validate` and the
    privacy topic's `udfs.privacy.validate_request` turn it into a `Rejection`."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def parse_ts(value: object) -> int | None:
    """Return `value` as integer ms since the epoch, or None when it is not a valid ts.

    Accepts integer ms (or an integral float) in 0..MAX_TS_MS, and ISO-8601 strings
    that carry an offset (`Z` or `+hh:mm`); naive strings are ambiguous and refused.
    Sub-millisecond digits are truncated towards the past.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if not value.is_integer():  # also false for NaN and infinities
            return None
        ms = int(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            return None
        try:
            ms = (parsed - _EPOCH) // _ONE_MS
        except OverflowError:
            return None
    else:
        return None
    return ms if 0 <= ms <= MAX_TS_MS else None


def required_str(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise Invalid(f"missing:{name}")
    if not isinstance(value, str):
        raise Invalid(f"bad_type:{name}")
    if not value:
        raise Invalid(f"empty:{name}")
    return value


def checked_ts(obj: dict[str, Any], kafka_ts_ms: int | None, rules: EventRules) -> int:
    """The object's `ts` as integer ms: `missing:ts`, `bad_ts`, or `future_ts` when it is
    more than `rules.max_future_ms` after the Kafka timestamp (None or negative: no check)."""
    raw_ts = obj.get("ts")
    if raw_ts is None:
        raise Invalid("missing:ts")
    ts = parse_ts(raw_ts)
    if ts is None:
        raise Invalid("bad_ts")
    if kafka_ts_ms is not None and kafka_ts_ms >= 0 and ts > kafka_ts_ms + rules.max_future_ms:
        raise Invalid("future_ts")
    return ts


def _optional_str(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise Invalid(f"bad_type:{name}")
    return value


def _amount(obj: dict[str, Any], name: str) -> float | None:
    """A money amount: a finite number >= 0, or None when absent."""
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"bad_type:{name}")
    try:
        amount = float(value)
    except OverflowError:  # an int too large for a double
        raise Invalid(f"bad_value:{name}") from None
    if not math.isfinite(amount):
        raise Invalid(f"bad_value:{name}")
    if amount < 0:
        raise Invalid(f"negative:{name}")
    return amount


def _quantity(obj: dict[str, Any]) -> int:
    value = obj.get("quantity")
    if value is None:
        return 1
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid("bad_type:quantity")
    if not 1 <= value <= MAX_QUANTITY:
        raise Invalid("bad_value:quantity")
    return value


def _currency(obj: dict[str, Any], default: str) -> str:
    value = obj.get("currency")
    if value is None:
        return default
    if not isinstance(value, str):
        raise Invalid("bad_type:currency")
    if not (len(value) == 3 and value.isascii() and value.isalpha() and value.isupper()):
        raise Invalid("bad_value:currency")
    return value


def _consent(obj: dict[str, Any]) -> Consent | None:
    value = obj.get("consent")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Invalid("bad_type:consent")
    flags = []
    for name in ("personalization", "marketing"):
        flag = value.get(name)
        if flag is None:
            raise Invalid(f"missing:consent.{name}")
        if not isinstance(flag, bool):
            raise Invalid(f"bad_type:consent.{name}")
        flags.append(flag)
    return Consent(personalization=flags[0], marketing=flags[1])


def _validate(obj: object, kafka_ts_ms: int | None, rules: EventRules) -> Event:
    if not isinstance(obj, dict):
        raise Invalid("not_an_object")
    event_id = required_str(obj, "event_id")
    event_type = obj.get("event_type")
    if event_type is None:
        raise Invalid("missing:event_type")
    if not isinstance(event_type, str):
        raise Invalid("bad_type:event_type")
    user_id = required_str(obj, "user_id")
    if event_type not in EVENT_TYPES:
        raise Invalid("unknown_event_type")
    if len(user_id) > rules.max_user_id_len:
        raise Invalid("too_long:user_id")

    ts = checked_ts(obj, kafka_ts_ms, rules)

    if event_type in NEEDS_PRODUCT:
        product_id: str | None = required_str(obj, "product_id")
    else:
        product_id = _optional_str(obj, "product_id")
    if event_type == "purchase":
        order_id: str | None = required_str(obj, "order_id")
        if obj.get("order_total") is None:
            raise Invalid("missing:order_total")
    else:
        order_id = _optional_str(obj, "order_id")
    order_total = _amount(obj, "order_total")

    strings = {name: _optional_str(obj, name) for name in _OPTIONAL_STRINGS}
    return Event(
        event_id=event_id,
        event_type=event_type,
        user_id=user_id,
        ts=ts,
        quantity=_quantity(obj),
        currency=_currency(obj, rules.default_currency),
        product_id=product_id,
        price=_amount(obj, "price"),
        order_id=order_id,
        order_total=order_total,
        consent=_consent(obj),
        **strings,
    )


def validate(
    obj: object, kafka_ts_ms: int | None, rules: EventRules = DEFAULT_RULES
) -> Event | Rejection:
    """Check a decoded object against the contract; return an `Event` or a `Rejection`.

    `kafka_ts_ms` is the Kafka record timestamp, the reference for `future_ts`; None
    (or a negative value) skips that check.
    """
    try:
        return _validate(obj, kafka_ts_ms, rules)
    except Invalid as invalid:
        return Rejection(invalid.reason)


def decode_and_validate(
    raw: bytes | None,
    kafka_ts_ms: int | None,
    resolver: SchemaResolver,
    rules: EventRules = DEFAULT_RULES,
) -> Event | Rejection:
    """Decode a record value (JSON or Confluent Avro) and validate it."""
    decoded = decode_value(raw, resolver)
    if isinstance(decoded, str):
        return Rejection(decoded)
    return validate(decoded, kafka_ts_ms, rules)


# Contract order, so that re-encoded JSON reads like the contract's table.
_FIELD_ORDER = (
    "event_id", "event_type", "user_id", "ts", "session_id", "product_id", "category",
    "price", "quantity", "order_id", "order_total", "currency", "query", "device",
    "country", "referrer", "page_url", "consent",
)


def event_to_dict(event: Event) -> dict[str, Any]:
    """The event as a plain dict of its non-None fields, ready for `encode_json`/`encode_avro`.

    `consent` becomes a nested dict; `ts` stays integer ms.
    """
    out: dict[str, Any] = {}
    for name in _FIELD_ORDER:
        value = getattr(event, name)
        if value is None:
            continue
        if isinstance(value, Consent):
            value = {"personalization": value.personalization, "marketing": value.marketing}
        out[name] = value
    return out
