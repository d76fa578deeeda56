"""Cart and checkout abandonment (udfs.cart), in event time.

Timelines are in minutes after T0; ``X`` marks a firing. Expected firings are
``(trigger, fired_at)`` pairs.
"""

from __future__ import annotations

import heapq
import pickle
import random
from collections.abc import Iterable, Iterator

import pytest

from udfs.cart import (
    CartEvent,
    CartState,
    advance_to,
    apply_in_order,
    deadline_window,
    fold_gap,
    fold_session,
    on_cart_event,
    on_deadline,
    on_timer,
)
from udfs.notifications import Firing
from udfs.rules import TriggerRules

T0 = 1_764_380_400_000
RULES = TriggerRules()
CART = "cart_abandoned"
CHECKOUT = "checkout_abandoned"
FOREVER = T0 + 10 * 24 * 3_600_000


def at(minutes: float) -> int:
    return T0 + round(minutes * 60_000)


def add(t: float, product: str = "p1", qty: int | None = 1, price: float | None = None,
        currency: str | None = None) -> CartEvent:
    return CartEvent("add_to_cart", at(t), product, qty, price, currency)


def remove(t: float, product: str = "p1", qty: int | None = 1) -> CartEvent:
    return CartEvent("remove_from_cart", at(t), product, qty)


def checkout(t: float) -> CartEvent:
    return CartEvent("checkout_started", at(t))


def purchase(t: float) -> CartEvent:
    return CartEvent("purchase", at(t))


def fire_all(events: Iterable[CartEvent], until: int = FOREVER) -> list[Firing]:
    _, fired, _ = apply_in_order(CartState("u1"), events, RULES, until)
    return fired


def run(events: Iterable[CartEvent], until: int = FOREVER) -> list[tuple[str, int]]:
    return [(f.trigger, f.fired_at) for f in fire_all(events, until)]


def step(state: CartState, event: CartEvent) -> tuple[CartState, list[Firing], int | None]:
    return on_cart_event(state, event.event_type, event.ts, event.product_id, event.quantity,
                         event.price, event.currency, RULES)


# add p1        X cart_abandoned
#  0 ---------- 30 ----------> forever
def test_cart_abandoned_fires_30_min_after_last_activity() -> None:
    assert run([add(0)]) == [(CART, at(30))]


# add p1 ---- add p2                X
#  0           5 ----------------- 35
def test_fired_at_counts_from_the_last_cart_activity() -> None:
    assert run([add(0, "p1"), add(5, "p2")]) == [(CART, at(35))]


def test_payload_has_items_value_currency_and_last_activity() -> None:
    events = [add(0, "p2", 2, 19.99, "USD"), add(1, "p1", 1, 0.1), add(2, "p1", 2),
              add(3, "p3", 1, None)]
    [firing] = fire_all(events)
    assert firing.user_id == "u1"
    assert firing.payload == {
        "items": [
            {"product_id": "p1", "quantity": 3, "price": 0.1},  # price kept from first add
            {"product_id": "p2", "quantity": 2, "price": 19.99},
            {"product_id": "p3", "quantity": 1, "price": None},
        ],
        "cart_value": 40.28,  # 3 * 0.10 + 2 * 19.99, unknown price counts 0
        "currency": "USD",
        "last_activity_ts": at(3),
    }


def test_currency_defaults_and_latest_price_wins() -> None:
    [firing] = fire_all([add(0, "p1", 1, 5.0), add(1, "p1", 1, 4.5)])
    assert firing.payload["currency"] == "EUR"
    assert firing.payload["items"] == [{"product_id": "p1", "quantity": 2, "price": 4.5}]
    assert firing.payload["cart_value"] == 9.0


def test_quantity_defaults_to_one() -> None:
    [firing] = fire_all([add(0, "p1", None), add(1, "p1", None)])
    assert firing.payload["items"][0]["quantity"] == 2


# add p1 -- purchase                      (nothing)
#  0         10 ---------------------------------->
def test_purchase_empties_the_cart() -> None:
    state, fired, deadline = apply_in_order(CartState("u1"), [add(0), purchase(10)], RULES,
                                            FOREVER)
    assert fired == []
    assert deadline is None
    assert state.is_empty and state.is_clearable


# add p1 -- purchase -- add p2                X (items: p2 only)
#  0         10          20 ----------------- 50
def test_cart_after_purchase_starts_empty() -> None:
    [firing] = fire_all([add(0, "p1"), purchase(10), add(20, "p2")])
    assert (firing.trigger, firing.fired_at) == (CART, at(50))
    assert [i["product_id"] for i in firing.payload["items"]] == ["p2"]


# add p1 x2 -- remove p1 x1 -- remove p1 x3     (cart empty: nothing)
#  0            5               10 ----------------------------->
def test_removals_to_zero_do_not_fire() -> None:
    state, fired, deadline = apply_in_order(
        CartState("u1"), [add(0, "p1", 2), remove(5, "p1", 1), remove(10, "p1", 3)], RULES,
        FOREVER)
    assert fired == []
    assert deadline is None and state.items == ()


# add p1 -- remove p9 (not in cart)      X (p1 x1 still there)
#  0         5 ------------------------- 35
def test_removing_what_is_not_there_clamps_at_zero_and_is_activity() -> None:
    [firing] = fire_all([add(0, "p1"), remove(5, "p9", 4)])
    assert (firing.trigger, firing.fired_at) == (CART, at(35))
    assert firing.payload["items"] == [{"product_id": "p1", "quantity": 1, "price": None}]


# add p1 x3 -- remove p1 x1        X (p1 x2)
#  0            5 --------------- 35
def test_partial_removal_keeps_the_rest() -> None:
    [firing] = fire_all([add(0, "p1", 3), remove(5, "p1", 1)])
    assert firing.payload["items"][0]["quantity"] == 2


# add p1      X timer(30)  timer(30) again   add p2      X
#  0 ------- 30 ---------- 30 ---------- 100 -------- 130
def test_fires_once_per_run_and_rearms_after_new_activity() -> None:
    state, _, deadline = step(CartState("u1"), add(0))
    assert deadline == at(30)
    state, first = on_timer(state, at(30), RULES)
    state, again = on_timer(state, at(30), RULES)
    state, later = advance_to(state, at(99), RULES)
    state, _, deadline = step(state, add(100, "p2"))
    state, second = on_timer(state, deadline or 0, RULES)
    fired = [(f.trigger, f.fired_at) for f in first + again + later + second]
    assert fired == [(CART, at(30)), (CART, at(130))]


# add p1 -- add p2         timer(30): stale    timer(40): X
#  0          10 --------- 30 ---------------- 40
def test_stale_timers_are_ignored() -> None:
    state, _, d1 = step(CartState("u1"), add(0))
    state, _, d2 = step(state, add(10, "p2"))
    assert (d1, d2) == (at(30), at(40))
    state, stale = on_timer(state, at(30), RULES)
    state, fired = on_timer(state, at(40), RULES)
    assert stale == []
    assert [(f.trigger, f.fired_at) for f in fired] == [(CART, at(40))]
    assert on_timer(state, at(40), RULES)[1] == []
    assert on_timer(CartState("u1"), at(40), RULES)[1] == []


# add p1 -- checkout            X checkout_abandoned   (no cart_abandoned at 30)
#  0          10 -------------- 25 -------------------------------------->
def test_checkout_replaces_the_cart_timer() -> None:
    state, _, deadline = step(CartState("u1"), add(0))
    state, _, deadline = step(state, checkout(10))
    assert deadline == at(25)
    assert on_timer(state, at(30), RULES)[1] == []  # the cart timer is stale now
    assert run([add(0), checkout(10)]) == [(CHECKOUT, at(25))]


def test_checkout_payload_is_the_cart() -> None:
    [firing] = fire_all([add(0, "p1", 2, 10.0), checkout(10)])
    assert firing.payload == {
        "items": [{"product_id": "p1", "quantity": 2, "price": 10.0}],
        "cart_value": 20.0, "currency": "EUR", "last_activity_ts": at(10),
    }


# add p1 -- checkout -- purchase          (nothing)
#  0          10         20 ---------------------->
def test_purchase_after_checkout_cancels() -> None:
    assert run([add(0), checkout(10), purchase(20)]) == []


# add p1 -- checkout -- add p2             X cart_abandoned
#  0          10         20 -------------- 50
def test_other_cart_activity_after_checkout_rearms_the_cart_timer() -> None:
    assert run([add(0), checkout(10), add(20, "p2")]) == [(CART, at(50))]


# add p1 -- checkout -- remove p1 (cart empty)     (nothing)
#  0          10         20 ------------------------------->
def test_emptying_the_cart_after_checkout_cancels() -> None:
    assert run([add(0), checkout(10), remove(20)]) == []


# checkout (empty cart)      X checkout_abandoned, items []
#  0 ----------------------- 15
def test_checkout_with_an_empty_cart_still_fires() -> None:
    [firing] = fire_all([checkout(0)])
    assert (firing.trigger, firing.fired_at) == (CHECKOUT, at(15))
    assert firing.payload["items"] == [] and firing.payload["cart_value"] == 0.0


# checkout      X checkout_abandoned     (the cart never fires after it)
#  0 ---------- 15 ------------------------------------------------->
def test_abandoned_checkout_is_not_followed_by_cart_abandoned() -> None:
    assert run([add(0), checkout(0.5)]) == [(CHECKOUT, at(15.5))]


# add p1                X (p1 only)   add p2           X (p1, p2)
#  0 ------------------ 30 --------- 45 ------------- 75
#  (no timer ran: the add at 45 comes after the deadline and fires it first)
def test_event_after_the_deadline_fires_the_pending_firing_first() -> None:
    state, first, deadline = step(CartState("u1"), add(0, "p1"))
    state, fired, deadline = step(state, add(45, "p2"))
    assert [(f.trigger, f.fired_at) for f in fired] == [(CART, at(30))]
    assert [i["product_id"] for i in fired[0].payload["items"]] == ["p1"]
    assert deadline == at(75)
    assert run([add(0, "p1"), add(45, "p2")]) == [(CART, at(30)), (CART, at(75))]


# add p1 -- checkout             purchase at 25 (== deadline): too late
#  0          10 --------------- 25 X
def test_purchase_exactly_at_the_checkout_deadline_comes_too_late() -> None:
    assert run([add(0), checkout(10), purchase(25)]) == [(CHECKOUT, at(25))]


# add p1                add p2 at exactly 30: fires first      X
#  0 ------------------ 30 X ------------------------------- 60
def test_activity_exactly_at_the_deadline_fires_first() -> None:
    [first, second] = fire_all([add(0, "p1"), add(30, "p2")])
    assert (first.trigger, first.fired_at) == (CART, at(30))
    assert [i["product_id"] for i in first.payload["items"]] == ["p1"]
    assert (second.trigger, second.fired_at) == (CART, at(60))


# add p1              add p2 one ms before the deadline: re-arms    X
#  0 --------------- 29:59.999 ------------------------------------ 59:59.999
def test_activity_one_ms_before_the_deadline_rearms() -> None:
    before = at(30) - 1
    events = [add(0, "p1"), CartEvent("add_to_cart", before, "p2", 1)]
    assert run(events) == [(CART, before + 30 * 60_000)]


# add p1           page_view (not cart activity) after the deadline
#  0 ------------- 30 X --- 40
def test_non_cart_events_only_advance_time() -> None:
    state, _, _ = step(CartState("u1"), add(0))
    state, fired, deadline = step(state, CartEvent("page_view", at(40)))
    assert [(f.trigger, f.fired_at) for f in fired] == [(CART, at(30))]
    assert deadline is None and state.last_activity_ts == at(0)
    state, _, _ = step(CartState("u1"), add(0))
    state2, fired, deadline = step(state, CartEvent("page_view", at(10)))
    assert fired == [] and deadline == at(30) and state2 == state


def test_an_older_event_does_not_move_the_clock_back() -> None:
    state, _, _ = step(CartState("u1"), add(10, "p1"))
    state, fired, deadline = step(state, add(5, "p2"))
    assert fired == [] and deadline == at(40) and state.last_activity_ts == at(10)


def test_state_round_trips_through_primitives_and_pickle() -> None:
    state, _, _ = apply_in_order(CartState("u1"), [add(0, "p1", 2, 3.5, "USD"), checkout(1)],
                                 RULES)
    data = pickle.loads(pickle.dumps(state.to_state()))
    assert CartState.from_state(data) == state
    assert pickle.loads(pickle.dumps(state)) == state


def watermark_replay(arrivals: list[CartEvent], delay: int) -> Iterator[tuple[str, int, object]]:
    """How the Flink adapter sees a stream: events buffered until the watermark
    (max ts seen - delay) passes them, then released in ts order; after each arrival the
    watermark itself (event-time timers up to it may fire)."""
    buffer: list[tuple[int, int, CartEvent]] = []
    watermark = -1
    for seq, event in enumerate(arrivals):
        assert event.ts > watermark, "late event: the shuffle went beyond the lateness"
        heapq.heappush(buffer, (event.ts, seq, event))
        watermark = max(watermark, event.ts - delay)
        while buffer and buffer[0][0] <= watermark:
            yield "event", buffer[0][0], heapq.heappop(buffer)[2]
        yield "watermark", watermark, None
    while buffer:
        yield "event", buffer[0][0], heapq.heappop(buffer)[2]
    yield "watermark", FOREVER, None


# seconds apart (reordered by the shuffle) up to well past both timeouts
GAPS_MS = [1_000, 3_000, 7_000, 60_000, 14 * 60_000, 16 * 60_000, 29 * 60_000, 31 * 60_000,
           45 * 60_000]


def random_cart_stream(rng: random.Random, n: int) -> list[CartEvent]:
    kinds = ["add_to_cart"] * 5 + ["remove_from_cart"] * 2 + ["checkout_started", "purchase"]
    events, ts = [], T0
    for _ in range(n):
        ts += rng.choice(GAPS_MS) + rng.randrange(1, 1000)
        kind = rng.choice(kinds)
        events.append(CartEvent(kind, ts, rng.choice(["p1", "p2", "p3"]), rng.randint(1, 3),
                                rng.choice([None, 1.25, 9.99])))
    return events


def test_shuffled_within_lateness_gives_the_same_firings_as_sorted() -> None:
    delay, reordered = 10_000, 0
    for seed in range(25):
        rng = random.Random(seed)
        ordered = random_cart_stream(rng, 60)
        expected = fire_all(ordered)
        # each event may arrive up to `delay` ms after its ts, i.e. out of order but
        # never behind the watermark
        arrivals = sorted(ordered, key=lambda e: e.ts + rng.uniform(0, delay - 1))
        reordered += arrivals != ordered
        assert fire_all(arrivals) == expected  # apply_in_order sorts
        state, fired = CartState("u1"), []
        for kind, ts, event in watermark_replay(arrivals, delay):
            if kind == "event":
                assert isinstance(event, CartEvent)
                state, new, _ = step(state, event)
            else:
                state, new = advance_to(state, ts, RULES)
            fired.extend(new)
        assert fired == expected, seed
    assert reordered > 20


# --- cart activity in sessions (what the job does: jobs/triggers.py, jobs/functions.py) --


def sql_sessions(events: list[CartEvent], gap: int) -> list[list[CartEvent]]:
    """A SQL session window over ts-sorted events, cut at a gap of at least `gap`."""
    sessions: list[list[CartEvent]] = []
    for event in events:
        if not sessions or event.ts - sessions[-1][-1].ts >= gap:
            sessions.append([])
        sessions[-1].append(event)
    return sessions


def session_firings(events: list[CartEvent], rules: TriggerRules,
                    rng: random.Random, rechecks: list[int]) -> list[Firing]:
    """What the trigger function does with the two windows' rows (jobs/functions.py),
    with the rows arriving in a random interleaving: each window's rows in order, the
    watermark passing a time only when both windows have emitted every row up to it.
    Fold rows list their events in a shuffled order (ties kept). Returns the firings in
    fired_at order (the function queues them for the gate by fired_at)."""
    ordered = sorted(events, key=lambda e: e.ts)
    folds = [(s[-1].ts + fold_gap(rules), _shuffled_keeping_ties(s, rng))
             for s in sql_sessions(ordered, fold_gap(rules))]
    deadlines: list[tuple[int, int]] = []  # (deadline, last ts)
    window = deadline_window(rules)
    if window is not None:
        timeout, armed = window
        deadlines = [(s[-1].ts + timeout, s[-1].ts) for s in sql_sessions(ordered, timeout)
                     if any(e.ts == s[-1].ts and e.event_type in armed for e in s)]
    state, fired, later = CartState("u1"), [], []
    i = j = 0
    while i < len(folds) or j < len(deadlines):
        if j == len(deadlines) or (i < len(folds) and rng.random() < 0.5):
            state, new = fold_session(state, folds[i][1], rules)
            i += 1
        else:
            state, new, check_later = on_deadline(state, deadlines[j][1], deadlines[j][0],
                                                  rules)
            if check_later:
                later.append(deadlines[j][0])
                rechecks.append(deadlines[j][0])
            j += 1
        fired.extend(new)
        watermark = min(folds[i][0] if i < len(folds) else FOREVER,
                        deadlines[j][0] if j < len(deadlines) else FOREVER) - 1
        for due in sorted(t for t in later if t <= watermark):
            state, new = advance_to(state, due, rules)
            fired.extend(new)
            later.remove(due)
    return sorted(fired, key=lambda f: f.fired_at)


def _shuffled_keeping_ties(session: list[CartEvent], rng: random.Random) -> list[CartEvent]:
    """The session's events in a random order in which equal-ts events keep theirs."""
    keyed = [(rng.random(), e.ts, i) for i, e in enumerate(session)]
    by_ts: dict[int, float] = {}
    for r, ts, _ in keyed:
        by_ts.setdefault(ts, r)
    order = sorted(range(len(session)), key=lambda i: (by_ts[session[i].ts], i))
    return [session[i] for i in order]


# gaps that land exactly on both timeouts and on either side of them, and equal ts
EXACT_GAPS_MS = [0, 1_000, 60_000, 14 * 60_000, 15 * 60_000, 16 * 60_000, 29 * 60_000,
                 30 * 60_000, 31 * 60_000, 45 * 60_000]


def exact_cart_stream(rng: random.Random, n: int) -> list[CartEvent]:
    kinds = ["add_to_cart"] * 5 + ["remove_from_cart"] * 2 + ["checkout_started", "purchase"]
    events, ts = [], T0
    for _ in range(n):
        ts += rng.choice(EXACT_GAPS_MS)
        events.append(CartEvent(rng.choice(kinds), ts, rng.choice(["p1", "p2"]),
                                rng.randint(1, 3), rng.choice([None, 2.5])))
    return events


@pytest.mark.parametrize("cart_after, checkout_after", [
    (30, 15),  # the defaults: the fold sessions end on checkout deadlines
    (15, 30),  # the other way round: the fold sessions end on cart deadlines
    (30, 30),  # equal: no deadline window
])
def test_sessions_and_deadline_rows_give_the_reference_firings(
        cart_after: int, checkout_after: int) -> None:
    rules = RULES.replace(cart_abandon_after=cart_after * 60_000,
                          checkout_abandon_after=checkout_after * 60_000)
    fired, rechecks = 0, []
    for seed in range(200):
        rng = random.Random(seed)
        events = exact_cart_stream(rng, 40) if seed % 2 else random_cart_stream(rng, 40)
        expected = apply_in_order(CartState("u1"), events, rules, FOREVER)[1]
        assert session_firings(events, rules, rng, rechecks) == expected, seed
        fired += len(expected)
    assert fired > 500  # the streams do fire, often
    # and deadline rows do overtake their session, unless there are none
    assert len(rechecks) > 50 or deadline_window(rules) is None


def test_fold_gap_and_deadline_window_follow_the_timeouts() -> None:
    assert fold_gap(RULES) == 15 * 60_000
    assert deadline_window(RULES) == (30 * 60_000, ("add_to_cart", "remove_from_cart"))
    swapped = RULES.replace(cart_abandon_after=10 * 60_000)
    assert fold_gap(swapped) == 10 * 60_000
    assert deadline_window(swapped) == (15 * 60_000, ("checkout_started",))
    assert deadline_window(RULES.replace(checkout_abandon_after=30 * 60_000)) is None


# add p1  c  (one fold session)  X checkout_abandoned at its end
#  0      1 ----------------- 16
def test_fold_session_fires_the_deadline_on_its_end() -> None:
    state, fired = fold_session(CartState("u1"), [checkout(1), add(0)], RULES)
    assert [(f.trigger, f.fired_at) for f in fired] == [(CHECKOUT, at(16))]
    assert fired[0].payload["items"] == [{"product_id": "p1", "quantity": 1, "price": None}]
    assert state.deadline is None
