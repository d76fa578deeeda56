"""The erasure tombstone both keyed functions keep (rules in udfs/privacy.py): the ts of
the user's last erasure, in a field of the function's keyed record
(``jobs.keyed_record``), for ``privacy.erasure_tombstone_ms``, so that rows from before
the erasure that are still on their way are dropped when they arrive."""

from __future__ import annotations

from typing import Any


class Tombstone:
    """One keyed function's erasure tombstone, kept in `state` (anything used like a
    ``ValueState``: a ``jobs.keyed_record.Field``); create it in ``open``."""

    def __init__(self, state: Any, horizon_ms: int) -> None:
        self.state = state
        self.horizon_ms = horizon_ms

    def covers(self, begins: int | None) -> bool:
        """Whether a row whose data begins at `begins` predates the user's erasure."""
        from udfs.privacy import from_erased_past

        return from_erased_past(self.state.value(), begins)

    def set(self, ts: int, timers: Any) -> None:
        """An erasure at `ts`: keep the newest, and a clean-up timer at its horizon."""
        from udfs.privacy import idle_timer

        erased = self.state.value()
        self.state.update(ts if erased is None else max(erased, ts))
        timers.register_event_time_timer(idle_timer(ts, self.horizon_ms))

    def expire(self, now: int) -> None:
        """Forget the tombstone once its horizon has passed (on a clean-up timer)."""
        erased = self.state.value()
        if erased is not None and erased + self.horizon_ms <= now:
            self.state.clear()
