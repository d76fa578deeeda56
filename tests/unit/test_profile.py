"""udfs/profile.py: windows as sums of one-minute slices, decay to 0, lifetime figures,
segments. Times are minutes after T0 unless said otherwise."""

from __future__ import annotations

from udfs.profile import (
    ProfileRules,
    ProfileState,
    Slice,
    WindowSpec,
    add_late,
    add_slice,
    catch_up,
    next_timer,
    on_cart_abandoned,
    on_window_end,
    segments,
    segments_write,
    window,
)

T0 = 1_767_225_600_000
M = 60_000
H = 60 * M
RULES = ProfileRules()


def sl(minute: int, events: int = 1, *, pv: int = 0, carts: int = 0, purchases: int = 0,
       revenue: float = 0.0, views: tuple[tuple[int, str], ...] = ()) -> Slice:
    start = T0 + minute * M
    return Slice(start, events, pv, carts, purchases, revenue, start + 1000, start + 59_000,
                 tuple((start + s * 1000, c) for s, c in views))


def state_of(*slices: Slice) -> ProfileState:
    state = ProfileState()
    for piece in slices:
        state = add_slice(state, piece, RULES)
    return state


def test_slice_length_is_the_gcd_of_sizes_and_slides() -> None:
    assert RULES.slice_ms == M
    odd = ProfileRules(short=WindowSpec("10m", 10 * M, 2 * M),
                       long=WindowSpec("1h", H, 15 * M))
    assert odd.slice_ms == M
    assert ProfileRules(short=WindowSpec("10m", 10 * M, 10 * M),
                        long=WindowSpec("1h", H, 20 * M)).slice_ms == 10 * M


def test_window_ends_containing_a_time() -> None:
    # ts = 0:30 (30 s) is in the 10m/1m windows ending 1, 2, …, 10 min
    assert list(RULES.short.ends_containing(T0 + 30_000)) == [T0 + m * M for m in range(1, 11)]
    # and in the 1h/5m windows ending 5, 10, …, 60 min
    assert list(RULES.long.ends_containing(T0 + 30_000)) == [T0 + m * M
                                                             for m in range(5, 61, 5)]


# slices:  |0: 2 ev, 1 view shoes|   |3: 1 ev, 2 views hats|   |12: 1 purchase 40.5|
#          0                          3                          12
# window ending 10 holds slices 0 and 3; ending 13 holds 3 and 12; ending 14 holds 12 only
def test_window_sums_its_slices() -> None:
    state = state_of(sl(0, 2, pv=1, views=((5, "shoes"),)),
                     sl(3, 1, pv=2, views=((1, "hats"), (2, "hats"))),
                     sl(12, 1, purchases=1, revenue=40.5))
    w10 = window(state, RULES.short, T0 + 10 * M)
    assert (w10.views, w10.product_views, w10.purchases, w10.top_category) == (3, 3, 0, "hats")
    w13 = window(state, RULES.short, T0 + 13 * M)
    assert (w13.views, w13.purchases, w13.revenue) == (2, 1, 40.5)
    w14 = window(state, RULES.short, T0 + 14 * M)
    assert (w14.views, w14.product_views, w14.top_category) == (1, 0, "")
    w60 = window(state, RULES.long, T0 + 60 * M)
    assert (w60.views, w60.revenue, w60.top_category) == (4, 40.5, "hats")


# a tie: shoes viewed first (0:05), hats at 0:10 — both twice → shoes
def test_top_category_ties_go_to_the_first_viewed() -> None:
    state = state_of(sl(0, 4, pv=4, views=((5, "shoes"), (10, "hats"), (20, "hats"),
                                           (30, "shoes"))))
    assert window(state, RULES.short, T0 + 5 * M).top_category == "shoes"


# activity in minute 0 only:
#   10m windows ending 1..10 hold it → written; ending 11 is empty → 0s written once; then no
#   more 10m timers. 1h windows ending 5..60 hold it; ending 65 → 0s once.
def test_windows_decay_to_zero_once_and_then_stop() -> None:
    state = state_of(sl(0, 3))
    writes: list[tuple[int, str, int]] = []
    timer = next_timer(state, RULES, after=T0)
    while timer is not None:
        state, write = on_window_end(state, RULES, timer)
        if write is not None:
            writes += [((timer - T0) // M, suffix, f.views) for suffix, f in write.windows]
        timer = next_timer(state, RULES, after=timer)
    short = [(m, v) for m, s, v in writes if s == "10m"]
    long = [(m, v) for m, s, v in writes if s == "1h"]
    assert short == [(m, 3) for m in range(1, 11)] + [(11, 0)]
    assert long == [(m, 3) for m in range(5, 61, 5)] + [(65, 0)]


def test_lifetime_counts_each_slice_once() -> None:
    state = state_of(sl(0, 2), sl(7, 1, purchases=1, revenue=10.0))
    life = state.lifetime
    assert (life.events_total, life.orders_total, life.revenue_total) == (3, 1, 10.0)
    assert (life.first_seen, life.last_seen) == (T0 + 1000, T0 + 7 * M + 59_000)


def late(minute: float, *, pv: int = 0, purchases: int = 0, revenue: float = 0.0,
         category: str | None = None) -> Slice:
    """One late event at `minute` (the job's 'late' row): a slice of one event."""
    ts = T0 + int(minute * M)
    start = ts - ts % M
    return Slice(start, 1, pv, 0, purchases, revenue, ts, ts,
                 ((ts, category),) if category else ())


# minute 7 holds 1 event (0:07:01–0:07:59); a late view at 0:07:00.5 (hats) and a late
# purchase at 0:07:30 join it: one slice of 3 events, its views in time order
def test_parts_of_one_minute_merge_into_one_slice() -> None:
    state = state_of(sl(7, 1, pv=1, views=((50, "shoes"),)))
    state = add_slice(state, late(7.01, pv=1, category="hats"), RULES)
    state = add_slice(state, late(7.5, purchases=1, revenue=20.0), RULES)
    (only,) = state.slices
    assert (only.start, only.events, only.product_views, only.purchases, only.revenue) == (
        T0 + 7 * M, 3, 2, 1, 20.0)
    assert (only.first_ts, only.last_ts) == (T0 + 7 * M + 600, T0 + 7 * M + 59_000)
    assert [c for _, c in only.views] == ["hats", "shoes"]
    life = state.lifetime
    assert (life.events_total, life.orders_total, life.revenue_total) == (3, 1, 20.0)


# activity in minute 0 (3 events); the watermark passed 0:12, so the last writes were the
# 10m window ending 0:11 (0s, written once) and the 1h window ending 0:10 (3 events).
#   a late event at 0:11:20 is in neither → nothing now (the 10m window ending 0:12 will
#   hold it); a late view at 0:09:30 is in both ([0:01, 0:11) and [-0:50, 0:10)) → both
#   written again at once, with the lifetime figures
def test_a_late_event_rewrites_the_written_windows_that_hold_it() -> None:
    state = state_of(sl(0, 3))
    state, write, following = catch_up(state, RULES, T0 + M, T0 + 12 * M)
    assert write is not None and following == T0 + 15 * M
    assert {s: (f.end, f.views) for s, f in write.windows} == {
        "10m": (T0 + 11 * M, 0), "1h": (T0 + 10 * M, 3)}

    quiet, none = add_late(state, late(11.33), RULES)
    assert none is None  # in no written window: the 10m window ending 0:12 will hold it
    assert next_timer(quiet, RULES, after=T0 + 11 * M) == T0 + 12 * M
    assert quiet.lifetime.events_total == 4

    state, again = add_late(state, late(9.5, pv=1, category="hats"), RULES)
    assert again is not None
    figures = dict(again.windows)
    assert (figures["10m"].end, figures["10m"].views, figures["10m"].top_category) == (
        T0 + 11 * M, 1, "hats")
    assert (figures["1h"].end, figures["1h"].views, figures["1h"].product_views) == (
        T0 + 10 * M, 4, 1)
    assert again.guard_events_total == 4 and again.lifetime["events_total"] == "4"
    # the 10m family now holds events again: its 0s get written once more, later
    assert state.last_written("10m") == (T0 + 11 * M, False)
    assert next_timer(state, RULES, after=T0 + 12 * M) == T0 + 13 * M
    # ... at the end of the window that no longer holds minute 9
    _, write, _ = catch_up(state, RULES, T0 + 13 * M, T0 + 20 * M)
    assert write is not None
    assert (dict(write.windows)["10m"].end, dict(write.windows)["10m"].views) == (
        T0 + 20 * M, 0)


def test_old_slices_are_pruned_after_the_longest_window() -> None:
    state = state_of(sl(0), sl(70))
    state, _ = on_window_end(state, RULES, T0 + 75 * M)
    assert [s.start for s in state.slices] == [T0 + 70 * M]
    assert state.lifetime.events_total == 2


# segments at t:  new_visitor  first..last < 24 h;  high_value  revenue_total >= 500;
#                 cart_abandoner  a firing in (t - 7 d, t];  engaged  views_1h >= 20
def test_segments() -> None:
    state = state_of(sl(0, 25, purchases=1, revenue=500.0))
    state, _ = on_window_end(state, RULES, T0 + 5 * M)  # views_1h = 25
    assert segments(state, RULES, T0 + 5 * M) == ["engaged", "high_value", "new_visitor"]
    state = on_cart_abandoned(state, T0 + 2 * M)
    assert "cart_abandoner" in segments(state, RULES, T0 + 5 * M)
    assert "cart_abandoner" not in segments(state, RULES, T0 + 2 * M + 7 * 24 * H)
    later = add_slice(state, sl(25 * 60, 1), RULES)  # seen again 25 h later
    assert "new_visitor" not in segments(later, RULES, T0 + 25 * H)
    poor = state_of(sl(0, 1, purchases=1, revenue=499.99))
    assert "high_value" not in segments(poor, RULES, T0 + M)


# a cart_abandoned at 0:40 for a user last written at 0:35: the segment is written at once
def test_a_cart_abandoned_writes_the_segments_at_once() -> None:
    state, _ = on_window_end(state_of(sl(0, 2)), RULES, T0 + 5 * M)
    state = on_cart_abandoned(state, T0 + 40 * M)
    write = segments_write(state, RULES, T0 + 40 * M)
    assert write is not None and write.windows == ()
    assert write.lifetime["segments"] == "cart_abandoner,new_visitor"
    assert write.guard_events_total == 2
    assert segments_write(on_cart_abandoned(ProfileState(), T0), RULES, T0) is None


def test_write_carries_lifetime_segments_and_its_guards() -> None:
    state = state_of(sl(0, 2, pv=2, views=((1, "a"), (2, "a"))))
    state, write = on_window_end(state, RULES, T0 + 5 * M)
    assert write is not None
    assert [suffix for suffix, _ in write.windows] == ["10m", "1h"]  # 5 min ends both
    assert write.guard_events_total == 2
    assert write.lifetime["events_total"] == "2"
    assert write.lifetime["segments"] == "new_visitor"
    fields = dict(write.windows)["10m"].fields("10m")
    assert fields == {"window_end_10m": str(T0 + 5 * M), "views_10m": "2",
                      "product_views_10m": "2", "carts_10m": "0", "purchases_10m": "0",
                      "revenue_10m": "0", "top_category_10m": "a"}


def test_state_round_trips() -> None:
    state = on_cart_abandoned(state_of(sl(0, 2, views=((1, "a"),)), sl(3)), T0)
    state, _ = on_window_end(state, RULES, T0 + 5 * M)
    assert ProfileState.from_state(state.to_state()) == state


def _one_by_one(state: ProfileState, first: int, until: int
                ) -> tuple[ProfileState, dict[str, int], int | None]:
    """on_window_end for each due end up to `until`: (state, newest end per family, next)"""
    newest: dict[str, int] = {}
    timer: int | None = first
    while timer is not None and timer <= until:
        state, write = on_window_end(state, RULES, timer)
        if write is not None:
            newest.update((suffix, f.end) for suffix, f in write.windows)
        timer = next_timer(state, RULES, after=timer)
    return state, newest, timer


# activity in minutes 0 and 3; the watermark jumps from 0:00 to 0:37 in one step:
#   one write with the 10m window ending 0:14 (the 0s after the last event at 3: written
#   once) and the 1h window ending 0:35 (still holds both slices); next end 0:40 (1h).
def test_a_watermark_jump_is_caught_up_in_one_write() -> None:
    state = state_of(sl(0, 2, views=((1, "a"),)), sl(3, 1))
    first = next_timer(state, RULES, after=T0)
    assert first == T0 + M
    caught, write, following = catch_up(state, RULES, first, T0 + 37 * M)
    assert write is not None
    figures = dict(write.windows)
    assert (figures["10m"].end, figures["10m"].views) == (T0 + 14 * M, 0)
    assert (figures["1h"].end, figures["1h"].views, figures["1h"].top_category) == (
        T0 + 35 * M, 3, "a")
    assert following == T0 + 40 * M
    assert write.lifetime["events_total"] == "3"
    # the same outcome as the chain of single ends, which it replaces
    stepped, newest, timer = _one_by_one(state, first, T0 + 37 * M)
    assert newest == {"10m": T0 + 14 * M, "1h": T0 + 35 * M}
    assert (caught, following) == (stepped, timer)


def test_catch_up_past_everything_leaves_zeros_and_no_timer() -> None:
    state = state_of(sl(0, 5))
    caught, write, following = catch_up(state, RULES, T0 + M, T0 + 5 * H)
    assert write is not None and following is None
    assert {s: (f.end, f.views) for s, f in write.windows} == {
        "10m": (T0 + 11 * M, 0), "1h": (T0 + 65 * M, 0)}
    assert caught.slices == ()


def test_catch_up_below_the_first_end_does_nothing() -> None:
    state = state_of(sl(0, 1))
    caught, write, following = catch_up(state, RULES, T0 + M, T0 + M - 1)
    assert (caught, write, following) == (state, None, T0 + M)
