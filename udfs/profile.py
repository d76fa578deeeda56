"""Per-user profiles: sliding-window figures, lifetime figures and segments, as plain
Python over one-minute *slices*.

Flink SQL cuts each user's events into tumbling slices (``WindowSpec.slice_ms``, the
greatest common divisor of the windows' sizes and slides: 1 min by default) and hands
Python one ``Slice`` per user and minute with events. Every sliding window is a run of
consecutive slices, so both window families of the contract are sums over the slices
kept in ``ProfileState``:

    slices   |s0|s1|s2|s3|s4|s5|s6|s7|s8|s9|s10|s11| …      (1 min each)
    10m/1m   [s0 ………………………………………… s9]  window_end = end of s9
                [s1 ………………………………………… s10]  … one window per minute
    1h/5m    windows ending on multiples of 5 min, 60 slices each

``window(state, spec, end)`` sums the slices of the window ending at ``end``. A window
with no slice reads 0 (and an empty top category): that is how values decay to 0 when a
user goes quiet, instead of going stale. Lifetime figures add each slice once, when it
arrives.

Late events: the profiles job follows the contract's watermark, so an event up to the
allowed lateness behind it can come after its slice was handed over. It arrives as a
slice of its own (one event) and joins the slice kept for its minute (``add_slice``
merges); ``add_late`` also writes again, at once, every written window that holds it.

Everything takes time as an argument (ms, event time); nothing reads a clock.

    .venv/bin/python -m pytest tests/unit/test_profile.py -q
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

NEW_VISITOR, HIGH_VALUE, CART_ABANDONER, ENGAGED = (
    "new_visitor", "high_value", "cart_abandoner", "engaged")


@dataclass(frozen=True)
class WindowSpec:
    """One family of sliding windows: its Redis suffix (``10m``), size and slide (ms)."""

    suffix: str
    size_ms: int
    slide_ms: int

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or self.slide_ms <= 0 or self.size_ms % self.slide_ms:
            raise ValueError(f"window {self.suffix}: size must be a positive multiple of "
                             f"the slide (got {self.size_ms} / {self.slide_ms})")

    def ends_containing(self, ts: int) -> range:
        """The ends of this family's windows that contain ``ts``: ``end - size <= ts < end``."""
        first = (ts // self.slide_ms + 1) * self.slide_ms
        return range(first, ts + self.size_ms + 1, self.slide_ms)


@dataclass(frozen=True)
class ProfileRules:
    """The profile settings (contract defaults)."""

    short: WindowSpec = WindowSpec("10m", 600_000, 60_000)
    long: WindowSpec = WindowSpec("1h", 3_600_000, 300_000)
    new_visitor_ms: int = 86_400_000
    high_value_revenue: float = 500.0
    cart_abandoner_ms: int = 7 * 86_400_000
    engaged_views_1h: int = 20

    @property
    def slice_ms(self) -> int:
        """The slice length: every window boundary of both families falls on one."""
        return math.gcd(self.short.size_ms, self.short.slide_ms, self.long.size_ms,
                        self.long.slide_ms)

    @property
    def families(self) -> tuple[WindowSpec, WindowSpec]:
        return (self.short, self.long)


@dataclass(frozen=True)
class Slice:
    """One user's events in ``[start, start + slice_ms)``.

    ``views`` are ``(ts, category)`` of the slice's product views that have a category.
    """

    start: int
    events: int
    product_views: int
    carts: int
    purchases: int
    revenue: float
    first_ts: int
    last_ts: int
    views: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class WindowFigures:
    """The six window fields of one family, for the window ending at ``end``."""

    end: int
    views: int = 0
    product_views: int = 0
    carts: int = 0
    purchases: int = 0
    revenue: float = 0.0
    top_category: str = ""

    @property
    def empty(self) -> bool:
        return self.views == 0

    def fields(self, suffix: str) -> dict[str, str]:
        """The Redis hash fields of this family, as strings."""
        return {f"window_end_{suffix}": str(self.end), f"views_{suffix}": str(self.views),
                f"product_views_{suffix}": str(self.product_views),
                f"carts_{suffix}": str(self.carts), f"purchases_{suffix}": str(self.purchases),
                f"revenue_{suffix}": _money(self.revenue),
                f"top_category_{suffix}": self.top_category}


@dataclass(frozen=True)
class Lifetime:
    first_seen: int | None = None
    last_seen: int | None = None
    events_total: int = 0
    orders_total: int = 0
    revenue_total: float = 0.0

    def fields(self) -> dict[str, str]:
        return {"first_seen": str(self.first_seen or 0), "last_seen": str(self.last_seen or 0),
                "events_total": str(self.events_total),
                "orders_total": str(self.orders_total),
                "revenue_total": _money(self.revenue_total)}


@dataclass(frozen=True)
class ProfileState:
    """One user's profile state: recent slices, lifetime figures, what was last written."""

    slices: tuple[Slice, ...] = ()
    lifetime: Lifetime = field(default_factory=Lifetime)
    last_cart_abandoned: int | None = None
    # per family suffix: (window end, empty?) of the last window written
    written: tuple[tuple[str, int, bool], ...] = ()
    views_long: int = 0  # views of the newest long window computed (for `engaged`)

    def last_written(self, suffix: str) -> tuple[int, bool] | None:
        for s, end, empty in self.written:
            if s == suffix:
                return end, empty
        return None

    def to_state(self) -> dict[str, Any]:
        return {"slices": [(s.start, s.events, s.product_views, s.carts, s.purchases,
                            s.revenue, s.first_ts, s.last_ts, list(s.views))
                           for s in self.slices],
                "lifetime": (self.lifetime.first_seen, self.lifetime.last_seen,
                             self.lifetime.events_total, self.lifetime.orders_total,
                             self.lifetime.revenue_total),
                "cart_abandoned": self.last_cart_abandoned,
                "written": list(self.written), "views_long": self.views_long}

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> ProfileState:
        return cls(
            slices=tuple(Slice(int(s[0]), int(s[1]), int(s[2]), int(s[3]), int(s[4]),
                               float(s[5]), int(s[6]), int(s[7]),
                               tuple((int(t), str(c)) for t, c in s[8]))
                         for s in data["slices"]),
            lifetime=Lifetime(*data["lifetime"]),
            last_cart_abandoned=data["cart_abandoned"],
            written=tuple((str(s), int(e), bool(x)) for s, e, x in data["written"]),
            views_long=int(data["views_long"]))


def merge(a: Slice, b: Slice) -> Slice:
    """Two parts of one minute's slice (the same start) as one."""
    return Slice(a.start, a.events + b.events, a.product_views + b.product_views,
                 a.carts + b.carts, a.purchases + b.purchases, a.revenue + b.revenue,
                 min(a.first_ts, b.first_ts), max(a.last_ts, b.last_ts),
                 tuple(sorted((*a.views, *b.views))))


def add_slice(state: ProfileState, new: Slice, rules: ProfileRules) -> ProfileState:
    """Add a slice, or a part of one: lifetime figures grow by it, and it is kept for the
    windows, merged into the slice already kept for the same minute if there is one.

    Nothing here recognises a slice seen twice: Flink's checkpointed state and its
    replayed input agree (exactly-once state), and a second run of the job starts from
    nothing and writes absolute values (udfs/profile_store.py).
    """
    kept = [s for s in state.slices if s.start != new.start]
    same = [s for s in state.slices if s.start == new.start]
    whole = merge(same[0], new) if same else new
    life = state.lifetime
    life = Lifetime(
        first_seen=new.first_ts if life.first_seen is None else min(life.first_seen,
                                                                    new.first_ts),
        last_seen=new.last_ts if life.last_seen is None else max(life.last_seen, new.last_ts),
        events_total=life.events_total + new.events,
        orders_total=life.orders_total + new.purchases,
        revenue_total=life.revenue_total + new.revenue)
    slices = tuple(sorted((*kept, whole), key=lambda s: s.start))
    return replace(state, slices=slices, lifetime=life)


def window(state: ProfileState, spec: WindowSpec, end: int) -> WindowFigures:
    """Sum the slices of the window ``[end - size, end)``; 0s when it holds none."""
    inside = [s for s in state.slices if end - spec.size_ms <= s.start < end]
    if not inside:
        return WindowFigures(end)
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for s in inside:
        for ts, category in s.views:
            counts[category] = counts.get(category, 0) + 1
            first[category] = min(first.get(category, ts), ts)
    top = min(counts, key=lambda c: (-counts[c], first[c], c)) if counts else ""
    return WindowFigures(end, views=sum(s.events for s in inside),
                         product_views=sum(s.product_views for s in inside),
                         carts=sum(s.carts for s in inside),
                         purchases=sum(s.purchases for s in inside),
                         revenue=sum(s.revenue for s in inside), top_category=top)


def due_window(state: ProfileState, spec: WindowSpec, end: int) -> WindowFigures | None:
    """The figures of the window ending at ``end`` if it must be written, else None.

    A non-empty window always is; an empty one only when the family's last write held
    events (then it writes the 0s once, and the fields stay 0 from there on).
    """
    if end % spec.slide_ms:
        return None
    last = state.last_written(spec.suffix)
    if last is not None and last[0] >= end:
        return None
    figures = window(state, spec, end)
    if figures.empty and (last is None or last[1]):
        return None
    return figures


def next_timer(state: ProfileState, rules: ProfileRules, after: int) -> int | None:
    """The next window end (> ``after``) of either family that will have to be written,
    or None when every family has written its 0s and no slice is pending."""
    candidates = []
    for spec in rules.families:
        end = (after // spec.slide_ms + 1) * spec.slide_ms
        newest = max((s.start for s in state.slices), default=None)
        if newest is not None and end - spec.size_ms <= newest:
            candidates.append(end)  # a window that still holds events
        elif (last := state.last_written(spec.suffix)) is not None and not last[1]:
            candidates.append(end)  # the first empty window: write its 0s
    return min(candidates) if candidates else None


def mark_written(state: ProfileState, rules: ProfileRules, spec: WindowSpec,
                 figures: WindowFigures) -> ProfileState:
    """Remember the window about to be written (and, for the long family, its views for
    the `engaged` segment)."""
    written = tuple(w for w in state.written if w[0] != spec.suffix)
    state = replace(state, written=(*written, (spec.suffix, figures.end, figures.empty)))
    if spec is rules.long:
        state = replace(state, views_long=figures.views)
    return state


def prune(state: ProfileState, rules: ProfileRules, now: int) -> ProfileState:
    """Forget slices no window ending after ``now`` can hold."""
    horizon = now - max(rules.short.size_ms, rules.long.size_ms)
    kept = tuple(s for s in state.slices if s.start >= horizon)
    return state if len(kept) == len(state.slices) else replace(state, slices=kept)


def segments(state: ProfileState, rules: ProfileRules, at: int) -> list[str]:
    """The contract's segments at event time ``at``, sorted."""
    life = state.lifetime
    out = []
    if (life.first_seen is not None and life.last_seen is not None
            and life.last_seen - life.first_seen < rules.new_visitor_ms):
        out.append(NEW_VISITOR)
    if life.revenue_total >= rules.high_value_revenue:
        out.append(HIGH_VALUE)
    fired = state.last_cart_abandoned
    if fired is not None and at - rules.cart_abandoner_ms < fired <= at:
        out.append(CART_ABANDONER)
    if state.views_long >= rules.engaged_views_1h:
        out.append(ENGAGED)
    return sorted(out)


@dataclass(frozen=True)
class ProfileWrite:
    """What to write to Redis at one window end: each part carries its guard."""

    windows: tuple[tuple[str, WindowFigures], ...]
    lifetime: dict[str, str]
    guard_events_total: int


def profile_write(state: ProfileState, rules: ProfileRules,
                  windows: tuple[tuple[str, WindowFigures], ...], at: int) -> ProfileWrite:
    """`windows` with the lifetime figures and the segments as of ``at``."""
    lifetime = {**state.lifetime.fields(), "segments": ",".join(segments(state, rules, at))}
    return ProfileWrite(windows, lifetime, state.lifetime.events_total)


def on_window_end(state: ProfileState, rules: ProfileRules, end: int,
                  ) -> tuple[ProfileState, ProfileWrite | None]:
    """Event time reached ``end``: compute the windows that end there and are due, and
    the lifetime figures and segments to write with them."""
    parts = []
    for spec in rules.families:
        figures = due_window(state, spec, end)
        if figures is not None:
            state = mark_written(state, rules, spec, figures)
            parts.append((spec.suffix, figures))
    if not parts:
        return prune(state, rules, end), None
    return prune(state, rules, end), profile_write(state, rules, tuple(parts), end)


def catch_up(state: ProfileState, rules: ProfileRules, first_end: int, watermark: int,
             ) -> tuple[ProfileState, ProfileWrite | None, int | None]:
    """Event time jumped to ``watermark``: handle every due window end from ``first_end``
    up to it in one go, as ``on_window_end`` one by one would, but return one write — the
    newest window of each family, the lifetime figures and segments as of the last end —
    and the next end to wait for (> ``watermark``), or None.

    One jump of the watermark (a pause, a batch, a restart) then costs one timer and one
    Redis write per user instead of a chain of timers that advances one end per
    watermark; the windows in between would be overwritten at once anyway.
    """
    newest: dict[str, WindowFigures] = {}
    last: ProfileWrite | None = None
    end: int | None = first_end
    while end is not None and end <= watermark:
        state, write = on_window_end(state, rules, end)
        if write is not None:
            newest.update(write.windows)
            last = write
        end = next_timer(state, rules, after=end)
    if last is None:
        return state, None, end
    windows = tuple((spec.suffix, newest[spec.suffix]) for spec in rules.families
                    if spec.suffix in newest)
    return state, replace(last, windows=windows), end


def add_late(state: ProfileState, piece: Slice, rules: ProfileRules,
             ) -> tuple[ProfileState, ProfileWrite | None]:
    """A slice or a late event (one event's slice, see the module docstring) that may come
    after a window holding it was written: add it, and return the write that corrects
    Redis at once — each family's last written window, if it holds the piece, and the
    lifetime figures and segments — or None when no written window holds it (the usual
    case for a slice: the window ends still to come include it, and their timers write
    it)."""
    state = add_slice(state, piece, rules)
    parts = []
    for spec in rules.families:
        last = state.last_written(spec.suffix)
        if last is None or not last[0] - spec.size_ms <= piece.start < last[0]:
            continue
        figures = window(state, spec, last[0])
        state = mark_written(state, rules, spec, figures)
        parts.append((spec.suffix, figures))
    if not parts:
        return state, None
    at = max(figures.end for _, figures in parts)
    return state, profile_write(state, rules, tuple(parts), at)


def segments_write(state: ProfileState, rules: ProfileRules, at: int,
                   ) -> ProfileWrite | None:
    """The lifetime figures and segments as of ``at``, without window fields: what a
    ``cart_abandoned`` arriving changes. None for a user without a profile."""
    if state.lifetime.first_seen is None:
        return None
    return profile_write(state, rules, (), at)


def on_cart_abandoned(state: ProfileState, fired_at: int) -> ProfileState:
    """A ``cart_abandoned`` notification was emitted for the user."""
    if state.last_cart_abandoned is not None and state.last_cart_abandoned >= fired_at:
        return state
    return replace(state, last_cart_abandoned=fired_at)


def _money(value: float) -> str:
    text = f"{value:.2f}"
    return "0" if text in ("0.00", "-0.00") else text.rstrip("0").rstrip(".")
