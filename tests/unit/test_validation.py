"""udfs.events: the contract's event rules, one test per rule, and the ten classes of
malformed records the generator mixes in, each with its DLQ reason.

    .venv/bin/python -m pytest tests/unit/test_validation.py -q
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest

from udfs.codecs import LocalSchemas, encode_avro, encode_json
from udfs.events import (
    Consent,
    Event,
    EventRules,
    Rejection,
    decode_and_validate,
    event_to_dict,
    parse_ts,
    validate,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
TS = 1764380400000  # 2025-11-29T01:40:00Z (checked with `date -u -d @1764380400`)
DAY = 86_400_000
RULES = EventRules()

VALID = {
    "page_view": {"event_id": "e1", "event_type": "page_view", "user_id": "u42", "ts": TS},
    "product_view": {"event_id": "e1", "event_type": "product_view", "user_id": "u42",
                     "ts": TS, "product_id": "p1", "category": "shoes", "price": 59.9},
    "search": {"event_id": "e1", "event_type": "search", "user_id": "u42", "ts": TS,
               "query": "red shoes"},
    "add_to_cart": {"event_id": "e1", "event_type": "add_to_cart", "user_id": "u42", "ts": TS,
                    "product_id": "p1", "price": 59.9, "quantity": 2, "currency": "EUR"},
    "remove_from_cart": {"event_id": "e1", "event_type": "remove_from_cart", "user_id": "u42",
                         "ts": TS, "product_id": "p1"},
    "checkout_started": {"event_id": "e1", "event_type": "checkout_started",
                         "user_id": "u42", "ts": TS},
    "purchase": {"event_id": "e1", "event_type": "purchase", "user_id": "u42", "ts": TS,
                 "order_id": "o1", "order_total": 119.8},
}


def with_(kind: str = "add_to_cart", /, **changes: object) -> dict:
    """A valid event of type `kind` with `changes`; a change to ... deletes the field."""
    obj = dict(VALID[kind])
    for name, value in changes.items():
        if value is ...:
            obj.pop(name, None)
        else:
            obj[name] = value
    return obj


def reason(obj: object, kafka_ts: int | None = TS, rules: EventRules = RULES) -> str | None:
    result = validate(obj, kafka_ts, rules)
    return result.reason if isinstance(result, Rejection) else None


# -- what is accepted -------------------------------------------------------------------


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_every_event_type_with_its_required_fields_is_valid(event_type):
    assert isinstance(validate(VALID[event_type], TS, RULES), Event)


def test_a_full_event_is_normalized():
    obj = {
        "event_id": "e9", "event_type": "add_to_cart", "user_id": "u42",
        "ts": "2025-11-29T02:40:00.123+01:00", "session_id": "s1", "product_id": "p1",
        "category": "shoes", "price": 60, "quantity": 3, "order_id": "o7", "order_total": 0,
        "currency": "USD", "query": "q", "device": "mobile", "country": "DE",
        "referrer": "newsletter", "page_url": "/p/p1",
        "consent": {"personalization": True, "marketing": False}, "unknown_field": [1],
    }
    assert validate(obj, TS, RULES) == Event(
        event_id="e9", event_type="add_to_cart", user_id="u42", ts=TS + 123, quantity=3,
        currency="USD", session_id="s1", product_id="p1", category="shoes", price=60.0,
        order_id="o7", order_total=0.0, query="q", device="mobile", country="DE",
        referrer="newsletter", page_url="/p/p1",
        consent=Consent(personalization=True, marketing=False))


def test_defaults_quantity_1_and_the_configured_currency():
    event = validate(with_("add_to_cart", quantity=..., currency=...), TS,
                     EventRules(default_currency="CHF"))
    assert (event.quantity, event.currency) == (1, "CHF")


def test_price_int_becomes_float():
    event = validate(with_(price=5), TS, RULES)
    assert event.price == 5.0 and type(event.price) is float


def test_null_optional_fields_count_as_absent():
    event = validate(with_(price=None, quantity=None, currency=None, consent=None,
                           category=None), TS, RULES)
    assert (event.price, event.quantity, event.currency, event.consent, event.category) == (
        None, 1, "EUR", None, None)


def test_event_is_frozen():
    event = validate(VALID["page_view"], TS, RULES)
    with pytest.raises(AttributeError):
        event.ts = 0


# -- required fields -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["event_id", "event_type", "user_id", "ts"])
@pytest.mark.parametrize("absent", [..., None], ids=["absent", "null"])
def test_always_required(name, absent):
    assert reason(with_("page_view", **{name: absent})) == f"missing:{name}"


@pytest.mark.parametrize("event_type", ["product_view", "add_to_cart", "remove_from_cart"])
def test_product_id_required_for_product_events(event_type):
    assert reason(with_(event_type, product_id=...)) == "missing:product_id"


@pytest.mark.parametrize("event_type", ["page_view", "search", "checkout_started", "purchase"])
def test_product_id_optional_elsewhere(event_type):
    assert reason(with_(event_type, product_id=...)) is None


@pytest.mark.parametrize("name", ["order_id", "order_total"])
def test_order_fields_required_for_purchase(name):
    assert reason(with_("purchase", **{name: ...})) == f"missing:{name}"


@pytest.mark.parametrize("name", ["event_id", "user_id"])
def test_empty_required_string(name):
    assert reason(with_(**{name: ""})) == f"empty:{name}"


@pytest.mark.parametrize(("event_type", "name"), [
    ("add_to_cart", "product_id"), ("purchase", "order_id")])
def test_empty_type_specific_string(event_type, name):
    assert reason(with_(event_type, **{name: ""})) == f"empty:{name}"


def test_first_failing_rule_wins():
    assert reason({"event_type": "nope", "ts": "bad"}) == "missing:event_id"
    assert reason(with_(user_id=..., event_type="nope")) == "missing:user_id"
    assert reason(with_(event_type="nope", ts="bad")) == "unknown_event_type"
    assert reason(with_(ts="bad", price=-1)) == "bad_ts"


# -- types ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "event_id", "event_type", "user_id", "session_id", "product_id", "category", "order_id",
    "query", "device", "country", "referrer", "page_url", "currency"])
@pytest.mark.parametrize("value", [42, True, ["x"], {"a": "b"}], ids=["int", "bool", "list",
                                                                      "dict"])
def test_strings_must_be_strings(name, value):
    assert reason(with_(**{name: value})) == f"bad_type:{name}"


@pytest.mark.parametrize("name", ["price", "order_total"])
@pytest.mark.parametrize("value", ["1.5", True, False, [1], {}])
def test_numbers_must_be_numbers_not_bools(name, value):
    assert reason(with_("purchase", **{name: value})) == f"bad_type:{name}"


@pytest.mark.parametrize("name", ["price", "order_total"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**400])
def test_numbers_must_be_finite(name, value):
    assert reason(with_("purchase", **{name: value})) == f"bad_value:{name}"


@pytest.mark.parametrize("value", [1.5, "2", True])
def test_quantity_must_be_an_integer(value):
    assert reason(with_(quantity=value)) == "bad_type:quantity"


def test_quantity_as_integral_float_is_accepted():
    assert validate(with_(quantity=2.0), TS, RULES).quantity == 2


# -- values -----------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["wishlist_add", "PAGE_VIEW", "page_view ", ""])
def test_unknown_event_type(event_type):
    assert reason(with_(event_type=event_type)) == "unknown_event_type"


def test_user_id_length_1_to_128():
    assert reason(with_(user_id="u")) is None
    assert reason(with_(user_id="x" * 128)) is None
    assert reason(with_(user_id="x" * 129)) == "too_long:user_id"
    assert reason(with_(user_id="x" * 11), rules=EventRules(max_user_id_len=10)) == (
        "too_long:user_id")


def test_user_id_length_counts_characters_not_bytes():
    assert reason(with_(user_id="\u00e9" * 128)) is None


@pytest.mark.parametrize("name", ["price", "order_total"])
def test_amounts_must_not_be_negative(name):
    assert reason(with_("purchase", **{name: -0.01})) == f"negative:{name}"
    assert reason(with_("purchase", **{name: 0})) is None


@pytest.mark.parametrize("value", [0, -1, 2**31])
def test_quantity_range(value):
    assert reason(with_(quantity=value)) == "bad_value:quantity"


def test_quantity_upper_bound_is_avro_int():
    assert reason(with_(quantity=2**31 - 1)) is None


@pytest.mark.parametrize("value", ["eur", "EU", "EURO", "E1R", "", "\u00c9UR"])
def test_currency_must_be_three_upper_case_letters(value):
    assert reason(with_(currency=value)) == "bad_value:currency"


# -- ts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (TS, TS),
    (float(TS), TS),
    ("2025-11-29T01:40:00Z", TS),
    ("2025-11-29T01:40:00.250Z", TS + 250),
    ("2025-11-29T01:40:00+00:00", TS),
    ("2025-11-29T02:40:00+01:00", TS),
    ("2025-11-28T20:40:00-05:00", TS),
    ("2025-11-29T01:40:00.999999Z", TS + 999),
    ("2025-11-29 01:40:00Z", TS),
    ("1970-01-01T00:00:00Z", 0),
])
def test_ts_forms_normalize_to_ms(value, expected):
    assert parse_ts(value) == expected
    assert validate(with_(ts=value), TS, RULES).ts == expected


@pytest.mark.parametrize("value", [
    "2025-11-29T01:40:00",  # naive: no offset
    "2025-11-29",
    "yesterday",
    "1764380400000",
    "",
    True,
    -1,
    TS + 0.5,
    float("nan"),
    253_402_300_800_000,  # year 10000
    [TS],
    {"ms": TS},
])
def test_bad_ts(value):
    assert reason(with_(ts=value)) == "bad_ts"


def test_ts_up_to_one_day_after_the_kafka_timestamp_is_accepted():
    assert reason(with_(ts=TS + DAY), kafka_ts=TS) is None


def test_ts_more_than_one_day_after_the_kafka_timestamp_is_rejected():
    assert reason(with_(ts=TS + DAY + 1), kafka_ts=TS) == "future_ts"


def test_ts_in_the_past_of_the_kafka_timestamp_is_accepted():
    assert reason(with_(ts=TS - 30 * DAY), kafka_ts=TS) is None


def test_future_limit_is_a_setting():
    rules = EventRules(max_future_ms=60_000)
    assert reason(with_(ts=TS + 60_001), kafka_ts=TS, rules=rules) == "future_ts"
    assert reason(with_(ts=TS + 60_000), kafka_ts=TS, rules=rules) is None


@pytest.mark.parametrize("kafka_ts", [None, -1])
def test_no_kafka_timestamp_skips_the_future_check(kafka_ts):
    assert reason(with_(ts=TS + 400 * DAY), kafka_ts=kafka_ts) is None


def test_iso_ts_is_checked_against_the_kafka_timestamp_too():
    assert reason(with_(ts="2025-11-30T01:40:00.001Z"), kafka_ts=TS) == "future_ts"


# -- consent ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, "yes", ["personalization"], 1])
def test_consent_must_be_an_object(value):
    assert reason(with_(consent=value)) == "bad_type:consent"


@pytest.mark.parametrize("flag", ["personalization", "marketing"])
def test_consent_flags_are_required(flag):
    consent = {"personalization": True, "marketing": True}
    del consent[flag]
    assert reason(with_(consent=consent)) == f"missing:consent.{flag}"


@pytest.mark.parametrize("flag", ["personalization", "marketing"])
@pytest.mark.parametrize("value", [1, 0, "true", "false"])
def test_consent_flags_must_be_bools(flag, value):
    consent = {"personalization": True, "marketing": True, flag: value}
    assert reason(with_(consent=consent)) == f"bad_type:consent.{flag}"


def test_consent_is_kept():
    event = validate(with_(consent={"personalization": False, "marketing": True}), TS, RULES)
    assert event.consent == Consent(personalization=False, marketing=True)


def test_not_an_object():
    for value in ([], "x", 1, None):
        assert reason(value) == "not_an_object"


# -- the ten malformed classes, from raw bytes -----------------------------------------------


@pytest.fixture(scope="module")
def local() -> LocalSchemas:
    return LocalSchemas(SCHEMAS)


def fastavro_wire(record: dict, schema_id: int = 1) -> bytes:
    schema = fastavro.parse_schema(
        json.loads((SCHEMAS / "event.v1.avsc").read_text(encoding="utf-8")))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return b"\x00" + schema_id.to_bytes(4, "big") + buf.getvalue()


GOOD_JSON = (b'{"event_id":"e1","event_type":"product_view","user_id":"u42",'
             b'"ts":1764380400000,"product_id":"p1","price":9.99}')
GOOD_RECORD = {"event_id": "e1", "event_type": "product_view", "user_id": "u42", "ts": TS,
               "product_id": "p1", "price": 9.99}

MALFORMED = {
    "invalid_utf8": (GOOD_JSON[:-1] + b',"note":"caf\xe9"}', "invalid_utf8"),
    "non_object_json": (b"[" + GOOD_JSON + b"]", "not_an_object"),
    "missing_user_id": (GOOD_JSON.replace(b'"user_id":"u42",', b""), "missing:user_id"),
    "empty_user_id": (GOOD_JSON.replace(b'"u42"', b'""'), "empty:user_id"),
    "unknown_event_type": (GOOD_JSON.replace(b"product_view", b"wishlist_add"),
                           "unknown_event_type"),
    "negative_price": (GOOD_JSON.replace(b"9.99", b"-9.99"), "negative:price"),
    "bad_ts": (GOOD_JSON.replace(b"1764380400000", b'"2025-11-29T01:40:00"'), "bad_ts"),
    "far_future_ts": (GOOD_JSON.replace(b"1764380400000", b"1798940400000"), "future_ts"),
    "truncated_avro": (fastavro_wire(GOOD_RECORD)[:-7], "avro_truncated"),
    "unknown_schema_id": (fastavro_wire(GOOD_RECORD, schema_id=77), "unknown_schema_id:77"),
}


def test_the_good_records_behind_the_malformed_ones_are_valid(local):
    for raw in (GOOD_JSON, fastavro_wire(GOOD_RECORD)):
        assert isinstance(decode_and_validate(raw, TS, local, RULES), Event)


@pytest.mark.parametrize(("raw", "expected"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_class_is_rejected_with_its_reason(raw, expected, local):
    assert decode_and_validate(raw, TS, local, RULES) == Rejection(expected)


# -- re-encoding ----------------------------------------------------------------------------


def test_event_to_dict_keeps_only_present_fields():
    event = Event(event_id="e1", event_type="purchase", user_id="u1", ts=TS, quantity=1,
                  currency="EUR", order_id="o1", order_total=10.0,
                  consent=Consent(personalization=True, marketing=False))
    assert event_to_dict(event) == {
        "event_id": "e1", "event_type": "purchase", "user_id": "u1", "ts": TS,
        "quantity": 1, "order_id": "o1", "order_total": 10.0, "currency": "EUR",
        "consent": {"personalization": True, "marketing": False}}


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_event_to_dict_roundtrips_through_json_and_avro(event_type, local):
    obj = with_(event_type, ts="2025-11-29T01:40:00Z",
                consent={"personalization": False, "marketing": False})
    event = validate(obj, TS, RULES)
    record = event_to_dict(event)
    assert decode_and_validate(encode_json(record), TS, local, RULES) == event
    assert decode_and_validate(encode_avro(record, 1, local), TS, local, RULES) == event
