"""jobs.generate: deterministic, realistic synthetic traffic; every valid record validates,
every malformed record is rejected for the reason of its class.

    .venv/bin/python -m pytest tests/unit/test_generate.py -q
"""

from __future__ import annotations

import base64
import json
from collections import Counter, defaultdict
from itertools import islice
from pathlib import Path

import pytest

from jobs.generate import (
    MALFORMED_KINDS,
    GeneratedRecord,
    dry_run_line,
    generate,
    generated_records,
    main,
    malformed,
    paced,
    records,
)
from udfs.codecs import LocalSchemas
from udfs.events import Event, EventRules, Rejection, decode_and_validate, validate

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
START = 1764380400000  # 2025-11-29T01:40:00Z
MIN = 60_000
RULES = EventRules()
EXPECTED_REASON = {  # malformed class -> DLQ reason (prefix for the schema id)
    "invalid_utf8": "invalid_utf8",
    "not_an_object": "not_an_object",
    "missing_user_id": "missing:user_id",
    "empty_user_id": "empty:user_id",
    "unknown_event_type": "unknown_event_type",
    "negative_price": "negative:price",
    "bad_ts": "bad_ts",
    "future_ts": "future_ts",
    "truncated_avro": "avro_truncated",
    "unknown_schema_id": "unknown_schema_id:",
}


@pytest.fixture(scope="module")
def local() -> LocalSchemas:
    return LocalSchemas(SCHEMAS)


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return list(islice(generate(7, 60, START), 6_000))


def by_user(events: list[dict]) -> dict[str, list[dict]]:
    users: dict[str, list[dict]] = defaultdict(list)
    for event in events:
        users[event["user_id"]].append(event)
    return users


def sessions(events: list[dict]) -> list[list[dict]]:
    out = []
    for user_events in by_user(events).values():
        current: list[dict] = []
        for event in user_events:
            if current and event["session_id"] != current[-1]["session_id"]:
                out.append(current)
                current = []
            current.append(event)
        out.append(current)
    return out


# -- determinism ------------------------------------------------------------------------


def test_same_seed_same_events(events):
    assert list(islice(generate(7, 60, START), 6_000)) == events


def test_a_shorter_run_is_a_prefix(events):
    assert list(islice(generate(7, 60, START), 500)) == events[:500]


def test_another_seed_other_events(events):
    assert list(islice(generate(8, 60, START), 6_000)) != events


def test_same_seed_same_records():
    def run() -> list[GeneratedRecord]:
        return list(islice(generated_records(3, 20, START, fmt="mixed",
                                             malformed_ratio=0.1), 1_000))
    assert run() == run()


def test_users_must_be_positive():
    with pytest.raises(ValueError):
        next(generate(1, 0, START))


# -- validity and shape --------------------------------------------------------------


def test_every_generated_event_is_valid(events):
    for event in events:
        assert isinstance(validate(event, event["ts"], RULES), Event), event


def test_event_ids_are_unique(events):
    assert len({e["event_id"] for e in events}) == len(events)


def test_stream_is_in_time_order_from_start(events):
    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps)
    assert stamps[0] >= START


def test_ts_strictly_increases_per_user(events):
    for user_events in by_user(events).values():
        stamps = [e["ts"] for e in user_events]
        assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))


def test_users_interleave(events):
    first = [e["user_id"] for e in events[:500]]
    switches = sum(a != b for a, b in zip(first, first[1:], strict=False))
    assert len(set(first)) >= 20
    assert switches >= 200


def test_gaps_below_30_min_within_and_above_between_sessions(events):
    within = between = 0
    for user_events in by_user(events).values():
        for a, b in zip(user_events, user_events[1:], strict=False):
            gap = b["ts"] - a["ts"]
            if a["session_id"] == b["session_id"]:
                assert gap < 30 * MIN
                within += 1
            else:
                assert gap > 30 * MIN
                between += 1
    assert within > 1_000 and between > 200


def test_users_return(events):
    returning = [u for u, evs in by_user(events).items()
                 if len({e["session_id"] for e in evs}) >= 3]
    assert len(returning) >= 30


def test_all_event_types_occur(events):
    counts = Counter(e["event_type"] for e in events)
    assert set(counts) == {"page_view", "product_view", "search", "add_to_cart",
                           "remove_from_cart", "checkout_started", "purchase"}
    assert counts["product_view"] > counts["add_to_cart"] > counts["purchase"] > 0


def test_purchase_total_is_the_value_of_the_cart(events):
    purchases = 0
    for user_events in by_user(events).values():
        cart: dict[str, list[float]] = {}
        for e in user_events:
            if e["event_type"] == "add_to_cart":
                line = cart.setdefault(e["product_id"], [0, 0.0])
                line[0] += e.get("quantity", 1)
                line[1] = e["price"]
            elif e["event_type"] == "remove_from_cart":
                cart[e["product_id"]][0] -= e.get("quantity", 1)
                assert cart[e["product_id"]][0] >= 0
            elif e["event_type"] == "purchase":
                expected = sum(q * p for q, p in cart.values())
                assert e["order_total"] == pytest.approx(expected, abs=0.005)
                assert e["order_total"] > 0
                cart = {}
                purchases += 1
    assert purchases > 20


def test_session_kinds_that_make_each_trigger_occur(events):
    kinds: Counter[str] = Counter()
    for session in sessions(events):
        types = [e["event_type"] for e in session]
        cart_types = [t for t in types if t in ("add_to_cart", "remove_from_cart",
                                                "checkout_started", "purchase")]
        if not cart_types:
            views = Counter(e["category"] for e in session if e["event_type"] == "product_view")
            if views and max(views.values()) >= 3:
                kinds["browse_abandon"] += 1
            elif len(session) <= 2:
                kinds["bounce"] += 1
        elif cart_types[-1] in ("add_to_cart", "remove_from_cart"):
            kinds["cart_abandon"] += 1
        elif cart_types[-1] == "checkout_started":
            kinds["checkout_abandon"] += 1
        if "search" in types:
            s = types.index("search")
            if "product_view" in types[s:]:
                v = s + types[s:].index("product_view")
                if "add_to_cart" in types[v:]:
                    a = v + types[v:].index("add_to_cart")
                    if session[a]["ts"] - session[s]["ts"] <= 10 * MIN:
                        kinds["high_intent"] += 1
    for kind in ("browse_abandon", "bounce", "cart_abandon", "checkout_abandon", "high_intent"):
        assert kinds[kind] >= 10, kinds


def test_some_users_send_consent_some_without_marketing(events):
    consents = {(e["user_id"], e["consent"]["marketing"]) for e in events if "consent" in e}
    assert any(marketing for _, marketing in consents)
    assert any(not marketing for _, marketing in consents)
    users_with_consent = {u for u, _ in consents}
    assert 0 < len(users_with_consent) < len(by_user(events))


# -- records ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "avro", "mixed"])
def test_records_decode_to_the_generated_events(fmt, local):
    recs = list(islice(generated_records(7, 60, START, fmt=fmt, iso_ratio=0.2), 2_000))
    for record, event in zip(recs, islice(generate(7, 60, START), 2_000), strict=True):
        assert record.malformed is None
        assert record.key == event["user_id"].encode()
        assert record.ts_ms == event["ts"]
        assert decode_and_validate(record.value, record.ts_ms, local, RULES) == validate(
            event, event["ts"], RULES)
    avro = sum(r.value[0] == 0 for r in recs)
    expected = {"json": (0, 0), "avro": (2_000, 2_000), "mixed": (800, 1_200)}[fmt]
    assert expected[0] <= avro <= expected[1]


def test_json_records_sometimes_state_ts_as_iso_with_offset():
    recs = list(islice(generated_records(7, 60, START, fmt="json", iso_ratio=0.2), 1_000))
    stamps = [json.loads(r.value)["ts"] for r in recs]
    iso = [s for s in stamps if isinstance(s, str)]
    assert 100 <= len(iso) <= 300
    assert any(s.endswith("Z") for s in iso) and any(s[-6] in "+-" for s in iso)


def test_records_is_the_key_value_view():
    assert list(islice(records(5, 10, START, fmt="mixed"), 300)) == [
        (r.key, r.value) for r in islice(generated_records(5, 10, START, fmt="mixed"), 300)]


def test_malformed_records_are_rejected_for_their_class_and_others_pass(local):
    recs = list(islice(generated_records(11, 40, START, fmt="mixed", malformed_ratio=0.2),
                       5_000))
    seen: Counter[str] = Counter()
    for record in recs:
        result = decode_and_validate(record.value, record.ts_ms, local, RULES)
        if record.malformed is None:
            assert isinstance(result, Event), (record, result)
        else:
            assert isinstance(result, Rejection), record
            assert result.reason.startswith(EXPECTED_REASON[record.malformed]), (record, result)
            seen[record.malformed] += 1
    assert set(seen) == set(MALFORMED_KINDS)
    valid = len(recs) - sum(seen.values())
    assert 0.15 * valid <= sum(seen.values()) <= 0.25 * valid


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_each_malformed_kind_on_many_events(kind, events, local):
    import random

    rng = random.Random(kind)
    for event in events[:300]:
        key, value = malformed(kind, event, rng, local)
        result = decode_and_validate(value, event["ts"], local, RULES)
        assert isinstance(result, Rejection)
        assert result.reason.startswith(EXPECTED_REASON[kind])
        if kind == "missing_user_id":
            assert key is None
        elif kind == "empty_user_id":
            assert key == b""
        else:
            assert key == event["user_id"].encode()


def test_unknown_malformed_kind_is_an_error(events, local):
    import random

    with pytest.raises(ValueError):
        malformed("nope", events[0], random.Random(1), local)


def test_no_malformed_records_by_default():
    assert all(r.malformed is None for r in islice(generated_records(1, 5, START), 500))


# -- command line pieces -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_paced_spaces_items_at_the_rate():
    clock = FakeClock()
    assert list(paced(range(5), 4.0, clock, clock.sleep)) == [0, 1, 2, 3, 4]
    assert clock.sleeps == [0.25, 0.25, 0.25, 0.25]


def test_paced_at_rate_0_never_sleeps():
    clock = FakeClock()
    assert list(paced(range(5), 0, clock, clock.sleep)) == [0, 1, 2, 3, 4]
    assert clock.sleeps == []


def test_dry_run_line_shows_json_as_text_and_avro_as_base64():
    line = json.loads(dry_run_line(GeneratedRecord(b"u1", b'{"a":1}', 5, None)))
    assert line == {"key": "u1", "value": '{"a":1}', "ts": 5}
    line = json.loads(dry_run_line(GeneratedRecord(None, b"\x00\x00\x00\x00\x01\x02", 6,
                                                   "truncated_avro")))
    assert line == {"key": None, "value_b64": base64.b64encode(b"\x00\x00\x00\x00\x01\x02")
                    .decode(), "ts": 6, "malformed": "truncated_avro"}
    line = json.loads(dry_run_line(GeneratedRecord(b"u1", b"{\xff}", 7, "invalid_utf8")))
    assert line["value_b64"] == base64.b64encode(b"{\xff}").decode()


def test_main_dry_run_prints_json_lines_and_a_summary(capsys):
    assert main(["--count", "40", "--dry-run", "--format", "mixed", "--malformed", "0.3",
                 "--seed", "2", "--start-ms", str(START)]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 40
    assert lines[0]["ts"] >= START
    assert "count=40 " in err and "events_per_s=" in err and "seconds=" in err
    assert f"malformed={sum('malformed' in line for line in lines)} " in err


def test_main_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        main(["--malformed", "2", "--dry-run"])


class FakeFuture:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def add_errback(self, callback):
        if self.error is not None:
            callback(self.error)
        return self


class FakeProducer:
    """Stands in for kafka.KafkaProducer: records what main() asks of it."""

    instances: list[FakeProducer] = []
    fail_every = 0

    def __init__(self, **config) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.timestamps: list[int | None] = []
        self.flushed = self.closed = False
        FakeProducer.instances.append(self)

    def send(self, topic, value=None, key=None, timestamp_ms=None):
        self.sent.append((topic, key, value))
        self.timestamps.append(timestamp_ms)
        failing = self.fail_every and len(self.sent) % self.fail_every == 0
        return FakeFuture(RuntimeError("broker said no") if failing else None)

    def flush(self) -> None:
        self.flushed = True

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_kafka(monkeypatch):
    import warnings

    with warnings.catch_warnings():  # kafka-python's own importlib.resources deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        import kafka

    FakeProducer.instances = []
    FakeProducer.fail_every = 0
    monkeypatch.setattr(kafka, "KafkaProducer", FakeProducer)
    return FakeProducer


def test_main_produces_keyed_records_with_acks_all(fake_kafka, capsys):
    argv = ["--count", "50", "--seed", "4", "--start-ms", str(START), "--topic", "t1",
            "--bootstrap", "h1:9092,h2:9092", "--format", "avro"]
    assert main(argv) == 0
    (producer,) = fake_kafka.instances
    assert producer.config["bootstrap_servers"] == ["h1:9092", "h2:9092"]
    assert producer.config["acks"] == "all"
    assert producer.config["linger_ms"] > 0
    expected = list(islice(records(4, 2, START, fmt="avro"), 50))  # users = count // 20
    assert producer.sent == [("t1", key, value) for key, value in expected]
    # the Kafka timestamp is the event's time
    stamped = list(islice(generated_records(4, 2, START, fmt="avro"), 50))
    assert producer.timestamps == [r.ts_ms for r in stamped]
    assert all(START <= ts < START + 86_400_000 for ts in producer.timestamps)
    assert producer.flushed and producer.closed
    out = capsys.readouterr().out
    assert out.startswith("count=50 ") and f"bytes={sum(len(v) for _, v in expected)} " in out


def test_main_reports_failed_sends(fake_kafka, capsys):
    fake_kafka.fail_every = 10
    assert main(["--count", "30", "--start-ms", str(START)]) == 1
    captured = capsys.readouterr()
    assert "failed=3 " in captured.out
    assert "broker said no" in captured.err
