"""Bad input never escapes as an exception: property-based fuzzing (hypothesis) of the
decoders and validators the source stage runs on every record.

Random bytes, random JSON values, valid events with fields dropped, retyped or added,
and Confluent-framed Avro with random bodies all come back as an `Event` or a
`Rejection` with one of the documented short reasons — never a raised exception, which
in the job would fail the task instead of dead-lettering the record.
"""

from __future__ import annotations

import json
import re
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import SCHEMA_DIR
from udfs.codecs import LocalSchemas, encode_avro
from udfs.events import Event, Rejection, decode_and_validate, event_to_dict, validate

RESOLVER = LocalSchemas(SCHEMA_DIR)
KAFKA_TS = 1_767_225_600_000
# The reasons udfs/events.py and udfs/codecs.py document; anything else is a bug.
REASON = re.compile(
    r"^(empty_value|invalid_utf8|invalid_json|not_an_object|unknown_event_type|bad_ts|"
    r"future_ts|avro_truncated|avro_invalid|avro_trailing_bytes|unknown_schema_id:\d+|"
    r"(missing|bad_type|empty|bad_value|negative|too_long):[a-z_.]+)$")

VALID = {"event_id": "e1", "event_type": "add_to_cart", "user_id": "u1",
         "ts": KAFKA_TS - 1000, "product_id": "p1", "category": "shoes", "price": 9.5,
         "quantity": 2, "currency": "EUR",
         "consent": {"personalization": True, "marketing": False}}

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                         st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def check(result: Event | Rejection) -> None:
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Rejection):
        assert REASON.match(result.reason), result.reason


@FUZZ
@given(raw=st.binary(max_size=300), kafka_ts=st.one_of(st.none(), st.integers(-1, 2**62)))
def test_random_bytes_are_rejected_with_a_reason(raw: bytes, kafka_ts: int | None) -> None:
    check(decode_and_validate(raw, kafka_ts, RESOLVER))


@FUZZ
@given(value=json_values)
def test_any_json_value_is_decoded_or_rejected(value: object) -> None:
    check(decode_and_validate(json.dumps(value).encode(), KAFKA_TS, RESOLVER))


@FUZZ
@given(drop=st.sets(st.sampled_from(sorted(VALID))),
       changes=st.dictionaries(st.sampled_from([*VALID, "extra", "ts", "order_total"]),
                               json_values, max_size=4),
       event_type=st.sampled_from(["page_view", "product_view", "search", "add_to_cart",
                                   "remove_from_cart", "checkout_started", "purchase",
                                   "refund", ""]))
def test_mutated_valid_events_never_raise_and_accepted_ones_round_trip(
        drop: set[str], changes: dict[str, object], event_type: str) -> None:
    event = {k: v for k, v in VALID.items() if k not in drop}
    event["event_type"] = event_type
    event.update(changes)
    result = decode_and_validate(json.dumps(event).encode(), KAFKA_TS, RESOLVER)
    check(result)
    if isinstance(result, Event):  # what was accepted is stable under re-validation
        assert validate(event_to_dict(result), KAFKA_TS) == result


@FUZZ
@given(body=st.binary(max_size=200), schema_id=st.sampled_from([1, 2, 3, 4, 7, 9999]))
def test_framed_avro_with_random_bodies_is_rejected_with_a_reason(body: bytes,
                                                                  schema_id: int) -> None:
    check(decode_and_validate(b"\x00" + struct.pack(">I", schema_id) + body, KAFKA_TS,
                              RESOLVER))


@FUZZ
@given(cut=st.integers(0, 400), flip=st.integers(0, 400), bit=st.integers(0, 7))
def test_truncated_or_bit_flipped_avro_events_never_raise(cut: int, flip: int,
                                                          bit: int) -> None:
    good = encode_avro({**VALID, "consent": VALID["consent"]}, 1, RESOLVER)
    assert isinstance(decode_and_validate(good, KAFKA_TS, RESOLVER), Event)
    damaged = bytearray(good[: max(1, len(good) - cut % len(good))])
    position = flip % len(damaged)
    damaged[position] ^= 1 << bit
    check(decode_and_validate(bytes(damaged), KAFKA_TS, RESOLVER))


# The privacy topic's decoder (udfs/privacy.py) runs on every privacy record.
PRIVACY_REASON = re.compile(
    r"^(empty_value|invalid_utf8|invalid_json|not_an_object|unknown_privacy_type|bad_ts|"
    r"future_ts|missing:consent|(missing|bad_type|empty|too_long):[a-z_]+)$")


def check_privacy(result: object) -> None:
    from udfs.privacy import PrivacyRequest

    assert isinstance(result, PrivacyRequest | Rejection)
    if isinstance(result, Rejection):
        assert PRIVACY_REASON.match(result.reason), result.reason


@FUZZ
@given(raw=st.binary(max_size=200), kafka_ts=st.one_of(st.none(), st.integers(-1, 2**62)))
def test_random_privacy_bytes_are_rejected_with_a_reason(raw: bytes,
                                                         kafka_ts: int | None) -> None:
    from udfs.privacy import decode_request

    check_privacy(decode_request(raw, kafka_ts))


@FUZZ
@given(base=st.sampled_from([
    {"type": "consent", "user_id": "u1", "ts": KAFKA_TS, "personalization": False,
     "marketing": True},
    {"type": "erasure", "user_id": "u1", "ts": KAFKA_TS}]),
    drop=st.sets(st.sampled_from(["type", "user_id", "ts", "personalization", "marketing"])),
    changes=st.dictionaries(st.sampled_from(["type", "user_id", "ts", "personalization",
                                             "marketing", "extra"]), json_values, max_size=3))
def test_mutated_privacy_requests_are_decoded_or_rejected(base: dict, drop: set,
                                                          changes: dict) -> None:
    from udfs.privacy import decode_request

    value = {k: v for k, v in base.items() if k not in drop} | changes
    check_privacy(decode_request(json.dumps(value).encode(), KAFKA_TS))
