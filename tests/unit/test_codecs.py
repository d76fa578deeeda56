"""udfs.codecs: per-record detection of JSON vs Confluent-framed Avro, rejection reasons,
schema resolution (local files, a Schema Registry over HTTP), and encoding.

    .venv/bin/python -m pytest tests/unit/test_codecs.py -q
"""

from __future__ import annotations

import io
import json
import random
import urllib.error
from pathlib import Path

import fastavro
import pytest

from udfs.codecs import (
    LocalSchemas,
    RegistrySchemas,
    SchemaRegistryUnavailable,
    UnknownSchema,
    decode_value,
    encode_avro,
    encode_json,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EVENT_V1 = json.loads((SCHEMAS / "event.v1.avsc").read_text(encoding="utf-8"))
EVENT_V2 = json.loads((SCHEMAS / "event.v2.avsc").read_text(encoding="utf-8"))

HEADER_ID_1 = b"\x00\x00\x00\x00\x01"  # magic byte, schema id 1 big-endian
EVENT = {
    "event_id": "e1", "event_type": "add_to_cart", "user_id": "u42", "ts": 1764380400000,
    "product_id": "p1", "price": 19.5, "quantity": 2,
    "consent": {"personalization": True, "marketing": False},
}
EVENT_AS_READ = {  # what an Avro reader returns: every field, absent ones as None
    "event_id": "e1", "event_type": "add_to_cart", "user_id": "u42", "ts": 1764380400000,
    "session_id": None, "product_id": "p1", "category": None, "price": 19.5, "quantity": 2,
    "order_id": None, "order_total": None, "currency": None, "query": None, "device": None,
    "country": None, "referrer": None, "page_url": None,
    "consent": {"personalization": True, "marketing": False},
}


@pytest.fixture(scope="module")
def local() -> LocalSchemas:
    return LocalSchemas(SCHEMAS)


def avro_body(record: dict, schema: dict = EVENT_V1) -> bytes:
    """Avro binary written by fastavro directly, not by the code under test."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


# -- JSON ------------------------------------------------------------------------


def test_json_object_is_decoded(local):
    raw = b'{"event_id": "e1", "user_id": "u\xc3\xa9", "ts": 5, "price": 1.25}'
    assert decode_value(raw, local) == {"event_id": "e1", "user_id": "u\u00e9", "ts": 5,
                                        "price": 1.25}


def test_json_with_surrounding_whitespace_is_decoded(local):
    assert decode_value(b' \n{"a": 1}\n', local) == {"a": 1}


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object(raw, local):
    assert decode_value(raw, local) == "not_an_object"


@pytest.mark.parametrize("raw", [
    b"{", b'{"a": 1', b"{'a': 1}", b'{"a": 1} {"b": 2}', b"hello", b'{"a": NaN}',
    b'{"a": Infinity}', b'{"a": "\\ud800"}', b"\xef\xbb\xbf{}", b"\x01{}",
])
def test_invalid_json(raw, local):
    assert decode_value(raw, local) == "invalid_json"


@pytest.mark.parametrize("raw", [
    b'{"a": "\xff"}', b'{"a": "caf\xe9"}', b"\xc3", b'{"a": "\xed\xa0\x80"}',
    "{}".encode("utf-16"),
])
def test_invalid_utf8(raw, local):
    assert decode_value(raw, local) == "invalid_utf8"


@pytest.mark.parametrize("raw", [b"", None])
def test_empty_value(raw, local):
    assert decode_value(raw, local) == "empty_value"


# -- Avro --------------------------------------------------------------------------


def test_avro_in_wire_format_is_decoded(local):
    assert decode_value(HEADER_ID_1 + avro_body(EVENT), local) == EVENT_AS_READ


def test_avro_written_with_v2_is_decoded_with_its_own_schema(local):
    raw = b"\x00\x00\x00\x00\x02" + avro_body({**EVENT, "app_version": "1.2"}, EVENT_V2)
    assert decode_value(raw, local) == {**EVENT_AS_READ, "app_version": "1.2"}


def test_unknown_schema_id(local):
    assert decode_value(b"\x00\x00\x00\x00\x07" + avro_body(EVENT), local) == (
        "unknown_schema_id:7")
    assert decode_value(b"\x00\x01\x00\x00\x00" + avro_body(EVENT), local) == (
        "unknown_schema_id:16777216")


def test_every_truncation_of_an_avro_record_is_rejected(local):
    raw = HEADER_ID_1 + avro_body(EVENT)
    reasons = {decode_value(raw[:cut], local) for cut in range(1, len(raw))}
    assert reasons == {"avro_truncated"}


@pytest.mark.parametrize("raw", [b"\x00", b"\x00\x00", b"\x00\x00\x00\x00"])
def test_a_nul_byte_too_short_for_the_avro_header(raw, local):
    # No JSON text starts with NUL: a short value starting with 0x00 is a cut-off header.
    assert decode_value(raw, local) == "avro_truncated"


def test_avro_with_trailing_bytes(local):
    assert decode_value(HEADER_ID_1 + avro_body(EVENT) + b"\x00", local) == (
        "avro_trailing_bytes")


def test_avro_body_that_does_not_fit_the_schema(local):
    # event_id "e1", event_type "x", user_id "u", ts 1, then union index 9 (no such branch)
    body = b"\x04e1" + b"\x02x" + b"\x02u" + b"\x02" + b"\x12" + b"\x00" * 20
    assert decode_value(HEADER_ID_1 + body, local) == "avro_invalid"


def test_avro_string_that_is_not_utf8(local):
    body = b"\x04\xff\xfe" + avro_body(EVENT)[3:]  # event_id "e1" -> two invalid bytes
    assert decode_value(HEADER_ID_1 + body, local) == "avro_invalid"


def test_avro_schema_that_is_not_a_record(tmp_path):
    (tmp_path / "s.avsc").write_text('"string"')
    (tmp_path / "registry.json").write_text('{"5": "s.avsc"}')
    raw = b"\x00\x00\x00\x00\x05" + b"\x06abc"
    assert decode_value(raw, LocalSchemas(tmp_path)) == "not_an_object"


def test_random_bytes_never_raise(local):
    rng = random.Random(1234)
    valid = HEADER_ID_1 + avro_body(EVENT)
    for _ in range(3000):
        size = rng.randint(0, 80)
        raw = bytes(rng.getrandbits(8) for _ in range(size))
        assert isinstance(decode_value(raw, local), str | dict)
        assert isinstance(decode_value(HEADER_ID_1 + raw, local), str | dict)
        flipped = bytearray(valid)
        flipped[rng.randrange(5, len(valid))] = rng.getrandbits(8)
        assert isinstance(decode_value(bytes(flipped), local), str | dict)


# -- schema resolvers ------------------------------------------------------------------


def test_local_schemas_resolve_registered_ids(local):
    assert local.resolve(1)["name"] == "dev.nudge.Event"
    assert local.resolve(3)["name"] == "dev.nudge.Notification"


def test_local_schemas_unknown_id(local):
    with pytest.raises(UnknownSchema) as info:
        local.resolve(99)
    assert info.value.schema_id == 99
    assert not isinstance(info.value, SchemaRegistryUnavailable)


def test_local_schemas_fail_at_start_on_a_broken_file(tmp_path):
    (tmp_path / "bad.avsc").write_text('{"type": "no_such_type"}')
    (tmp_path / "registry.json").write_text('{"1": "bad.avsc"}')
    with pytest.raises(UnknownSchema):
        LocalSchemas(tmp_path)


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeRegistry:
    """Stands in for urllib.request.urlopen: answers from a dict of path -> (code, body)."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, float]] = []

    def __call__(self, request, timeout):
        self.calls.append((request.full_url, timeout))
        answer = self.answers[request.full_url]
        if isinstance(answer, Exception):
            raise answer
        code, body = answer
        if code != 200:
            raise urllib.error.HTTPError(request.full_url, code, "error", {}, io.BytesIO(body))
        return FakeResponse(body)


def registry_answer(schema: dict) -> bytes:
    return json.dumps({"schema": json.dumps(schema)}).encode()


def test_registry_fetches_once_and_caches():
    url = "http://registry:8081/schemas/ids/1"
    fake = FakeRegistry({url: (200, registry_answer(EVENT_V1))})
    registry = RegistrySchemas("http://registry:8081/", timeout=2.5, urlopen=fake)
    assert decode_value(HEADER_ID_1 + avro_body(EVENT), registry) == EVENT_AS_READ
    assert decode_value(HEADER_ID_1 + avro_body(EVENT), registry) == EVENT_AS_READ
    assert fake.calls == [(url, 2.5)]


def test_registry_404_is_an_unknown_id_and_is_remembered():
    url = "http://r/schemas/ids/7"
    fake = FakeRegistry({url: (404, b'{"error_code": 40403, "message": "Schema not found"}')})
    registry = RegistrySchemas("http://r", urlopen=fake)
    raw = b"\x00\x00\x00\x00\x07" + avro_body(EVENT)
    assert decode_value(raw, registry) == "unknown_schema_id:7"
    assert decode_value(raw, registry) == "unknown_schema_id:7"
    assert len(fake.calls) == 1


@pytest.mark.parametrize("failure", [
    (503, b"unavailable"),
    urllib.error.URLError("connection refused"),
    TimeoutError("timed out"),
])
def test_registry_outage_raises_instead_of_rejecting(failure):
    fake = FakeRegistry({"http://r/schemas/ids/1": failure})
    registry = RegistrySchemas("http://r", urlopen=fake)
    with pytest.raises(SchemaRegistryUnavailable):
        decode_value(HEADER_ID_1 + avro_body(EVENT), registry)
    with pytest.raises(UnknownSchema):  # the one type callers may catch
        registry.resolve(1)
    assert len(fake.calls) == 2  # an outage is not cached


@pytest.mark.parametrize("body", [
    b"not json", b'{"no_schema": 1}', b'{"schema": "{broken"}',
    b'{"schema": "syntax = \\"proto3\\";", "schemaType": "PROTOBUF"}',
])
def test_registry_answer_without_a_usable_avro_schema(body):
    registry = RegistrySchemas("http://r", urlopen=FakeRegistry(
        {"http://r/schemas/ids/1": (200, body)}))
    with pytest.raises(UnknownSchema) as info:
        registry.resolve(1)
    assert not isinstance(info.value, SchemaRegistryUnavailable)
    assert decode_value(HEADER_ID_1 + avro_body(EVENT), registry) == "unknown_schema_id:1"


# -- encoding ----------------------------------------------------------------------


def test_encode_avro_writes_the_confluent_wire_format(local):
    assert encode_avro(EVENT, 1, local) == HEADER_ID_1 + avro_body(EVENT)


def test_encode_avro_with_an_unknown_id_raises(local):
    with pytest.raises(UnknownSchema):
        encode_avro(EVENT, 42, local)


def test_encode_avro_then_decode_gives_the_record_back(local):
    assert decode_value(encode_avro(EVENT, 2, local), local) == {**EVENT_AS_READ,
                                                                 "app_version": None}


def test_encode_json_is_compact_utf8():
    assert encode_json({"a": 1, "b": "\u00e9", "c": [True, None], "d": 2.5}) == (
        b'{"a":1,"b":"\xc3\xa9","c":[true,null],"d":2.5}')
