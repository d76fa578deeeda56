"""Writes ``profile:<user_id>`` hashes to Redis: idempotent, guarded, retried.

Every write is one ``EVALSHA`` of ``GUARDED_WRITE`` (many of them pipelined in one round
trip by ``ProfileStore.apply``), which sets each part of the hash only when it is not
older than what Redis holds:

    part          guard field        written when
    10m window    window_end_10m     new window_end_10m >= stored
    1h window     window_end_1h      new window_end_1h  >= stored
    lifetime      events_total       new events_total   >= stored   (+ segments)

Values are absolute (never INCR), so writing the same thing twice — a replay after a
failure — changes nothing, and an older write arriving late cannot replace a newer one.
The key's TTL is refreshed on every write.

Redis being slow or down is retried with exponential backoff up to ``max_wait_s``; then
the error is raised, the job fails and restarts from its last checkpoint (nothing is
dropped, and a checkpoint is never blocked for longer than ``max_wait_s``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from udfs.profile import ProfileWrite

GUARDED_WRITE = """
-- KEYS[1] profile key; ARGV[1] ttl ms; ARGV[2] number of parts; then per part:
-- guard field, guard value, number of fields, field, value, field, value, ...
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local guard, value, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local first = i + 3
  i = first + 2 * n
  local current = tonumber(redis.call('HGET', KEYS[1], guard))
  if current == nil or current <= value then
    redis.call('HSET', KEYS[1], guard, ARGV[first - 2], unpack(ARGV, first, i - 1))
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


def script_args(write: ProfileWrite, ttl_ms: int) -> list[str]:
    """The ARGV of ``GUARDED_WRITE`` for one write."""
    parts: list[tuple[str, int, dict[str, str]]] = []
    for suffix, figures in write.windows:
        fields = figures.fields(suffix)
        guard = f"window_end_{suffix}"
        parts.append((guard, figures.end, {k: v for k, v in fields.items() if k != guard}))
    lifetime = {k: v for k, v in write.lifetime.items() if k != "events_total"}
    parts.append(("events_total", write.guard_events_total, lifetime))
    args = [str(ttl_ms), str(len(parts))]
    for guard, value, fields in parts:
        args += [guard, str(value), str(len(fields))]
        for name, text in fields.items():
            args += [name, text]
    return args


WRITE, DELETE, ERASE = "write", "delete", "erase"


class ProfileStore:
    """Profile writes and deletes against one Redis, pipelined and retried.

    ``apply`` sends a whole batch — ``(op, key, args)`` with op ``write`` (the ARGV of
    ``GUARDED_WRITE``), ``delete`` (consent withdrawn) or ``erase`` (an erasure request;
    args ``[user_id, requested_at, had_profile]``, see ``erase_op``) — in one round trip.
    Every operation is idempotent, so a batch that failed half-way is simply sent again.
    """

    def __init__(self, client: Any, key_prefix: str, ttl_ms: int, *, max_wait_s: float = 30.0,
                 on_retry: Callable[[], None] = lambda: None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.ttl_ms = ttl_ms
        self.max_wait_s = max_wait_s
        self.on_retry = on_retry
        self.sleep = sleep
        self._sha: str | None = None

    def key(self, user_id: str) -> str:
        return f"{self.key_prefix}profile:{user_id}"

    def write_op(self, user_id: str, write: ProfileWrite) -> tuple[str, str, list[str]]:
        return WRITE, self.key(user_id), script_args(write, self.ttl_ms)

    def delete_op(self, user_id: str) -> tuple[str, str, list[str]]:
        return DELETE, self.key(user_id), []

    def erase_op(self, user_id: str, requested_at: int,
                 had_profile: bool) -> tuple[str, str, list[str]]:
        """Delete the user's keys for an erasure request; ``had_profile`` says whether
        the job held a profile for the user (so the audit names the key even when a
        replay finds it already gone)."""
        return ERASE, self.key(user_id), [user_id, str(requested_at), str(int(had_profile))]

    def write(self, user_id: str, write: ProfileWrite) -> None:
        self.apply([self.write_op(user_id, write)])

    def delete(self, user_id: str) -> int:
        """Remove the user's profile; returns the number of keys deleted."""
        return int(self.apply([self.delete_op(user_id)])[0])

    def apply(self, batch: Sequence[tuple[str, str, Sequence[str]]]) -> list[Any]:
        """Send `batch` in one pipeline (in order); the results, one per operation."""
        if not batch:
            return []
        return list(self._retry(lambda: self._send(batch)))

    def _send(self, batch: Sequence[tuple[str, str, Sequence[str]]]) -> list[Any]:
        from redis.exceptions import NoScriptError

        if self._sha is None:
            self._sha = self.client.script_load(GUARDED_WRITE)
        try:
            return self._pipeline(batch)
        except NoScriptError:  # Redis restarted and lost its script cache
            self._sha = self.client.script_load(GUARDED_WRITE)
            return self._pipeline(batch)

    def _pipeline(self, batch: Sequence[tuple[str, str, Sequence[str]]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for op, key, args in batch:
            if op == WRITE:
                pipe.evalsha(self._sha, 1, key, *args)
            elif op in (DELETE, ERASE):
                pipe.delete(key)
            else:
                raise ValueError(f"unknown profile store operation {op!r}")
        return list(pipe.execute())

    def _retry(self, call: Callable[[], Any]) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        delay, waited = 0.05, 0.0
        while True:
            try:
                return call()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if waited >= self.max_wait_s:
                    raise
                self.on_retry()
                self.sleep(delay)
                waited += delay
                delay = min(delay * 2, 2.0)
