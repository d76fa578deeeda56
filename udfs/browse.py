"""Browse abandonment: the pure rule behind ``browse_abandoned``, plus a session tracker.

In the job, Flink SQL cuts each user's events into sessions (a session window with gap
``session_gap``) and hands Python one ``SessionSummary`` per finished session;
``evaluate_browse`` decides whether it fires. ``SessionTracker`` does the same cutting
incrementally over one user's sorted events: the reference the SQL version is checked
against, and the tool for tests.

Rules (contract, "Triggers"):

* Sessions are runs of a user's events whose gaps are below ``session_gap``: an event
  ``ts - last_ts >= session_gap`` after the previous one starts a new session. Every
  event type counts.
* A session fires when it has ``browse_min_views`` or more ``product_view`` events in one
  category (repeated views of one product count each time) and no ``add_to_cart``.
  Views without a category (``None`` or an empty string) count toward no category.
* With several such categories, the one with the most views wins; ties go to the
  category whose first view came first.
* ``fired_at = session_end + session_gap``, where ``session_end`` is the ts of the
  session's last event (of any type).
* Payload: ``category``; ``product_ids``, the winner's distinct product ids in the order
  first viewed, at most ``browse_max_products`` (10); ``session_start`` (first event ts)
  and ``session_end`` (last event ts, *not* + gap: ``fired_at`` already carries that).

    .venv/bin/python -m pytest tests/unit/test_browse.py -q
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from udfs.notifications import Firing
from udfs.rules import BROWSE_ABANDONED, TriggerRules

PRODUCT_VIEW = "product_view"
ADD_TO_CART = "add_to_cart"

# (ts, category or None, product_id or None)
View = tuple[int, str | None, str | None]


@dataclass(frozen=True)
class SessionSummary:
    """One finished session of one user, as the SQL session window summarises it.

    ``session_end`` is the ts of the last event. ``views`` are the session's
    ``product_view`` events in any order (they are sorted by ts when evaluated).
    """

    user_id: str
    session_start: int
    session_end: int
    has_add_to_cart: bool
    views: Sequence[View] = field(default_factory=tuple)


def evaluate_browse(summary: SessionSummary, rules: TriggerRules) -> Firing | None:
    """The ``browse_abandoned`` firing of a finished session, or ``None``."""
    if summary.has_add_to_cart:
        return None
    counts: dict[str, int] = {}
    first_seen: dict[str, int] = {}  # category -> rank of its first view
    products: dict[str, list[str]] = {}
    ordered = sorted(enumerate(summary.views), key=lambda iv: (iv[1][0], iv[0]))
    for rank, (_, (_, category, product_id)) in enumerate(ordered):
        if not category:
            continue
        counts[category] = counts.get(category, 0) + 1
        first_seen.setdefault(category, rank)
        seen = products.setdefault(category, [])
        if product_id is not None and product_id not in seen:
            seen.append(product_id)
    qualifying = [c for c, n in counts.items() if n >= rules.browse_min_views]
    if not qualifying:
        return None
    winner = min(qualifying, key=lambda c: (-counts[c], first_seen[c]))
    payload: dict[str, Any] = {
        "category": winner,
        "product_ids": products[winner][: rules.browse_max_products],
        "session_start": summary.session_start,
        "session_end": summary.session_end,
    }
    return Firing(BROWSE_ABANDONED, summary.user_id, summary.session_end + rules.session_gap,
                  payload)


class SessionTracker:
    """Cuts one user's events (in ts order) into sessions and returns the finished ones.

    ``on_event`` returns the session that the event's gap closed (if any);
    ``close(at_ts)`` returns the open session once event time ``at_ts`` proves it over
    (``at_ts >= last_ts + session_gap``); ``flush()`` closes it unconditionally (end of
    input). An event older than the previous one is taken as happening at the previous
    one's ts. The state is ``to_state()``/``from_state()`` primitives.
    """

    def __init__(self, user_id: str, rules: TriggerRules) -> None:
        self.user_id = user_id
        self.rules = rules
        self._start: int | None = None
        self._last: int = 0
        self._has_add_to_cart = False
        self._views: list[View] = []

    def on_event(self, event_type: str, ts: int, category: str | None = None,
                 product_id: str | None = None) -> list[SessionSummary]:
        """Add one event; return ``[closed_session]`` when it starts a new session, else ``[]``."""
        closed: list[SessionSummary] = []
        if self._start is not None:
            ts = max(ts, self._last)
            if ts - self._last >= self.rules.session_gap:
                closed = self.flush()
        if self._start is None:
            self._start = ts
        self._last = ts
        if event_type == ADD_TO_CART:
            self._has_add_to_cart = True
        elif event_type == PRODUCT_VIEW:
            self._views.append((ts, category, product_id))
        return closed

    def close(self, at_ts: int) -> list[SessionSummary]:
        """Event time reached ``at_ts``: return the open session if the gap has passed."""
        if self._start is not None and at_ts - self._last >= self.rules.session_gap:
            return self.flush()
        return []

    def flush(self) -> list[SessionSummary]:
        """Close the open session now, whatever the time (end of input)."""
        if self._start is None:
            return []
        summary = SessionSummary(self.user_id, self._start, self._last, self._has_add_to_cart,
                                 tuple(self._views))
        self._start, self._last, self._has_add_to_cart, self._views = None, 0, False, []
        return [summary]

    @property
    def session_start(self) -> int | None:
        """First ts of the open session, ``None`` when none is open."""
        return self._start

    def to_state(self) -> dict[str, Any]:
        """Primitives only, for keyed state."""
        return {"user_id": self.user_id, "start": self._start, "last": self._last,
                "has_add_to_cart": self._has_add_to_cart,
                "views": [list(v) for v in self._views]}

    @classmethod
    def from_state(cls, data: dict[str, Any], rules: TriggerRules) -> SessionTracker:
        """Inverse of ``to_state``."""
        tracker = cls(data["user_id"], rules)
        tracker._start = data["start"]
        tracker._last = data["last"]
        tracker._has_add_to_cart = bool(data["has_add_to_cart"])
        tracker._views = [(int(ts), c, p) for ts, c, p in data["views"]]
        return tracker


def sessions(user_id: str, events: Iterable[tuple[str, int, str | None, str | None]],
             rules: TriggerRules) -> list[SessionSummary]:
    """All sessions of one user's ``(event_type, ts, category, product_id)`` events in ts order."""
    tracker = SessionTracker(user_id, rules)
    out: list[SessionSummary] = []
    for event_type, ts, category, product_id in events:
        out.extend(tracker.on_event(event_type, ts, category, product_id))
    out.extend(tracker.flush())
    return out


def browse_firings(user_id: str, events: Iterable[tuple[str, int, str | None, str | None]],
                   rules: TriggerRules) -> list[Firing]:
    """Every ``browse_abandoned`` firing of one user's events in ts order (end of input
    closes the last session)."""
    firings = (evaluate_browse(s, rules) for s in sessions(user_id, events, rules))
    return [f for f in firings if f is not None]
