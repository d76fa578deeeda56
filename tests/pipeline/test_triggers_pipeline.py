"""The trigger pipeline (everything after the source stage) on a local minicluster, at
parallelism 1 and 2, with out-of-order input: it must give the firings of the sorted
stream.

Timeline (minutes after T0; + add_to_cart, - remove, c checkout, $ purchase,
v product_view with category, s search, p page_view):

    a   +x        +y                      ──► cart_abandoned @ 10 + 30 = 40
        0         10
    b   +x  c          +y                 ──► checkout_abandoned @ 2 + 15 = 17, fired
        0   2          20                     before the later add (deadline passed);
                                              then cart_abandoned @ 20 + 30 = 50
    c   +x  -x                            ──► nothing (removed to zero)
    d   v(k) v(k) v(m) v(m) v(m) ..........  v(k) v(k) v(k)   (second session)
        0    1    2    3    4          60   61   62          ──► browse_abandoned m @ 34,
                                              browse_abandoned k @ 92 is capped (24 h)
    e   s  v  +x (12 min after s)         ──► no high_intent (too slow); cart_abandoned @ 42
        0  5  12
    f   s  v  +x   s  v  +x               ──► high_intent @ 3 only (once per session)
        0  2  3    5  6  7                    and cart_abandoned @ 37
    g   +x (consent marketing false) ..  p (consent true)  +y   ──► cart_abandoned @ 50 only
        0                                10                20
    h   +x $                              ──► nothing (purchase empties the cart)
        0  1
    i   +x   (erasure @ 5)   +y            ──► never x. i is a new user from 5 on, so
        0                    20                cart_abandoned @ 50 with y only — unless
                                               the bounded input let +y overtake the
                                               erasure (then it is erased too; see
                                               docs/privacy.md)
    j   +x   (consent marketing=false @ 5 on the privacy topic)   ──► nothing
        0
    k   +x          c                       ──► cart_abandoned @ 30 (the checkout comes
        0           30                          exactly at the deadline), then
                                                checkout_abandoned @ 45
    l   v(q) v(q) v(q)             p        ──► browse_abandoned q @ 32: a gap of exactly
        0    1    2                32           30 min ends the session
    m   s v +x  p  p  p  s  v  +y           ──► high_intent @ 2 only (one long session),
        0 1 2   22 42 62 70 71 72               cart_abandoned @ 32 (@ 102 capped)
    n   s v +x        s  v  +y              ──► high_intent @ 2 and @ 67 (a new session,
        0 1 2         65 66 67                  past the 1 h cooldown), cart_abandoned @ 32
    o   s v +x    p       s  v  +y          ──► high_intent @ 2 and @ 67: the second
        0 1 2     40      65 66 67              session begins with the page view, an
                                                event of no type the pattern names

The input is shuffled by up to 50 s of event time (within the allowed lateness).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from config.settings import load_settings
from jobs.source import EVENT_COLUMNS, EVENT_FIELDS, sql_interval

T0 = 1_767_225_600_000
M = 60_000


def e(user: str, minute: float, event_type: str, **fields: object) -> dict:
    return {"user_id": user, "ts": T0 + int(minute * M), "event_type": event_type, **fields}


def trace() -> list[dict]:
    no, yes = ({"consent_marketing": v, "consent_personalization": True}
               for v in (False, True))
    events = [
        e("a", 0, "add_to_cart", product_id="x", price=2.0),
        e("a", 10, "add_to_cart", product_id="y", price=3.0),
        e("b", 0, "add_to_cart", product_id="x", price=1.0),
        e("b", 2, "checkout_started"),
        e("b", 20, "add_to_cart", product_id="y", price=1.0),
        e("c", 0, "add_to_cart", product_id="x"),
        e("c", 1, "remove_from_cart", product_id="x"),
        *(e("d", m, "product_view", product_id=f"p{m}", category=c)
          for m, c in ((0, "k"), (1, "k"), (2, "m"), (3, "m"), (4, "m"),
                       (60, "k"), (61, "k"), (62, "k"))),
        e("e", 0, "search", query="lamp"),
        e("e", 5, "product_view", product_id="x", category="home"),
        e("e", 12, "add_to_cart", product_id="x"),
        e("f", 0, "search", query="tea"),
        e("f", 2, "product_view", product_id="x"),
        e("f", 3, "add_to_cart", product_id="x"),
        e("f", 5, "search", query="cups"),
        e("f", 6, "product_view", product_id="y"),
        e("f", 7, "add_to_cart", product_id="y"),
        e("g", 0, "add_to_cart", product_id="x", **no),
        e("g", 10, "page_view", **yes),
        e("g", 20, "add_to_cart", product_id="y"),
        e("h", 0, "add_to_cart", product_id="x"),
        e("h", 1, "purchase", order_id="o1", order_total=9.0),
        e("i", 0, "add_to_cart", product_id="x", price=7.0),
        e("i", 20, "add_to_cart", product_id="y", price=1.5),
        e("j", 0, "add_to_cart", product_id="x"),
        e("k", 0, "add_to_cart", product_id="x"),
        e("k", 30, "checkout_started"),
        *(e("l", m, "product_view", product_id="x", category="q") for m in (0, 1, 2)),
        e("l", 32, "page_view"),
        *(e(user, m, kind, **fields) for user, m, kind, fields in [
            *((u, 0, "search", {"query": "q"}) for u in "mn"),
            *((u, 1, "product_view", {"product_id": "x"}) for u in "mn"),
            *((u, 2, "add_to_cart", {"product_id": "x"}) for u in "mn"),
            *(("m", m, "page_view", {}) for m in (22, 42, 62)),
            ("m", 70, "search", {"query": "r"}), ("m", 71, "product_view", {"product_id": "y"}),
            ("m", 72, "add_to_cart", {"product_id": "y"}),
            ("n", 65, "search", {"query": "r"}), ("n", 66, "product_view", {"product_id": "y"}),
            ("n", 67, "add_to_cart", {"product_id": "y"}),
            ("o", 0, "search", {"query": "q"}), ("o", 1, "product_view", {"product_id": "x"}),
            ("o", 2, "add_to_cart", {"product_id": "x"}), ("o", 40, "page_view", {}),
            ("o", 65, "search", {"query": "r"}), ("o", 66, "product_view", {"product_id": "y"}),
            ("o", 67, "add_to_cart", {"product_id": "y"})]),
    ]
    for i, event in enumerate(events):
        event.setdefault("event_id", f"{event['user_id']}-{i}")
    events.sort(key=lambda ev: ev["ts"])
    rng = random.Random(3)
    jitter = [(ev["ts"] + rng.randint(-50_000, 50_000), i) for i, ev in enumerate(events)]
    return [events[i] for _, i in sorted(jitter)]


EXPECTED = sorted([
    ("cart_abandoned", "a", T0 + 40 * M),
    ("checkout_abandoned", "b", T0 + 17 * M),
    ("cart_abandoned", "b", T0 + 50 * M),
    ("browse_abandoned", "d", T0 + 34 * M),
    ("cart_abandoned", "e", T0 + 42 * M),
    ("high_intent", "f", T0 + 3 * M),
    ("cart_abandoned", "f", T0 + 37 * M),
    ("cart_abandoned", "g", T0 + 50 * M),
    ("cart_abandoned", "k", T0 + 30 * M),
    ("checkout_abandoned", "k", T0 + 45 * M),
    ("browse_abandoned", "l", T0 + 32 * M),
    ("high_intent", "m", T0 + 2 * M),
    ("cart_abandoned", "m", T0 + 32 * M),
    ("high_intent", "n", T0 + 2 * M),
    ("high_intent", "n", T0 + 67 * M),
    ("cart_abandoned", "n", T0 + 32 * M),
    ("high_intent", "o", T0 + 2 * M),
    ("high_intent", "o", T0 + 67 * M),
    ("cart_abandoned", "o", T0 + 32 * M),
])
PRIVACY = [
    {"type": "erasure", "user_id": "i", "ts": T0 + 5 * M},
    {"type": "consent", "user_id": "j", "ts": T0 + 5 * M, "marketing": False},
]


def build_pipeline(parallelism: int, events: list[dict]) -> tuple[Any, Any]:
    """The trigger pipeline over `events` and PRIVACY: (environment, notifications)."""
    from pyflink.common import Row, Types
    from pyflink.table import Schema

    from jobs.runtime import create_environments
    from jobs.triggers import detect_triggers

    settings = load_settings("local", {"NUDGE_FLINK__PARALLELISM": str(parallelism)})
    env, t_env = create_environments(settings)
    types = {"STRING": Types.STRING(), "BIGINT": Types.LONG(), "DOUBLE": Types.DOUBLE(),
             "INT": Types.INT(), "BOOLEAN": Types.BOOLEAN()}
    row_type = Types.ROW_NAMED(list(EVENT_FIELDS), [types[t] for _, t in EVENT_COLUMNS])
    defaults = {"quantity": 1, "currency": "EUR"}
    rows = [Row(*(ev.get(f, defaults.get(f)) for f in EVENT_FIELDS)) for ev in events]
    delay = settings.events.watermark_delay_ms + settings.events.allowed_lateness_ms
    table = t_env.from_data_stream(
        env.from_collection(rows, type_info=row_type),
        Schema.new_builder()
        .column_by_expression("rowtime", "TO_TIMESTAMP_LTZ(ts, 3)")
        .watermark("rowtime", f"rowtime - {sql_interval(delay)}")
        .build())
    t_env.create_temporary_view("events", table)
    privacy_type = Types.ROW_NAMED(
        ["type", "user_id", "ts", "personalization", "marketing"],
        [Types.STRING(), Types.STRING(), Types.LONG(), Types.BOOLEAN(), Types.BOOLEAN()])
    requests = [Row(r["type"], r["user_id"], r["ts"], r.get("personalization"),
                    r.get("marketing")) for r in PRIVACY]
    t_env.create_temporary_view("privacy", t_env.from_data_stream(
        env.from_collection(requests, type_info=privacy_type),
        Schema.new_builder()
        .column_by_expression("rowtime", "TO_TIMESTAMP_LTZ(ts, 3)")
        .watermark("rowtime", f"rowtime - {sql_interval(delay)}")
        .build()))
    return env, detect_triggers(t_env, settings)


def run_pipeline(parallelism: int, events: list[dict]) -> list[dict]:
    _, notifications = build_pipeline(parallelism, events)
    with notifications.execute_and_collect() as results:
        return [json.loads(bytes(row[1])) for row in results]


def test_no_python_operator_keys_the_signals() -> None:
    """The signals reach the trigger function keyed by a JVM map (jobs/key_by.py), not by
    PyFlink's Python key_by map, whose bundle each barrier would wait for."""
    env, notifications = build_pipeline(2, trace()[:5])
    notifications.sink_to(_discard())
    plan = json.loads(env.get_execution_plan())
    names = [node["type"] + ": " + node["contents"] for node in plan["nodes"]]
    assert any("signals: key by user_id" in n for n in names), names
    assert not any("_stream_key_by_map_operator" in n for n in names), names
    trigger_function = next(node for node in plan["nodes"]
                            if "triggers: cart, checkout" in node["contents"])
    key_map = next(node for node in plan["nodes"]
                   if "signals: key by user_id" in node["contents"])
    assert [edge["id"] for edge in trigger_function["predecessors"]] == [key_map["id"]]
    assert trigger_function["predecessors"][0]["ship_strategy"] == "HASH"


def _discard() -> Any:
    from pyflink.datastream.connectors import Sink
    from pyflink.java_gateway import get_gateway

    return Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2
                .DiscardingSink())


@pytest.mark.parametrize("parallelism", [1, 2])
def test_out_of_order_input_gives_the_firings_of_the_sorted_stream(parallelism: int) -> None:
    notifications = run_pipeline(parallelism, trace())
    got = sorted((n["trigger"], n["user_id"], n["fired_at"]) for n in notifications
                 if n["user_id"] != "i")
    assert got == EXPECTED
    erased = [n for n in notifications if n["user_id"] == "i"]
    assert [(n["trigger"], n["fired_at"]) for n in erased] in (
        [], [("cart_abandoned", T0 + 50 * M)])
    payloads = {(n["trigger"], n["user_id"]): n["payload"] for n in notifications}
    assert payloads[("browse_abandoned", "d")]["category"] == "m"
    assert payloads[("browse_abandoned", "d")]["product_ids"] == ["p2", "p3", "p4"]
    assert payloads[("high_intent", "f")] == {"query": "tea", "product_id": "x"}
    assert payloads[("cart_abandoned", "a")]["cart_value"] == 5.0
    for n in erased:
        assert n["payload"]["items"] == [{"product_id": "y", "quantity": 1, "price": 1.5}]
    assert payloads[("checkout_abandoned", "b")]["items"] == [
        {"product_id": "x", "quantity": 1, "price": 1.0}]
    assert payloads[("checkout_abandoned", "k")]["last_activity_ts"] == T0 + 30 * M
    assert payloads[("checkout_abandoned", "k")]["items"] == [
        {"product_id": "x", "quantity": 1, "price": None}]
    assert payloads[("browse_abandoned", "l")]["session_end"] == T0 + 2 * M
    assert sorted(n["payload"]["query"] for n in notifications
                  if n["user_id"] == "n" and n["trigger"] == "high_intent") == ["q", "r"]
