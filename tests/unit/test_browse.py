"""Browse abandonment (udfs.browse): the session rule and the session tracker.

Timelines are in minutes after T0; ``v:A`` is a product_view in category A, ``cart`` an
add_to_cart, ``X`` a firing (at the session's last event + 30 min).
"""

from __future__ import annotations

import pickle
import random

from tests.unit.watermark import released_in_ts_order
from udfs.browse import (
    SessionSummary,
    SessionTracker,
    View,
    browse_firings,
    evaluate_browse,
    sessions,
)
from udfs.rules import TriggerRules

T0 = 1_764_380_400_000
RULES = TriggerRules()
BROWSE = "browse_abandoned"

Event = tuple[str, int, str | None, str | None]


def at(minutes: float) -> int:
    return T0 + round(minutes * 60_000)


def view(t: float, category: str | None, product: str = "p1") -> Event:
    return ("product_view", at(t), category, product)


def other(t: float, event_type: str = "page_view") -> Event:
    return (event_type, at(t), None, None)


def summary(views: list[View], has_add_to_cart: bool = False) -> SessionSummary:
    """A session that starts at its first view and ends at its last."""
    times = [v[0] for v in views]
    return SessionSummary("u1", min(times), max(times), has_add_to_cart, views)


def views_of(*spec: tuple[float, str | None, str]) -> list[View]:
    return [(at(t), c, p) for t, c, p in spec]


def fired(events: list[Event]) -> list[tuple[str, int]]:
    return [(f.trigger, f.fired_at) for f in browse_firings("u1", events, RULES)]


# v:A(p1) v:A(p2) v:A(p1)   page_view          X
#  0       2       4         10 -------------- 40
def test_three_views_in_one_category_fire_at_last_event_plus_gap() -> None:
    events = [view(0, "A", "p1"), view(2, "A", "p2"), view(4, "A", "p1"), other(10)]
    [firing] = browse_firings("u1", events, RULES)
    assert (firing.trigger, firing.fired_at) == (BROWSE, at(40))
    assert firing.payload == {"category": "A", "product_ids": ["p1", "p2"],
                              "session_start": at(0), "session_end": at(10)}


# v:A v:A                     (two views: nothing)
#  0   1 -------------------------->
def test_fewer_views_than_the_minimum_do_not_fire() -> None:
    assert fired([view(0, "A"), view(1, "A"), view(2, "B")]) == []


# v:A v:A v:A cart            (add_to_cart in the session: nothing)
#  0   1   2   3 ----------------->
def test_add_to_cart_in_the_session_blocks_browse() -> None:
    events = [view(0, "A"), view(1, "A"), view(2, "A"), other(3, "add_to_cart")]
    assert fired(events) == []
    assert evaluate_browse(summary(views_of((0, "A", "p"), (1, "A", "p"), (2, "A", "p")),
                                   has_add_to_cart=True), RULES) is None


# v:A v:B v:B v:A v:B v:A v:B          X category B (4 views beat A's 3)
#  0   1   2   3   4   5   6 --------- 36
def test_the_category_with_most_views_wins() -> None:
    events = [view(0, "A"), view(1, "B"), view(2, "B"), view(3, "A"), view(4, "B"),
              view(5, "A"), view(6, "B")]
    [firing] = browse_firings("u1", events, RULES)
    assert (firing.fired_at, firing.payload["category"]) == (at(36), "B")


# v:B v:A v:A v:B v:A v:B              X category B (3 each; B viewed first)
#  0   1   2   3   4   5 ------------- 35
def test_ties_go_to_the_category_viewed_first() -> None:
    events = [view(0, "B"), view(1, "A"), view(2, "A"), view(3, "B"), view(4, "A"),
              view(5, "B")]
    [firing] = browse_firings("u1", events, RULES)
    assert firing.payload["category"] == "B"


def test_views_are_ordered_by_ts_whatever_the_summary_order() -> None:
    views = views_of((5, "B", "b1"), (4, "A", "a1"), (3, "A", "a2"), (2, "A", "a1"),
                     (1, "B", "b2"), (0, "B", "b1"))
    firing = evaluate_browse(summary(views), RULES)
    assert firing is not None
    assert firing.payload["category"] == "B"  # first viewed at 0
    assert firing.payload["product_ids"] == ["b1", "b2"]


# v:- v:- v:- v:"" v:A v:A          (null / empty categories count for none)
#  0   1   2   3    4   5 ---------->
def test_views_without_category_do_not_count() -> None:
    events = [view(0, None), view(1, None), view(2, None), view(3, ""), view(4, "A"),
              view(5, "A")]
    assert fired(events) == []
    assert fired(events + [view(6, "A")]) == [(BROWSE, at(36))]


def test_at_most_ten_distinct_products_in_first_viewed_order() -> None:
    products = [f"p{i:02d}" for i in range(12)]
    views = views_of(*[(i, "A", p) for i, p in enumerate(products)], (13, "A", "p00"))
    firing = evaluate_browse(summary(views), RULES)
    assert firing is not None
    assert firing.payload["product_ids"] == products[:10]
    few = evaluate_browse(summary(views), RULES.replace(browse_max_products=2))
    assert few is not None and few.payload["product_ids"] == ["p00", "p01"]


# v:A v:A v:A  gap 30  v:A v:A v:A cart  gap  v:C v:C v:C  gap 30m-1ms  v:C
#  0   1   2 -------- 32  33  34  35 ------- 70  71  72 ------------- 101:59.999
#  session 1: X at 32  session 2: none      session 3 (4 views): X at 131:59.999
def test_session_gap_splits_sessions_at_exactly_the_gap() -> None:
    almost = at(72) + 30 * 60_000 - 1
    events = [view(0, "A"), view(1, "A"), view(2, "A"),
              view(32, "A"), view(33, "A"), view(34, "A"), other(35, "add_to_cart"),
              view(70, "C"), view(71, "C"), view(72, "C"), ("product_view", almost, "C", "p1")]
    found = sessions("u1", events, RULES)
    assert [(s.session_start, s.session_end) for s in found] == [
        (at(0), at(2)), (at(32), at(35)), (at(70), almost)]
    assert fired(events) == [(BROWSE, at(32)), (BROWSE, almost + 30 * 60_000)]


# v:A v:A v:A                 close(31:59.999): open     close(32): closed -> X at 32
#  0   1   2 ---------------------------------------------- 32
def test_tracker_closes_a_session_once_event_time_passes_the_gap() -> None:
    tracker = SessionTracker("u1", RULES)
    for event in [view(0, "A"), view(1, "A"), view(2, "A")]:
        assert tracker.on_event(*event) == []
    assert tracker.close(at(32) - 1) == []
    [closed] = tracker.close(at(32))
    assert closed == SessionSummary("u1", at(0), at(2), False, tuple(
        (at(t), "A", "p1") for t in (0, 1, 2)))
    firing = evaluate_browse(closed, RULES)
    assert firing is not None and firing.fired_at == at(32)
    assert tracker.close(at(100)) == [] and tracker.flush() == []
    assert tracker.session_start is None


def test_tracker_state_round_trips() -> None:
    tracker = SessionTracker("u1", RULES)
    for event in [view(0, "A", "p1"), other(1, "add_to_cart"), view(2, None, "p2")]:
        tracker.on_event(*event)
    data = pickle.loads(pickle.dumps(tracker.to_state()))
    restored = SessionTracker.from_state(data, RULES)
    assert restored.flush() == tracker.flush()


def test_an_older_event_joins_the_open_session() -> None:
    tracker = SessionTracker("u1", RULES)
    tracker.on_event(*view(10, "A"))
    assert tracker.on_event(*view(5, "A")) == []
    [closed] = tracker.flush()
    assert (closed.session_start, closed.session_end) == (at(10), at(10))


def test_shuffled_within_lateness_gives_the_same_firings_as_sorted() -> None:
    delay, total = 10_000, 0
    for seed in range(20):
        rng = random.Random(seed)
        events: list[Event] = []
        ts = T0
        for _ in range(80):
            ts += rng.choice([1_000, 4_000, 9_000, 5 * 60_000, 31 * 60_000]) + rng.randrange(500)
            kind = rng.choice(["product_view"] * 6 + ["page_view", "add_to_cart"])
            events.append((kind, ts, rng.choice(["A", "B", None]), rng.choice(["p1", "p2"])))
        expected = browse_firings("u1", events, RULES)
        total += len(expected)
        arrivals = sorted(events, key=lambda e: e[1] + rng.uniform(0, delay - 1))
        assert browse_firings("u1", sorted(arrivals, key=lambda e: e[1]), RULES) == expected
        assert browse_firings("u1", released_in_ts_order(arrivals, delay), RULES) == expected
    assert total > 20
