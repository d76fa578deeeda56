"""udfs.dedup.RecentIds: repeated event_ids are recognised within a time horizon and a
count bound, and the state round-trips through its serializable form.

    .venv/bin/python -m pytest tests/unit/test_dedup.py -q
"""

from __future__ import annotations

import json
import random

import pytest

from udfs.dedup import RecentIds


def test_first_sighting_is_new_and_the_repeat_is_not():
    ids = RecentIds(max_ids=10, horizon_ms=1_000)
    assert ids.seen_before("a", 100) is False
    assert ids.seen_before("a", 100) is True
    assert ids.seen_before("b", 100) is False
    assert ids.seen_before("a", 900) is True  # a retry with another ts is still a repeat


def test_count_bound_forgets_the_earliest_recorded():
    ids = RecentIds(max_ids=3, horizon_ms=10_000)
    for n, event_id in enumerate("abcd"):
        assert not ids.seen_before(event_id, n)
    assert ids.to_state() == [("b", 1), ("c", 2), ("d", 3)]
    assert "a" not in ids


def test_a_repeat_does_not_refresh_an_id():
    ids = RecentIds(max_ids=2, horizon_ms=10_000)
    ids.seen_before("a", 0)
    ids.seen_before("b", 1)
    assert ids.seen_before("a", 2) is True
    ids.seen_before("c", 3)
    assert ids.to_state() == [("b", 1), ("c", 3)]


#   ts:   0          1000       1500
#         a ......... b ......... c        horizon 1000
#   at c the cutoff is 500: a (0) is forgotten, b (1000) kept
def test_time_bound_measured_from_the_newest_ts():
    ids = RecentIds(max_ids=100, horizon_ms=1_000)
    ids.seen_before("a", 0)
    ids.seen_before("b", 1_000)
    assert "a" in ids  # exactly horizon_ms before the newest: kept
    ids.seen_before("c", 1_500)
    assert "a" not in ids
    assert ids.seen_before("b", 1_000) is True


def test_a_late_event_does_not_move_the_horizon_back():
    ids = RecentIds(max_ids=100, horizon_ms=1_000)
    ids.seen_before("a", 5_000)
    ids.seen_before("late", 4_500)  # out of order, within the horizon
    assert ids.seen_before("late", 4_500) is True
    ids.seen_before("b", 5_800)  # cutoff 4_800 forgets "late" (4_500) but not "a"
    assert "late" not in ids
    assert "a" in ids


def test_an_event_older_than_the_horizon_is_new_and_soon_forgotten():
    ids = RecentIds(max_ids=100, horizon_ms=1_000)
    ids.seen_before("a", 10_000)
    assert ids.seen_before("old", 1_000) is False
    ids.seen_before("b", 10_001)
    assert "old" not in ids


def test_state_roundtrip_keeps_order_and_behaviour():
    ids = RecentIds(max_ids=3, horizon_ms=1_000)
    for event_id, ts in [("a", 10), ("b", 30), ("c", 20)]:
        ids.seen_before(event_id, ts)
    state = ids.to_state()
    assert state == [("a", 10), ("b", 30), ("c", 20)]
    restored = RecentIds.from_state(json.loads(json.dumps(state)), max_ids=3, horizon_ms=1_000)
    assert restored.to_state() == state
    assert restored.seen_before("b", 40) is True
    restored.seen_before("d", 50)  # count bound: "a", the earliest recorded, goes
    assert restored.to_state() == [("b", 30), ("c", 20), ("d", 50)]


def test_from_state_of_nothing_is_empty():
    assert len(RecentIds.from_state(None)) == 0
    assert len(RecentIds.from_state([])) == 0


def test_from_state_applies_smaller_bounds():
    state = [("a", 0), ("b", 100), ("c", 200), ("d", 5_000)]
    assert RecentIds.from_state(state, max_ids=2, horizon_ms=10_000).to_state() == [
        ("c", 200), ("d", 5_000)]
    assert RecentIds.from_state(state, max_ids=10, horizon_ms=4_850).to_state() == [
        ("c", 200), ("d", 5_000)]


@pytest.mark.parametrize(("max_ids", "horizon_ms"), [(0, 10), (-1, 10), (5, -1)])
def test_bounds_are_checked(max_ids, horizon_ms):
    with pytest.raises(ValueError):
        RecentIds(max_ids=max_ids, horizon_ms=horizon_ms)


class NaiveRecentIds:
    """The specification, written the slow obvious way."""

    def __init__(self, max_ids: int, horizon_ms: int) -> None:
        self.max_ids, self.horizon_ms = max_ids, horizon_ms
        self.entries: list[tuple[str, int]] = []
        self.newest: int | None = None

    def seen_before(self, event_id: str, ts: int) -> bool:
        self.newest = ts if self.newest is None else max(self.newest, ts)
        self.entries = [(i, t) for i, t in self.entries if t >= self.newest - self.horizon_ms]
        if any(i == event_id for i, _ in self.entries):
            return True
        self.entries.append((event_id, ts))
        self.entries = self.entries[-self.max_ids:]
        return False


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_naive_specification_on_random_traffic(seed):
    rng = random.Random(seed)
    fast, slow = RecentIds(max_ids=20, horizon_ms=5_000), NaiveRecentIds(20, 5_000)
    ts = 0
    answers = []
    for _ in range(3_000):
        ts += rng.randint(0, 300)
        event_ts = ts - rng.randint(0, 2_000) if rng.random() < 0.2 else ts  # some late
        event_id = f"e{rng.randint(0, 60)}"
        answer = fast.seen_before(event_id, event_ts)
        assert answer == slow.seen_before(event_id, event_ts)
        assert fast.to_state() == slow.entries
        answers.append(answer)
    assert True in answers and False in answers
