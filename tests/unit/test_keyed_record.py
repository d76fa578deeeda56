"""jobs.keyed_record: a user's state as fields of one ValueState — one read per signal,
one write only when a field changed, an all-empty record cleared. A fake ValueState
stands in for Flink's (pure logic; the jobs' integration tests use the real one).

    .venv/bin/python -m pytest tests/unit/test_keyed_record.py -q
"""

from __future__ import annotations

from typing import Any

import pytest

from jobs.keyed_record import KeyedRecord
from jobs.tombstone import Tombstone


class FakeValueState:
    """Counts reads and writes, like the round trips they cost in Flink."""

    def __init__(self) -> None:
        self.stored: Any = None
        self.reads = self.writes = 0

    def value(self) -> Any:
        self.reads += 1
        return self.stored

    def update(self, value: Any) -> None:
        self.writes += 1
        self.stored = value

    def clear(self) -> None:
        self.writes += 1
        self.stored = None


class FakeContext:
    def __init__(self) -> None:
        self.states: dict[str, FakeValueState] = {}

    def get_state(self, descriptor: Any) -> FakeValueState:
        return self.states.setdefault(descriptor.get_name(), FakeValueState())


def record() -> tuple[KeyedRecord, FakeValueState]:
    context = FakeContext()
    rec = KeyedRecord(context, "user", ("cart", "gate", "erased"))
    return rec, context.states["user"]


def test_fields_read_with_one_state_access_and_unchanged_fields_write_nothing() -> None:
    rec, state = record()
    state.stored = ({"sku": 1}, None, 5)
    cart, gate, erased = rec.fields()
    rec.load()
    assert (cart.value(), gate.value(), erased.value()) == ({"sku": 1}, None, 5)
    rec.store()
    assert (state.reads, state.writes) == (1, 0)


def test_a_changed_field_is_written_back_with_the_others() -> None:
    rec, state = record()
    cart, gate, erased = rec.fields()
    rec.load()
    assert cart.value() is None
    gate.update(("caps",))
    rec.store()
    assert state.stored == (None, ("caps",), None)
    rec.load()
    erased.update(7)
    rec.store()
    assert state.stored == (None, ("caps",), 7)
    assert state.writes == 2


def test_a_record_whose_fields_are_all_cleared_is_cleared() -> None:
    rec, state = record()
    state.stored = ("cart", None, None)
    cart, _, _ = rec.fields()
    rec.load()
    cart.clear()
    rec.store()
    assert state.stored is None and state.writes == 1


def test_around_loads_before_the_first_output_and_stores_after_the_last() -> None:
    rec, state = record()
    cart, _, _ = rec.fields()

    def outputs() -> Any:
        cart.update("filled")
        yield "notification"
        assert state.stored is None  # nothing written while outputs are still coming

    run = rec.around(outputs())
    assert state.reads == 0  # lazy, like the generators PyFlink iterates
    assert list(run) == ["notification"]
    assert state.reads == 1 and state.stored == ("filled", None, None)


def test_around_stores_what_changed_before_an_error() -> None:
    rec, state = record()
    cart, _, _ = rec.fields()

    def failing() -> Any:
        cart.update("filled")
        raise ValueError("bad row")
        yield  # a generator

    with pytest.raises(ValueError):
        list(rec.around(failing()))
    assert state.stored == ("filled", None, None)


def test_the_tombstone_lives_in_its_field() -> None:
    rec, state = record()
    _, _, erased = rec.fields()
    tombstone = Tombstone(erased, horizon_ms=1_000)

    class Timers:
        registered: list[int] = []

        def register_event_time_timer(self, ts: int) -> None:
            self.registered.append(ts)

    rec.load()
    tombstone.set(500, Timers())
    rec.store()
    assert state.stored == (None, None, 500)
    rec.load()
    assert tombstone.covers(400) and not tombstone.covers(600)
    tombstone.expire(1_500)
    rec.store()
    assert state.stored is None
