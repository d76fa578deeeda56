"""A keyed function's state for one user, kept as the fields of a single ``ValueState``.

``ValueState.value()`` of a key that is not in the Python state cache is a blocking round
trip to the JVM, even when the state is empty (docs/performance.md, third round). A
function with its state in four ``ValueState`` objects pays up to four of them per
signal of a user it has not seen for a while — the common case with many users. Kept as
fields of one record, it pays one, and writes the record back once per signal.

Each field behaves like a ``ValueState`` (``value``, ``update``, ``clear``) between
``load`` and ``store``; ``around`` does both around a function's generator of outputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class KeyedRecord:
    """Named fields of one pickled ``ValueState``; create it in ``open``."""

    def __init__(self, runtime_context: Any, name: str, field_names: tuple[str, ...]) -> None:
        from pyflink.common import Types
        from pyflink.datastream.state import ValueStateDescriptor

        self.state = runtime_context.get_state(
            ValueStateDescriptor(name, Types.PICKLED_BYTE_ARRAY()))
        self.field_names = field_names
        self.values: list[Any] = []
        self.changed = False

    def fields(self) -> tuple[Field, ...]:
        """One ``Field`` per name, in the order given."""
        return tuple(Field(self, index) for index in range(len(self.field_names)))

    def load(self) -> None:
        """Read the current key's record (one state access)."""
        stored = self.state.value()
        self.values = list(stored) if stored is not None else [None] * len(self.field_names)
        self.changed = False

    def store(self) -> None:
        """Write the record back if a field changed; an all-empty record is cleared."""
        if not self.changed:
            return
        if all(value is None for value in self.values):
            self.state.clear()
        else:
            self.state.update(tuple(self.values))
        self.changed = False

    def around(self, outputs: Iterable[Any]) -> Iterator[Any]:
        """Run a (lazy) generator of a function's outputs between ``load`` and ``store``."""
        self.load()
        try:
            yield from outputs
        finally:
            self.store()


class Field:
    """One field of a ``KeyedRecord``, used like a ``ValueState``."""

    __slots__ = ("record", "index")

    def __init__(self, record: KeyedRecord, index: int) -> None:
        self.record = record
        self.index = index

    def value(self) -> Any:
        return self.record.values[self.index]

    def update(self, value: Any) -> None:
        self.record.values[self.index] = value
        self.record.changed = True

    def clear(self) -> None:
        self.update(None)
