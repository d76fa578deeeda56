"""A test helper: what a watermark-driven operator sees of out-of-order arrivals."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TypeVar

E = TypeVar("E", bound=tuple)


def released_in_ts_order(arrivals: list[E], delay: int) -> Iterator[E]:
    """Events (tuples with ts at index 1) buffered until the watermark (max ts seen -
    delay) passes them, then released in ts order; the rest at the end of input."""
    buffer: list[tuple[int, int, E]] = []
    watermark = -1
    for seq, event in enumerate(arrivals):
        assert event[1] > watermark
        heapq.heappush(buffer, (event[1], seq, event))
        watermark = max(watermark, event[1] - delay)
        while buffer and buffer[0][0] <= watermark:
            yield heapq.heappop(buffer)[2]
    while buffer:
        yield heapq.heappop(buffer)[2]
