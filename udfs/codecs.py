"""Decode and encode record values: JSON or Avro in the Confluent wire format.

The `events` topic carries both encodings side by side (see the contract), so the
format is detected per record: a value whose first byte is 0x00 is Avro framed as
Confluent does it (magic byte 0x00, 4-byte big-endian schema id, Avro binary);
anything else is read as a UTF-8 JSON document. No valid JSON text starts with a
NUL byte, so the detection is unambiguous.

Bad input is data, not an exception: `decode_value` returns the decoded object or
a short, stable, machine-greppable reason string (used as the DLQ `error` header):

    empty_value             the value is empty (or a tombstone)
    invalid_utf8            not UTF-8, so not JSON either
    invalid_json            UTF-8 but not one JSON document (NaN and Infinity included)
    not_an_object           valid JSON or Avro, but not an object/record
    avro_truncated          the Avro framing or body ends early
    avro_invalid            the Avro body does not match its writer schema
    avro_trailing_bytes     bytes left over after the record: wrong schema id
    unknown_schema_id:<id>  the schema id is not known to the resolver

Writer schemas come from a `SchemaResolver`: `LocalSchemas` reads the versioned
files in `schemas/` (their ids in `schemas/registry.json`), `RegistrySchemas` asks
a Confluent-compatible Schema Registry. A registry that cannot be reached is not
bad input: `decode_value` lets `SchemaRegistryUnavailable` propagate so that the
job fails and retries from its last checkpoint instead of dead-lettering good
records during an outage.

Try it:

    .venv/bin/python -c 'from udfs.codecs import LocalSchemas, decode_value
    print(decode_value(b"[1]", LocalSchemas("schemas")))'      # not_an_object
"""

from __future__ import annotations

import io
import json
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import fastavro
import orjson
from fastavro.types import Schema

__all__ = [
    "DecodeResult",
    "LocalSchemas",
    "MAGIC_BYTE",
    "RegistrySchemas",
    "SchemaRegistryUnavailable",
    "SchemaResolver",
    "UnknownSchema",
    "decode_json",
    "decode_value",
    "encode_avro",
    "encode_json",
]

MAGIC_BYTE = 0x00
_HEADER = struct.Struct(">bI")  # magic byte, schema id

DecodeResult = dict[str, Any] | str
"""A decoded object, or (a `str`) the reason it was rejected."""


class UnknownSchema(LookupError):
    """The schema id cannot be resolved to a usable Avro schema."""

    def __init__(self, schema_id: int, detail: str = "") -> None:
        self.schema_id = schema_id
        self.detail = detail
        super().__init__(f"unknown schema id {schema_id}" + (f": {detail}" if detail else ""))


class SchemaRegistryUnavailable(UnknownSchema):
    """The registry could not answer (network error, timeout, 5xx): a transient failure.

    A subclass of `UnknownSchema` so that callers that only care whether a schema
    was found can catch one type; `decode_value` re-raises it rather than reject.
    """


class SchemaResolver(Protocol):
    """Anything that maps a schema id to a parsed fastavro schema."""

    def resolve(self, schema_id: int) -> Schema:
        """Return the parsed schema for `schema_id`, or raise `UnknownSchema`."""
        ...


def _parse(schema_id: int, text: str | bytes) -> Schema:
    try:
        return fastavro.parse_schema(json.loads(text))
    except Exception as exc:  # any malformed schema text or definition
        raise UnknownSchema(schema_id, f"unparsable schema: {exc}") from exc


class LocalSchemas:
    """Schemas from a directory holding `registry.json` ({"<id>": "<file.avsc>"}).

    All schemas are parsed up front, so a broken file fails at start-up rather
    than on the first record that uses it.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        mapping = json.loads((self.directory / "registry.json").read_text(encoding="utf-8"))
        self.files: dict[int, str] = {int(k): v for k, v in mapping.items()}
        self._schemas: dict[int, Schema] = {
            schema_id: _parse(schema_id, (self.directory / name).read_bytes())
            for schema_id, name in self.files.items()
        }

    def resolve(self, schema_id: int) -> Schema:
        """Return the parsed schema registered under `schema_id`."""
        try:
            return self._schemas[schema_id]
        except KeyError:
            raise UnknownSchema(schema_id, f"not in {self.directory / 'registry.json'}") from None


UrlOpen = Callable[..., Any]


class RegistrySchemas:
    """Schemas from a Confluent-compatible Schema Registry, fetched once per id.

    `GET {url}/schemas/ids/{id}` answers `{"schema": "<schema as a JSON string>"}`.
    Found schemas are cached for the life of the object (ids are immutable in a
    registry); ids the registry does not know (404) are remembered too, up to
    `max_unknown` of them, so a stream of bad ids does not become a stream of
    HTTP calls. `urlopen` is injectable for tests.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        *,
        max_unknown: int = 1024,
        urlopen: UrlOpen = urllib.request.urlopen,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_unknown = max_unknown
        self._urlopen = urlopen
        self._schemas: dict[int, Schema] = {}
        self._unknown: set[int] = set()
        self._lock = threading.Lock()

    def resolve(self, schema_id: int) -> Schema:
        """Return the parsed schema for `schema_id`, asking the registry on a cache miss."""
        schema = self._schemas.get(schema_id)
        if schema is not None:
            return schema
        if schema_id in self._unknown:
            raise UnknownSchema(schema_id, "not found in registry (cached)")
        with self._lock:
            schema = self._schemas.get(schema_id)
            if schema is None:
                schema = self._fetch(schema_id)
                self._schemas[schema_id] = schema
            return schema

    def _fetch(self, schema_id: int) -> Schema:
        request = urllib.request.Request(
            f"{self.url}/schemas/ids/{schema_id}",
            headers={"Accept": "application/vnd.schemaregistry.v1+json, application/json"},
        )
        try:
            with self._urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                if len(self._unknown) >= self.max_unknown:
                    self._unknown.clear()
                self._unknown.add(schema_id)
                raise UnknownSchema(schema_id, "not found in registry") from exc
            raise SchemaRegistryUnavailable(schema_id, f"registry answered {exc.code}") from exc
        except (OSError, TimeoutError) as exc:  # URLError, connection refused, timeouts
            raise SchemaRegistryUnavailable(schema_id, f"registry unreachable: {exc}") from exc
        try:
            answer = json.loads(body)
            text = answer["schema"]
            schema_type = answer.get("schemaType", "AVRO")
        except (ValueError, TypeError, KeyError) as exc:
            raise UnknownSchema(schema_id, "registry answer has no schema") from exc
        if schema_type != "AVRO":
            raise UnknownSchema(schema_id, f"schema type {schema_type}, not AVRO")
        return _parse(schema_id, text)


def decode_value(raw: bytes | None, resolver: SchemaResolver) -> DecodeResult:
    """Decode one record value; return the object, or a rejection reason string.

    Never raises for bad input; only `SchemaRegistryUnavailable` escapes.
    """
    if not raw:
        return "empty_value"
    if raw[0] == MAGIC_BYTE:
        return _decode_avro(raw, resolver)
    return decode_json(raw)


# orjson rather than json.loads, measured on this project's machine: a 293-byte
# add_to_cart event decodes in 0.76 us with orjson.loads(bytes) against 3.3 us for
# json.loads(raw.decode()) (4.3x), and decoding runs once per input event. It is
# also stricter where strictness matters here: it rejects NaN/Infinity and lone
# surrogate escapes ("\ud800"), which json.loads accepts and which would later fail
# to re-encode as UTF-8 (Kafka keys, Redis keys). Difference to know: integers
# beyond 64 bits come back as floats (harmless: no field accepts such values).
def decode_json(raw: bytes) -> DecodeResult:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return "invalid_utf8"
        return "invalid_json"
    if not isinstance(obj, dict):
        return "not_an_object"
    return obj


def _decode_avro(raw: bytes, resolver: SchemaResolver) -> DecodeResult:
    if len(raw) < _HEADER.size:
        return "avro_truncated"
    _, schema_id = _HEADER.unpack_from(raw)
    try:
        schema = resolver.resolve(schema_id)
    except SchemaRegistryUnavailable:
        raise
    except UnknownSchema:
        return f"unknown_schema_id:{schema_id}"
    body_size = len(raw) - _HEADER.size
    body = io.BytesIO(memoryview(raw)[_HEADER.size :])
    try:
        obj = fastavro.schemaless_reader(body, schema, None)
    except EOFError:
        return "avro_truncated"
    except Exception:  # bad union index, invalid UTF-8 in a string, ...: bad input
        # fastavro raises IndexError, not EOFError, when data ends inside a varint;
        # failing with every byte consumed means the data ran out.
        return "avro_truncated" if body.tell() >= body_size else "avro_invalid"
    if body.tell() != body_size:
        return "avro_trailing_bytes"
    if not isinstance(obj, dict):
        return "not_an_object"
    return obj


def encode_avro(record: dict[str, Any], schema_id: int, resolver: SchemaResolver) -> bytes:
    """Encode `record` as Avro in the Confluent wire format under `schema_id`.

    Raises `UnknownSchema` for an unknown id and fastavro's errors for a record
    that does not fit the schema: encoding our own records is not input handling.
    """
    schema = resolver.resolve(schema_id)
    out = io.BytesIO()
    out.write(_HEADER.pack(MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def encode_json(record: dict[str, Any]) -> bytes:
    """Encode `record` as compact UTF-8 JSON (no spaces, non-ASCII kept as UTF-8)."""
    return orjson.dumps(record)
