"""High intent: the pure rule behind ``high_intent``, incremental over one user's events.

Rule (contract, "Triggers"): in one session, a ``search``, later a ``product_view``, later
an ``add_to_cart`` no more than ``high_intent_within`` (10 min) after the search, with
any other events in between. It fires at the ``add_to_cart`` (``fired_at`` = its ts), at
most once per session. Sessions are cut by ``session_gap`` exactly as in
``udfs.browse`` (a gap ``>= session_gap`` starts a new one; every event type counts).

Choices the contract leaves open:

* "Later" means later in the user's event order (ts, then arrival); equal ts in the
  order search, view, add_to_cart still matches.
* The window is inclusive: ``add_ts - search_ts <= high_intent_within`` fires.
* Several searches: the search used is the *latest search that has a product_view after
  it* (and before the add_to_cart). Any search with a view after it is a valid start,
  and the latest one leaves the widest remaining window, so this finds a match whenever
  one exists. A search after the last view does not count until a view follows it.
* Payload ``query`` is that search's query (``None`` if it had none); ``product_id`` is
  the ``add_to_cart``'s product (not the viewed one; they need not be equal).

Two ways in, sharing one ``HighIntentState``:

* ``on_event`` over every event of the user (the reference, and the tests), which cuts
  sessions itself;
* for a Flink SQL ``MATCH_RECOGNIZE`` that already found ``(search, view, add_to_cart)``
  candidates, each with the start of its session: ``on_match`` for each match, in ts
  order. Only the once-per-session rule is left for Python there.

    .venv/bin/python -m pytest tests/unit/test_high_intent.py -q
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from udfs.notifications import Firing
from udfs.rules import HIGH_INTENT, TriggerRules

SEARCH = "search"
PRODUCT_VIEW = "product_view"
ADD_TO_CART = "add_to_cart"

# (search ts, its query)
Search = tuple[int, str | None]


@dataclass(frozen=True)
class HighIntentState:
    """One user's high-intent progress within the current session.

    ``search`` is the latest search of the session; ``armed`` the latest search that a
    product_view has followed; ``fired`` whether high_intent already fired this session.
    """

    user_id: str
    last_ts: int | None = None
    session_start: int | None = None
    search: Search | None = None
    armed: Search | None = None
    fired: bool = False

    def to_state(self) -> dict[str, Any]:
        """Primitives only, for a PyFlink ``ValueState``."""
        return {"user_id": self.user_id, "last_ts": self.last_ts,
                "session_start": self.session_start,
                "search": None if self.search is None else list(self.search),
                "armed": None if self.armed is None else list(self.armed),
                "fired": self.fired}

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> HighIntentState:
        """Inverse of ``to_state``."""
        return cls(user_id=data["user_id"], last_ts=data.get("last_ts"),
                   session_start=data.get("session_start"),
                   search=_search(data.get("search")), armed=_search(data.get("armed")),
                   fired=bool(data.get("fired", False)))


def on_event(
    state: HighIntentState,
    event_type: str,
    ts: int,
    query: str | None,
    product_id: str | None,
    rules: TriggerRules,
) -> tuple[HighIntentState, Firing | None]:
    """Apply one event of the user (any type, in ts order); return the firing, if any.

    An event older than the previous one is taken as happening at the previous one's ts.
    """
    if state.last_ts is not None:
        ts = max(ts, state.last_ts)
    if state.last_ts is None or ts - state.last_ts >= rules.session_gap:
        state = on_session_start(state, ts)
    state = replace(state, last_ts=ts)
    if event_type == SEARCH:
        return replace(state, search=(ts, query)), None
    if event_type == PRODUCT_VIEW:
        return (replace(state, armed=state.search), None) if state.search else (state, None)
    if event_type == ADD_TO_CART and state.armed is not None:
        search_ts, search_query = state.armed
        return on_candidate(state, search_ts, ts, search_query, product_id, rules)
    return state, None


def on_session_start(state: HighIntentState, ts: int) -> HighIntentState:
    """A new session begins at ``ts``: forget searches and allow one firing again."""
    return replace(state, session_start=ts, search=None, armed=None, fired=False)


def on_candidate(
    state: HighIntentState,
    search_ts: int,
    add_ts: int,
    query: str | None,
    product_id: str | None,
    rules: TriggerRules,
) -> tuple[HighIntentState, Firing | None]:
    """A matched ``(search, product_view, add_to_cart)``: fire unless this session already
    fired or the add came more than ``high_intent_within`` after the search."""
    if state.fired or not 0 <= add_ts - search_ts <= rules.high_intent_within:
        return state, None
    firing = Firing(HIGH_INTENT, state.user_id, add_ts,
                    {"query": query, "product_id": product_id})
    return replace(state, fired=True), firing


def on_match(
    state: HighIntentState,
    session_start: int,
    search_ts: int,
    add_ts: int,
    query: str | None,
    product_id: str | None,
    rules: TriggerRules,
) -> tuple[HighIntentState, Firing | None]:
    """A match found in the session that began at ``session_start``: a later session
    than the state's starts afresh (``on_session_start``), then ``on_candidate``."""
    if state.session_start is None or session_start > state.session_start:
        state = on_session_start(state, session_start)
    return on_candidate(state, search_ts, add_ts, query, product_id, rules)


def high_intent_firings(
    user_id: str,
    events: Iterable[tuple[str, int, str | None, str | None]],
    rules: TriggerRules,
) -> list[Firing]:
    """Every firing over one user's ``(event_type, ts, query, product_id)`` events in ts order."""
    state = HighIntentState(user_id)
    fired: list[Firing] = []
    for event_type, ts, query, product_id in events:
        state, firing = on_event(state, event_type, ts, query, product_id, rules)
        if firing is not None:
            fired.append(firing)
    return fired


def _search(value: Any) -> Search | None:
    if value is None:
        return None
    ts, query = value
    return (int(ts), query)
