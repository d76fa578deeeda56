"""High intent (udfs.high_intent): search, then product_view, then add_to_cart within
10 min of the search, once per session.

Timelines are in minutes after T0; ``s:q`` is a search for q, ``v`` a product_view,
``c:p`` an add_to_cart of p, ``X`` a firing (at the add_to_cart).
"""

from __future__ import annotations

import pickle
import random

from tests.unit.watermark import released_in_ts_order
from udfs.high_intent import (
    HighIntentState,
    high_intent_firings,
    on_event,
    on_match,
)
from udfs.rules import TriggerRules

T0 = 1_764_380_400_000
RULES = TriggerRules()
HI = "high_intent"

Event = tuple[str, int, str | None, str | None]


def at(minutes: float) -> int:
    return T0 + round(minutes * 60_000)


def search(t: float, query: str = "shoes") -> Event:
    return ("search", at(t), query, None)


def view(t: float, product: str = "p1") -> Event:
    return ("product_view", at(t), None, product)


def cart(t: float, product: str = "p1") -> Event:
    return ("add_to_cart", at(t), None, product)


def page(t: float) -> Event:
    return ("page_view", at(t), None, None)


def fired(events: list[Event], rules: TriggerRules = RULES) -> list[tuple[str, int]]:
    return [(f.trigger, f.fired_at) for f in high_intent_firings("u1", events, rules)]


# s:shoes  page  v:p1  c:p2 X
#  0        1     2     5
def test_search_view_add_fires_at_the_add_to_cart() -> None:
    [firing] = high_intent_firings("u1", [search(0), page(1), view(2), cart(5, "p2")], RULES)
    assert (firing.trigger, firing.user_id, firing.fired_at) == (HI, "u1", at(5))
    assert firing.payload == {"query": "shoes", "product_id": "p2"}


# s  v  c at exactly 10:00 X        s  v  c at 10:00.001 (too slow)
#  0  3  10                          0  3  10 + 1 ms
def test_window_is_inclusive_of_ten_minutes() -> None:
    assert fired([search(0), view(3), cart(10)]) == [(HI, at(10))]
    slow: Event = ("add_to_cart", at(10) + 1, None, "p1")
    assert fired([search(0), view(3), slow]) == []


# s  v                  c (11 min after the search: too slow)
#  0  1 --------------- 11
def test_slower_than_ten_minutes_does_not_fire() -> None:
    assert fired([search(0), view(1), cart(11)]) == []


# v  s  c                (the view came before the search)
#  0  1  3
def test_view_before_search_does_not_count() -> None:
    assert fired([view(0), search(1), cart(3)]) == []


# s  c  v  c X           (the first add_to_cart had no view before it)
#  0  1  2  3
def test_add_to_cart_before_the_view_does_not_count() -> None:
    assert fired([search(0), cart(1), view(2), cart(3)]) == [(HI, at(3))]


# c  v  s                (wrong order altogether)
def test_reverse_order_does_not_fire() -> None:
    assert fired([cart(0), view(1), search(2)]) == []


# s:old  v  s:new  v  c X (15: 15 min after old, 7 after new: uses new)
#  0     1  8      9  15
def test_the_latest_search_with_a_view_after_it_is_used() -> None:
    events = [search(0, "old"), view(1), search(8, "new"), view(9), cart(15)]
    [firing] = high_intent_firings("u1", events, RULES)
    assert (firing.fired_at, firing.payload["query"]) == (at(15), "new")


# s:old  v  s:new  c X   (no view after "new": "old" is the search used)
#  0     1  2      5
def test_a_search_without_a_view_after_it_does_not_count() -> None:
    events = [search(0, "old"), view(1), search(2, "new"), cart(5)]
    [firing] = high_intent_firings("u1", events, RULES)
    assert firing.payload["query"] == "old"


# s  v  c X  s  v  c  (same session: once)    gap 30    s  v  c X (new session)
#  0  1  2   3  4  5 --------------------------------- 35 36 37
def test_at_most_once_per_session_and_again_in_a_new_session() -> None:
    first = [search(0), view(1), cart(2), search(3), view(4), cart(5)]
    assert fired(first) == [(HI, at(2))]
    again = [search(35), view(36), cart(37)]
    assert fired(first + again) == [(HI, at(2)), (HI, at(37))]


# s  v  c X  page every 20 min (session goes on)  s  v  c (same session: nothing)
#  0  1  2   22 42 62 ----------------------------- 70 71 72
def test_a_long_session_still_fires_once() -> None:
    events = [search(0), view(1), cart(2), page(22), page(42), page(62), search(70),
              view(71), cart(72)]
    assert fired(events) == [(HI, at(2))]


# with session_gap 5 min:  s  |gap 6|  v  c   (the search belongs to the previous session)
#                          0 -------- 6  7
def test_a_search_in_an_earlier_session_does_not_count() -> None:
    rules = RULES.replace(session_gap=5 * 60_000)
    assert fired([search(0), view(6), cart(7)], rules) == []
    assert fired([search(0), page(4), view(8), cart(9)], rules) == [(HI, at(9))]


def test_search_without_query_has_null_query() -> None:
    [firing] = high_intent_firings("u1", [("search", at(0), None, None), view(1), cart(2)],
                                   RULES)
    assert firing.payload == {"query": None, "product_id": "p1"}


# SQL path, each match with its session's start (session 0, then session 40):
#   match(s=0,c=2) X   match(s=3,c=5)   |   match(s=41,c=51+1ms) too slow   match(s=41,c=43) X
def test_matches_from_sql_fire_once_per_session() -> None:
    state = HighIntentState("u1")
    state, first = on_match(state, at(0), at(0), at(2), "shoes", "p1", RULES)
    state, second = on_match(state, at(0), at(3), at(5), "boots", "p2", RULES)
    state, slow = on_match(state, at(40), at(41), at(51) + 1, "hats", "p3", RULES)
    state, third = on_match(state, at(40), at(41), at(43), "hats", "p3", RULES)
    firings = [f for f in (first, second, slow, third) if f is not None]
    assert [(f.trigger, f.fired_at) for f in firings] == [(HI, at(2)), (HI, at(43))]
    assert third is not None and third.payload == {"query": "hats", "product_id": "p3"}
    assert state.session_start == at(40)


def test_a_match_from_an_older_session_does_not_reopen_it() -> None:
    state, first = on_match(HighIntentState("u1"), at(40), at(41), at(43), "q", "p", RULES)
    state, older = on_match(state, at(0), at(1), at(2), "q", "p", RULES)
    assert first is not None and older is None and state.session_start == at(40)


def test_state_round_trips() -> None:
    state = HighIntentState("u1")
    for event in [search(0, "q"), view(1), search(2, "r")]:
        state, _ = on_event(state, *event, RULES)
    data = pickle.loads(pickle.dumps(state.to_state()))
    assert HighIntentState.from_state(data) == state
    assert state.armed == (at(0), "q") and state.search == (at(2), "r")


def test_shuffled_within_lateness_gives_the_same_firings_as_sorted() -> None:
    delay, total = 10_000, 0
    for seed in range(20):
        rng = random.Random(seed)
        events: list[Event] = []
        ts = T0
        for _ in range(100):
            ts += rng.choice([1_000, 5_000, 9_000, 3 * 60_000, 31 * 60_000]) + rng.randrange(500)
            kind = rng.choice(["search", "product_view", "add_to_cart", "page_view"])
            events.append((kind, ts, rng.choice(["a", "b"]), rng.choice(["p1", "p2"])))
        expected = high_intent_firings("u1", events, RULES)
        total += len(expected)
        arrivals = sorted(events, key=lambda e: e[1] + rng.uniform(0, delay - 1))
        assert high_intent_firings("u1", sorted(arrivals, key=lambda e: e[1]), RULES) == expected
        assert high_intent_firings("u1", released_in_ts_order(arrivals, delay), RULES) == expected
    assert total > 20
