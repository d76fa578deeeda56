"""The Redis write guard (udfs/profile_store.py) against a real Redis: a write never
replaces a newer window, replays change nothing, the TTL is refreshed; and the retry
policy when Redis is down."""

from __future__ import annotations

import uuid

import pytest
import redis

from udfs.profile import Lifetime, ProfileWrite, WindowFigures
from udfs.profile_store import ProfileStore

T0 = 1_767_225_600_000
M = 60_000


def write(end_10m: int, views: int, events_total: int, end_1h: int | None = None,
          ) -> ProfileWrite:
    windows = [("10m", WindowFigures(end_10m, views=views, top_category="k"))]
    if end_1h is not None:
        windows.append(("1h", WindowFigures(end_1h, views=views * 10)))
    life = Lifetime(T0, T0 + events_total, events_total, 0, 0.0)
    return ProfileWrite(tuple(windows), {**life.fields(), "segments": "new_visitor"},
                        events_total)


@pytest.fixture
def store(redis_client) -> ProfileStore:  # type: ignore[no-untyped-def]
    prefix = f"it-{uuid.uuid4().hex[:8]}:"
    yield ProfileStore(redis_client, prefix, ttl_ms=60_000)
    for key in redis_client.scan_iter(f"{prefix}*"):
        redis_client.delete(key)


def test_guard_keeps_the_newest_window_and_lifetime(store, redis_client) -> None:  # type: ignore[no-untyped-def]
    key = store.key("u1")
    store.write("u1", write(T0 + 5 * M, views=4, events_total=10, end_1h=T0 + 5 * M))
    store.write("u1", write(T0 + 3 * M, views=1, events_total=7))  # older on every part
    profile = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
    assert profile["window_end_10m"] == str(T0 + 5 * M)
    assert profile["views_10m"] == "4"
    assert profile["events_total"] == "10"
    assert profile["views_1h"] == "40"

    store.write("u1", write(T0 + 6 * M, views=0, events_total=10))  # newer 10m, same total
    profile = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
    assert (profile["window_end_10m"], profile["views_10m"]) == (str(T0 + 6 * M), "0")
    assert profile["window_end_1h"] == str(T0 + 5 * M)  # untouched part stays

    before = redis_client.hgetall(key)
    store.write("u1", write(T0 + 6 * M, views=0, events_total=10))  # a replay
    assert redis_client.hgetall(key) == before
    assert 0 < redis_client.pttl(key) <= 60_000


def test_delete_removes_the_profile(store, redis_client) -> None:  # type: ignore[no-untyped-def]
    store.write("u2", write(T0 + M, views=1, events_total=1))
    assert store.delete("u2") == 1
    assert redis_client.exists(store.key("u2")) == 0


def test_redis_down_is_retried_then_raised() -> None:
    # A port nothing listens on: every call fails to connect.
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    retries: list[int] = []
    slept: list[float] = []
    down = ProfileStore(client, "", 1000, max_wait_s=1.0,
                        on_retry=lambda: retries.append(1), sleep=slept.append)
    with pytest.raises(redis.exceptions.ConnectionError):
        down.write("u3", write(T0 + M, views=1, events_total=1))
    assert len(retries) == len(slept) >= 4
    assert slept[:4] == [0.05, 0.1, 0.2, 0.4]  # exponential backoff
    assert sum(slept) >= 1.0


def test_a_batch_goes_in_one_pipeline_in_order(store, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Newer then older write of one user, a delete then a new write of another, and a
    third user — one round trip; the guard and the order hold inside the batch."""
    store.write("u5", write(T0 + M, views=9, events_total=9))
    batch = [store.write_op("u4", write(T0 + 5 * M, views=4, events_total=10)),
             store.write_op("u4", write(T0 + 3 * M, views=1, events_total=7)),
             store.delete_op("u5"),
             store.write_op("u5", write(T0 + 2 * M, views=2, events_total=2)),
             store.write_op("u6", write(T0 + 2 * M, views=6, events_total=6))]
    single_calls: list[tuple] = []
    plain = redis_client.execute_command
    redis_client.execute_command = lambda *a, **k: single_calls.append(a) or plain(*a, **k)
    try:
        results = store.apply(batch)
    finally:
        redis_client.execute_command = plain
    assert single_calls == []  # nothing outside the pipeline: one round trip
    assert len(results) == 5 and results[2] == 1  # the delete removed one key
    u4 = redis_client.hgetall(store.key("u4"))
    assert (u4[b"window_end_10m"], u4[b"views_10m"]) == (str(T0 + 5 * M).encode(), b"4")
    assert redis_client.hget(store.key("u5"), "views_10m") == b"2"  # deleted, then written
    assert redis_client.hget(store.key("u6"), "views_10m") == b"6"
    assert store.apply([]) == []


def test_a_restarted_redis_without_the_script_is_reloaded(store, redis_client) -> None:  # type: ignore[no-untyped-def]
    store.write("u7", write(T0 + M, views=1, events_total=1))
    redis_client.script_flush()
    store.apply([store.write_op("u7", write(T0 + 2 * M, views=3, events_total=3))])
    assert redis_client.hget(store.key("u7"), "views_10m") == b"3"


def test_an_erase_deletes_the_key_and_reports_it(store, redis_client) -> None:  # type: ignore[no-untyped-def]
    store.write("u8", write(T0 + M, views=1, events_total=1))
    op, key, args = store.erase_op("u8", T0 + 2 * M, had_profile=True)
    assert (op, key, args) == ("erase", store.key("u8"), ["u8", str(T0 + 2 * M), "1"])
    assert store.apply([(op, key, args)]) == [1]
    assert redis_client.exists(store.key("u8")) == 0
    assert store.apply([(op, key, args)]) == [0]  # a replay: already gone
