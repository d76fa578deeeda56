"""The source stage's decoder (JSON in SQL, jobs/json_decode.py; Avro and what SQL leaves
alone in Python) against the rules in udfs/events.py, on a local minicluster: for every
record of a corpus of good and bad JSON and Avro, the same accepted columns or the same
DLQ reason, and each record decided where jobs/json_decode.py says it is.

The corpus: every malformed class of the contract and every rule of udfs.events, the
cases the module docstring hands to Python, and 400 seeded random mutations of valid
events (deleted fields, fields of other types, odd strings and numbers, bytes cut or
flipped), all in one job.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from config.settings import load_settings
from jobs.source import EVENT_FIELDS, event_rules
from schemas import SCHEMA_DIR
from tests.unit.test_validation import TS, VALID, fastavro_wire, with_
from udfs.codecs import LocalSchemas
from udfs.events import Event, Rejection, decode_and_validate

SETTINGS = load_settings("local")
RULES = event_rules(SETTINGS)
RESOLVER = LocalSchemas(SCHEMA_DIR)

# test_validation's valid event of each type, with more of the optional fields
BASE = {**VALID,
        "add_to_cart": {**VALID["add_to_cart"], "currency": "USD",
                        "consent": {"personalization": True, "marketing": False}},
        "checkout_started": {**VALID["checkout_started"], "session_id": "s1"},
        "purchase": {**VALID["purchase"], "currency": "EUR"}}


def doc(kind: str = "add_to_cart", /, **changes: object) -> bytes:
    """BASE's event of type `kind` as JSON with `changes` (... deletes the field)."""
    extra = {k: v for k, v in BASE[kind].items() if VALID[kind].get(k) != v}
    obj = with_(kind, **{**extra, **changes})
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


GOOD = doc("product_view")
AVRO = fastavro_wire({"event_id": "a1", "event_type": "product_view", "user_id": "u1", "ts": TS,
             "product_id": "p1", "price": 9.99})
SQL, PY = "sql", "python"

# (value, where it is decided); the expected answer always comes from udfs.events.
CASES: list[tuple[bytes | None, str]] = [
    *((doc(kind), SQL) for kind in BASE),
    (doc("add_to_cart", quantity=..., currency=..., consent=...), SQL),  # the defaults
    (doc("search", query='say\n\\ \u00e9\u4e2d \U0001f600'), SQL),  # escapes
    (doc("search", query="}{"), PY),  # braces in a string look like an object
    (doc("search", query='say "hi"'), PY),  # an escaped quote: cut out of the text, misread
    (doc("page_view", page_url="https://x.test/a?b=1", device="ios", country="DE",
         referrer=""), SQL),
    (doc("purchase", order_total=0, price=-0.0), SQL),
    (doc("purchase", order_total=1e300), PY), (doc("purchase", order_total=1e99), SQL),
    (doc("purchase", order_total=12345678901234567890123), SQL),
    (doc("page_view", ts=0), SQL),
    (doc("page_view", ts=253_402_300_799_999, event_id="x" * 500), SQL),
    (GOOD + b"\n", SQL), (b" \t" + GOOD + b"\r\n ", SQL),
    (GOOD[:-1] + b',"extra":{"nested":[1,{"a":null}]},"n":null}', SQL),
    (GOOD[:-1] + b',"price":1.5e2}', SQL),  # a duplicate key: the last one counts...
    # contract malformed classes
    (None, SQL), (b"", SQL),
    (GOOD[:-1] + b',"note":"caf\xe9"}', PY),  # invalid_utf8
    (b"[" + GOOD + b"]", PY),  # not_an_object
    (b'"just a string"', PY), (b"42", PY), (b"null", PY),
    (b"{not json", PY), (GOOD[:-3], PY), (b"\xef\xbb\xbf" + GOOD, PY),
    (GOOD + b" junk", PY), (GOOD + GOOD, PY), (GOOD + b",{}", PY), (GOOD + b"}", PY),
    (GOOD[:-1] + b',"q":"\\ud800"}', PY), (GOOD[:-1] + b',"q":"\\ud83d\\ude00"}', PY),
    (GOOD[:-1] + b',"q":"\\u007d"} }', PY),
    (GOOD[:-1] + b',"big":1e400}', PY), (GOOD[:-1] + b',"big":1' + b"0" * 400 + b"}", PY),
    (b'{"a":' * 1100 + b"1" + b"}" * 1100, PY),
    (GOOD[:-1] + b',"x":NaN}', PY), (GOOD[:-1] + b',}', PY), (b"{'a':1}", PY),
    (GOOD.replace(b'"u42"', b'"u\\u0034\\u0032"'), SQL),
    (AVRO, PY), (AVRO[:-3], PY), (b"\x00" + (77).to_bytes(4, "big") + AVRO[5:], PY),
    (b"\x00\x01", PY),
    # rules of udfs.events, in their order
    *((doc(event_id=v), SQL) for v in (..., None, 5, True, [], "")),
    (doc(event_id={}), PY),  # an object among the fields: Python decides
    *((doc(event_type=v), SQL) for v in (..., 5, False, "", "wishlist_add", "PAGE_VIEW")),
    *((doc(user_id=v), SQL) for v in (..., 7.5, ["u"], "", "u" * 128, "u" * 257)),
    *((doc(user_id=v), SQL) for v in ("u" * 129, "\U0001f600" * 128, "\U0001f600" * 129)),
    (doc(event_type=5, user_id=...), SQL), (doc(event_id=..., user_id=...), SQL),
    *((doc(ts=v), SQL) for v in (..., -1, True, [TS], 253_402_300_800_000,
                                 10**19, 10**25, TS + 86_400_001, TS + 86_400_000)),
    *((doc(ts=v), PY) for v in ("2025-11-29T01:40:00Z", "2025-11-29T01:40:00", float(TS),
                                TS + 0.5, "", "soon")),
    *((doc(kind, product_id=v), SQL) for kind in ("product_view", "add_to_cart",
                                                  "remove_from_cart")
      for v in (..., 3, "")),
    *((doc(kind, product_id=v), SQL) for kind in ("page_view", "purchase")
      for v in (3, "", ...)),
    *((doc("purchase", **{f: v}), SQL) for f in ("order_id", "order_total")
      for v in (..., None, "", 1, True)),
    (doc("page_view", order_id=5), SQL), (doc("page_view", order_total="5"), SQL),
    *((doc(price=v), SQL) for v in ("9.99", True, -0.01, [1], 0)),
    (doc(ts={"ms": 1}), PY), (doc(price={"v": 1}), PY),
    *((doc(**{f: 5}), SQL) for f in ("session_id", "category", "query", "device", "country",
                                     "referrer", "page_url")),
    (doc(session_id=5, category=6, quantity="x"), SQL),
    *((doc(quantity=v), SQL) for v in ("2", True, 0, -1, 2**31 - 1, 2**31, 10**12, None)),
    *((doc(quantity=v), PY) for v in (2.0, 2.5)),
    *((doc(currency=v), SQL) for v in (5, "eur", "EURO", "EU", "\u00c9UR", "E1R", "")),
    *((doc(consent=v), SQL) for v in (True, "yes", [True],
                                      {"marketing": True, "personalization": False},
                                      {"personalization": False, "marketing": False})),
    # consent objects other than both flags as booleans: Python decides
    *((doc(consent=v), PY) for v in ({}, {"personalization": True},
                                     {"personalization": "yes", "marketing": True},
                                     {"personalization": True, "marketing": None},
                                     {"personalization": True, "marketing": 1},
                                     {"personalization": True, "marketing": True, "x": 1})),
]


def mutations(count: int, seed: int = 7) -> list[bytes]:
    """Seeded random damage to valid events: what the named cases may have missed."""
    rng = random.Random(seed)
    odd: list[Any] = [None, "", "x", " ", "0", 0, -1, 1.5, 2.0, True, False, [], {}, [1],
                      {"a": 1}, "\u00e9", "\\", '"', 2**40, -(2**40), 1e-7, "EUR",
                      "page_view", "2025-11-29T01:40:00+01:00", TS, TS * 10]
    out = []
    for _ in range(count):
        kind = rng.choice(sorted(BASE))
        obj = dict(BASE[kind])
        for _ in range(rng.randint(1, 3)):
            name = rng.choice([*obj, "quantity", "currency", "consent", "category", "ts"])
            if rng.random() < 0.25:
                obj.pop(name, None)
            else:
                obj[name] = rng.choice(odd)
        raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        if rng.random() < 0.15:  # damage the bytes themselves
            at = rng.randrange(len(raw))
            raw = raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1:]
        out.append(raw)
    return out


def expected(value: bytes | None, kafka_ms: int | None) -> tuple:
    result = decode_and_validate(value, kafka_ms, RESOLVER, RULES)
    if isinstance(result, Rejection):
        return (None,) * len(EVENT_FIELDS) + (result.reason,)
    assert isinstance(result, Event)
    consent = result.consent
    columns = {name: getattr(result, name) for name in EVENT_FIELDS
               if not name.startswith("consent_")}
    columns["consent_personalization"] = None if consent is None else consent.personalization
    columns["consent_marketing"] = None if consent is None else consent.marketing
    return tuple(columns[name] for name in EVENT_FIELDS) + (None,)


def decode_in_flink(records: list[tuple[bytes | None, int | None]],
                    ) -> tuple[list[tuple], list[int]]:
    from pyflink.common import Row
    from pyflink.datastream import DataStream
    from pyflink.table import DataTypes

    from jobs.runtime import create_environments
    from jobs.source import decode_events

    env, t_env = create_environments(SETTINGS)
    env.set_parallelism(1)  # one subtask, so that the collected order is the stage's order
    schema = DataTypes.ROW([
        DataTypes.FIELD("k", DataTypes.BYTES()), DataTypes.FIELD("v", DataTypes.BYTES()),
        DataTypes.FIELD("src_topic", DataTypes.STRING()),
        DataTypes.FIELD("src_partition", DataTypes.INT()),
        DataTypes.FIELD("src_offset", DataTypes.BIGINT()),
        DataTypes.FIELD("kafka_ms", DataTypes.BIGINT())])
    rows = [Row(bytearray(b"k"), None if value is None else bytearray(value), "events", 0,
                offset, kafka_ms)
            for offset, (value, kafka_ms) in enumerate(records)]
    t_env.create_temporary_view("raw_in", t_env.from_elements(rows, schema))
    merged, _ = decode_events(t_env, SETTINGS, "raw_in")
    t_env.create_temporary_view("decoded", t_env.from_data_stream(DataStream(merged)))
    names = ("src_offset", *EVENT_FIELDS, "error", "lane")
    decoded = t_env.sql_query(f"SELECT {', '.join(f'`{n}`' for n in names)} FROM decoded")
    at = {name: i for i, name in enumerate(names)}
    out: list[tuple] = [()] * len(records)
    order = []
    with decoded.execute().collect() as results:
        for row in results:
            order.append(row[at["src_offset"]])
            out[row[at["src_offset"]]] = (
                tuple(row[at[n]] for n in (*EVENT_FIELDS, "error")), row[at["lane"]])
    return out, order


@pytest.fixture(scope="module")
def decoded() -> dict[str, Any]:
    records = ([(value, TS) for value, _ in CASES] + [(m, TS) for m in mutations(400)]
               + [(GOOD, None), (GOOD, -1), (doc(ts=TS + 10 * 86_400_000), -1)])
    out, order = decode_in_flink(records)
    return {"records": records, "out": out, "order": order}


def test_every_record_gets_the_answer_of_udfs_events(decoded):
    wrong = []
    for (value, kafka_ms), (got, _) in zip(decoded["records"], decoded["out"], strict=True):
        want = expected(value, kafka_ms)
        if got != want:
            wrong.append(f"{value!r:.200} kafka_ms={kafka_ms}\n  want {want}\n  got  {got}")
    assert not wrong, f"{len(wrong)} records decoded differently:\n" + "\n".join(wrong[:20])


def test_each_case_is_decided_where_the_module_says(decoded):
    wrong = [f"{value!r:.120}: want {lane}, got {'python' if got == 'python' else 'sql'}"
             for (value, lane), (_, got) in zip(CASES, decoded["out"], strict=False)
             if (got == "python") != (lane == PY)]
    assert not wrong, "\n".join(wrong)


def test_the_corpus_covers_acceptance_and_rejection_in_both_lanes(decoded):
    seen = {(got[-1] is None, lane) for got, lane in decoded["out"]}
    assert seen == {(True, None), (False, None), (True, "python"), (False, "python")}
    in_sql = sum(lane is None for _, lane in decoded["out"])
    assert in_sql > 0.6 * len(decoded["out"])  # most of the random damage SQL decides


def test_rows_leave_the_stage_in_offset_order_whichever_lane_decoded_them(decoded):
    # Python's rows come back later than the SQL rows behind them; OffsetOrderMerge puts
    # them back in their places (watermarks and "the first of two equal event_ids" rely on it)
    assert decoded["order"] == list(range(len(decoded["records"])))
