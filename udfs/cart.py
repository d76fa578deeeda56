"""Cart and checkout abandonment: the pure rules behind ``cart_abandoned`` and
``checkout_abandoned``, with no Flink in sight.

``on_cart_event`` applies one event of a user's cart activity (``add_to_cart``,
``remove_from_cart``, ``checkout_started``, ``purchase``) and returns the deadline to
watch; ``advance_to`` lets event time pass it. ``apply_in_order`` runs a whole stream this
way: the reference for the rules below. Time is always passed in.

The job does not hand Python every cart event (see "Cart activity in sessions" below):
Flink SQL cuts each user's cart activity into sessions; Python folds one session at a
time (``fold_session``) and checks a deadline only when SQL says that nothing came before
it (``on_deadline``). Unit tests check that this gives the reference's firings whatever
the order in which the two kinds of rows arrive.

Rules (contract, "Triggers"):

* The cart is the per-product sum of ``add_to_cart`` minus ``remove_from_cart``
  quantities, never below 0 (removing more than is there, or a product that is not
  there, leaves 0); ``purchase`` empties it. ``quantity`` defaults to 1; a quantity below
  1 changes no count (the event still counts as cart activity). Each product keeps its
  last known unit price (the latest cart event for it that carried one).
* After an ``add_to_cart``/``remove_from_cart`` that leaves the cart non-empty,
  ``cart_abandoned`` is pending with deadline ``ts + cart_abandon_after``. A cart emptied
  by removals has nothing pending.
* After a ``checkout_started``, ``checkout_abandoned`` is pending instead, deadline
  ``ts + checkout_abandon_after``; it replaces any pending cart deadline, and no
  ``cart_abandoned`` follows it (the last cart activity is the checkout). It is pending
  even when the cart is empty (the contract does not require a non-empty cart; the
  firing then has ``items == []`` and ``cart_value == 0``).
* A ``purchase`` empties the cart and cancels whatever is pending.
* Each firing happens at most once per run of activity: firing clears the pending
  deadline, and only new cart activity arms one again.
* ``fired_at`` is the deadline itself: last cart activity ts + the timeout.

Boundary: the trigger needs "no cart activity for 30 min". An event at exactly
``ts == deadline`` comes when the full 30 min have already elapsed, so the pending
firing happens first (with the cart as it was), and then the event is applied. In
general, an event with ``ts >= deadline`` first fires the pending trigger. An event
before the deadline cancels or replaces it.

Ordering: apply events in non-decreasing ``ts``; events with equal ``ts`` are applied in
the order given. An event older than the last applied cart activity (which a
watermark-buffering adapter never delivers) is treated as happening at the last
activity's ts, so the state's clock never runs backwards.

Payload of both triggers: ``items`` (``[{"product_id", "quantity", "price"}]``, sorted by
``product_id``; ``price`` is ``None`` when never known), ``cart_value`` (sum of
quantity * price, unknown prices count 0, rounded half-up to 2 decimals), ``currency``
(the latest currency seen on the run's cart events, else ``rules.default_currency``) and
``last_activity_ts``.

    .venv/bin/python -m pytest tests/unit/test_cart.py -q
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

from udfs.notifications import Firing
from udfs.rules import CART_ABANDONED, CHECKOUT_ABANDONED, TriggerRules

ADD_TO_CART = "add_to_cart"
REMOVE_FROM_CART = "remove_from_cart"
CHECKOUT_STARTED = "checkout_started"
PURCHASE = "purchase"
CART_ACTIVITY = frozenset({ADD_TO_CART, REMOVE_FROM_CART, CHECKOUT_STARTED, PURCHASE})

# (product_id, quantity >= 1, last known unit price or None)
Item = tuple[str, int, float | None]


class CartEvent(NamedTuple):
    """One cart-activity event as the adapter hands it over (small and picklable)."""

    event_type: str
    ts: int
    product_id: str | None = None
    quantity: int | None = None
    price: float | None = None
    currency: str | None = None


@dataclass(frozen=True)
class CartState:
    """One user's cart and its pending abandonment deadline.

    ``items`` is sorted by product id and holds only quantities >= 1. ``pending`` is the
    trigger armed to fire at ``deadline`` (both ``None`` when nothing is pending).
    """

    user_id: str
    items: tuple[Item, ...] = ()
    currency: str | None = None
    last_activity_ts: int | None = None
    last_activity_type: str | None = None
    pending: str | None = None
    deadline: int | None = None

    @property
    def is_empty(self) -> bool:
        """True when the cart holds nothing."""
        return not self.items

    @property
    def is_clearable(self) -> bool:
        """True when dropping the state changes nothing observable (empty, nothing pending)."""
        return not self.items and self.deadline is None

    def cart_value(self) -> float:
        """Sum of quantity * price (unknown prices count 0), rounded half-up to 2 decimals."""
        total = sum((Decimal(str(price)) * quantity for _, quantity, price in self.items
                     if price is not None), Decimal(0))
        return float(total.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))

    def payload(self, rules: TriggerRules) -> dict[str, Any]:
        """The payload of a cart or checkout firing for the cart as it is now."""
        return {
            "items": [{"product_id": product_id, "quantity": quantity, "price": price}
                      for product_id, quantity, price in self.items],
            "cart_value": self.cart_value(),
            "currency": self.currency or rules.default_currency,
            "last_activity_ts": self.last_activity_ts,
        }

    def to_state(self) -> dict[str, Any]:
        """Primitives only, for a PyFlink ``ValueState``."""
        return {
            "user_id": self.user_id,
            "items": [list(item) for item in self.items],
            "currency": self.currency,
            "last_activity_ts": self.last_activity_ts,
            "last_activity_type": self.last_activity_type,
            "pending": self.pending,
            "deadline": self.deadline,
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> CartState:
        """Inverse of ``to_state``."""
        return cls(
            user_id=data["user_id"],
            items=tuple((str(p), int(q), None if pr is None else float(pr))
                        for p, q, pr in data.get("items", ())),
            currency=data.get("currency"),
            last_activity_ts=data.get("last_activity_ts"),
            last_activity_type=data.get("last_activity_type"),
            pending=data.get("pending"),
            deadline=data.get("deadline"),
        )


def on_cart_event(
    state: CartState,
    event_type: str,
    ts: int,
    product_id: str | None,
    quantity: int | None,
    price: float | None,
    currency: str | None,
    rules: TriggerRules,
) -> tuple[CartState, list[Firing], int | None]:
    """Apply one event; return ``(new_state, firings, deadline)``.

    ``firings`` holds the pending firing when ``ts >= deadline`` (it happens before the
    event is applied). ``deadline`` is the pending deadline after the event (register an
    event-time timer there), ``None`` when nothing is pending. An event that is not cart
    activity only advances time (it may fire the pending trigger, as above).
    """
    if state.last_activity_ts is not None and ts < state.last_activity_ts:
        ts = state.last_activity_ts
    state, fired = advance_to(state, ts, rules)
    if event_type not in CART_ACTIVITY:
        return state, fired, state.deadline

    items = {p: (q, pr) for p, q, pr in state.items}
    if event_type == PURCHASE:
        items = {}
    elif product_id is not None and event_type in (ADD_TO_CART, REMOVE_FROM_CART):
        delta = _quantity(quantity)
        held, known_price = items.get(product_id, (0, None))
        held = held + delta if event_type == ADD_TO_CART else max(0, held - delta)
        if held > 0:
            items[product_id] = (held, price if price is not None else known_price)
        else:
            items.pop(product_id, None)

    if event_type == CHECKOUT_STARTED:
        pending: str | None = CHECKOUT_ABANDONED
        deadline: int | None = ts + rules.checkout_abandon_after
    elif event_type != PURCHASE and items:
        pending, deadline = CART_ABANDONED, ts + rules.cart_abandon_after
    else:
        pending, deadline = None, None

    state = CartState(
        user_id=state.user_id,
        items=tuple((p, q, pr) for p, (q, pr) in sorted(items.items())),
        currency=None if event_type == PURCHASE else (currency or state.currency),
        last_activity_ts=ts,
        last_activity_type=event_type,
        pending=pending,
        deadline=deadline,
    )
    return state, fired, deadline


def on_timer(
    state: CartState, timer_ts: int, rules: TriggerRules
) -> tuple[CartState, list[Firing]]:
    """Event time reached ``timer_ts``, a deadline once watched (a timer, or SQL's deadline
    row): fire only if it is the pending deadline.

    Deadlines left over from earlier activity (the cart moved on since) are stale and
    ignored.
    """
    if state.deadline is None or timer_ts != state.deadline:
        return state, []
    return _fire(state, rules)


def advance_to(
    state: CartState, ts: int, rules: TriggerRules
) -> tuple[CartState, list[Firing]]:
    """Event time reached ``ts`` (e.g. a watermark): fire what is pending if ``deadline <= ts``."""
    if state.deadline is None or ts < state.deadline:
        return state, []
    return _fire(state, rules)


def apply_in_order(
    state: CartState,
    events: Iterable[CartEvent],
    rules: TriggerRules,
    until: int | None = None,
) -> tuple[CartState, list[Firing], int | None]:
    """Apply ``events`` sorted by ts (stable, so equal ts keep their order), then, when
    ``until`` is given, let event time reach it as a watermark would (see ``advance_to``).

    Returns ``(state, firings, deadline)`` like ``on_cart_event``; a reference for the
    adapter (which buffers events until the watermark passes them) and for tests.
    """
    fired: list[Firing] = []
    for event in sorted(events, key=lambda e: e.ts):
        state, new, _ = on_cart_event(state, event.event_type, event.ts, event.product_id,
                                      event.quantity, event.price, event.currency, rules)
        fired.extend(new)
    if until is not None:
        state, new = advance_to(state, until, rules)
        fired.extend(new)
    return state, fired, state.deadline


def _fire(state: CartState, rules: TriggerRules) -> tuple[CartState, list[Firing]]:
    assert state.pending is not None and state.deadline is not None
    firing = Firing(state.pending, state.user_id, state.deadline, state.payload(rules))
    return replace(state, pending=None, deadline=None), [firing]


def _quantity(quantity: int | None) -> int:
    if quantity is None:
        return 1
    return max(0, int(quantity))


# --- cart activity in sessions ---------------------------------------------------------
#
# Per-event state in Python costs a round trip to the JVM per cart event. The job instead
# lets Flink SQL cut each user's cart activity into sessions with two session windows:
#
# * the *fold* window, gap ``fold_gap`` (the shorter of the two timeouts), carries every
#   event of a session; Python folds them into the cart as soon as the row arrives
#   (``fold_session``). A deadline of the fold gap's length falls exactly on the
#   session's end and is fired there: nothing came in between, or the session would not
#   have ended.
# * the *deadline* window, gap ``deadline_window()[0]`` (the longer timeout), only exists
#   when the timeouts differ. It emits its sessions that end with the longer timeout's
#   trigger event (``deadline_window()[1]``): nothing happened from their last event until
#   the deadline. ``on_deadline`` fires the cart's deadline if it is that one.
#
# The two windows' rows reach Python in any order. That is safe: a fold session's events
# all come after every deadline still to be checked, and folding an event at or past the
# pending deadline fires that deadline first, with the cart as it was (``on_cart_event``),
# so a deadline row that comes later finds nothing left to fire. A deadline row that
# comes before the session it closes is checked again when event time reaches the
# deadline (every fold session ending by then has arrived by then, because the fold gap
# is the shorter one).
#
# Equal timestamps: the fold window lists a session's events in arrival order and
# ``fold_session`` sorts them stably by ts, like the OVER window the reference stands for.


def fold_gap(rules: TriggerRules) -> int:
    """The gap of the sessions Python folds: the shorter of the two timeouts."""
    return min(rules.cart_abandon_after, rules.checkout_abandon_after)


def deadline_window(rules: TriggerRules) -> tuple[int, tuple[str, ...]] | None:
    """The longer timeout and the event types whose deadline it is, or ``None`` when
    both timeouts are equal (the fold sessions then end on every deadline)."""
    if rules.cart_abandon_after > rules.checkout_abandon_after:
        return rules.cart_abandon_after, (ADD_TO_CART, REMOVE_FROM_CART)
    if rules.checkout_abandon_after > rules.cart_abandon_after:
        return rules.checkout_abandon_after, (CHECKOUT_STARTED,)
    return None


def fold_session(
    state: CartState, events: Iterable[CartEvent], rules: TriggerRules
) -> tuple[CartState, list[Firing]]:
    """Apply one fold session's events (any order; sorted stably by ts here), then let
    event time reach the session's end, last ts + ``fold_gap``."""
    state, fired, _ = apply_in_order(state, events, rules)
    if state.last_activity_ts is None:
        return state, fired
    state, due = advance_to(state, state.last_activity_ts + fold_gap(rules), rules)
    return state, fired + due


def on_deadline(
    state: CartState, last_ts: int, deadline: int, rules: TriggerRules
) -> tuple[CartState, list[Firing], bool]:
    """A deadline row: no cart activity from ``last_ts`` until ``deadline``. Returns
    ``(state, firings, check_later)``; ``check_later`` is true when the session that ends
    at ``last_ts`` has not been folded yet: call ``advance_to`` when event time reaches
    ``deadline``."""
    state, fired = on_timer(state, deadline, rules)
    if fired:
        return state, fired, False
    return state, [], state.last_activity_ts is None or state.last_activity_ts < last_ts
