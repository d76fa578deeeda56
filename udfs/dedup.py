"""Bounded memory of one user's recent event_ids, to process a repeated event once.

The contract says a repeated `event_id` for the same user is processed once. Keeping
every id forever is not an option in keyed state, so `RecentIds` remembers ids for a
limited stretch of event time (`horizon_ms`, measured back from the newest event ts it
has seen) and at most `max_ids` of them (the most recently recorded win). A duplicate
that arrives after its original fell out of either bound is processed again: the
bounds are the trade between state size and how late a producer retry may come.

Pure: time is the event ts passed in, never a clock. `to_state()` gives a list of
`(event_id, ts)` pairs, oldest recorded first, that `from_state()` restores, so the
object can live in a Flink `ValueState` (pickled) or a `ListState`.

    .venv/bin/python -m pytest tests/unit/test_dedup.py -q
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["RecentIds"]


class RecentIds:
    """The event_ids of one user seen within the horizon, bounded in count.

    `seen_before(event_id, ts)` answers whether the id is remembered and, if not,
    records it. Ids recorded with a ts more than `horizon_ms` before the newest ts
    seen are forgotten; beyond `max_ids`, the earliest recorded are forgotten.
    """

    __slots__ = ("max_ids", "horizon_ms", "_ids", "_newest", "_oldest")

    def __init__(
        self, max_ids: int = 1000, horizon_ms: int = 3_600_000,
        items: Iterable[tuple[str, int]] = (),
    ) -> None:
        if max_ids < 1:
            raise ValueError("max_ids must be at least 1")
        if horizon_ms < 0:
            raise ValueError("horizon_ms must not be negative")
        self.max_ids = max_ids
        self.horizon_ms = horizon_ms
        self._ids: dict[str, int] = {}  # event_id -> ts, in the order recorded
        self._newest: int | None = None  # the highest ts seen
        self._oldest: int | None = None  # a lower bound of the ts kept (lazy)
        for event_id, ts in items:
            self._ids.pop(event_id, None)
            self._ids[event_id] = int(ts)
        if self._ids:
            self._newest = max(self._ids.values())
            self._oldest = min(self._ids.values())
            self._evict_old(self._newest - self.horizon_ms)
            self._evict_excess()

    def seen_before(self, event_id: str, ts: int) -> bool:
        """True when `event_id` is remembered; otherwise record it at `ts` and return False."""
        if self._newest is None or ts > self._newest:
            self._newest = ts
        self._evict_old(self._newest - self.horizon_ms)
        if event_id in self._ids:
            return True
        self._ids[event_id] = ts
        if self._oldest is None or ts < self._oldest:
            self._oldest = ts
        self._evict_excess()
        return False

    def _evict_old(self, cutoff: int) -> None:
        # Ids arrive roughly but not strictly in ts order, so a scan is needed; it
        # only runs when the lower bound shows something may be older than cutoff.
        if self._oldest is None or self._oldest >= cutoff:
            return
        self._ids = {i: t for i, t in self._ids.items() if t >= cutoff}
        self._oldest = min(self._ids.values()) if self._ids else None

    def _evict_excess(self) -> None:
        while len(self._ids) > self.max_ids:
            del self._ids[next(iter(self._ids))]  # the earliest recorded

    def to_state(self) -> list[tuple[str, int]]:
        """The remembered ids as `(event_id, ts)` pairs, earliest recorded first."""
        return list(self._ids.items())

    @classmethod
    def from_state(
        cls, state: Iterable[tuple[str, int]] | None, max_ids: int = 1000,
        horizon_ms: int = 3_600_000,
    ) -> RecentIds:
        """Rebuild from `to_state()` output (None, e.g. empty Flink state, gives an empty one).

        The newest ts seen is taken to be the newest ts kept, and the bounds are
        re-applied, so state written under larger bounds shrinks to the new ones.
        """
        return cls(max_ids, horizon_ms, state or ())

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __repr__(self) -> str:
        return (f"RecentIds(max_ids={self.max_ids}, horizon_ms={self.horizon_ms}, "
                f"size={len(self._ids)}, newest={self._newest})")
