"""jobs.state_commit: the pipelined commit sends what PyFlink's own commit sends, in the
same order, and waits only after the last send.

PyFlink's keyed state backend and Beam's caching state handler are the real ones; only
the JVM end of the state channel is a recorder (``Channel``), so the test sees every
request and every wait in order. That the jobs' state is right with the patch in place
is the pipeline and integration tests' business (the functions install it in ``open``).
"""

from __future__ import annotations

from typing import Any

import pytest
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.worker.sdk_worker import (
    GlobalCachingStateHandler,
    StateHandler,
    _Future,
)
from apache_beam.runners.worker.statecache import StateCache
from pyflink.fn_execution import coders
from pyflink.fn_execution.state_impl import RemoteKeyedStateBackend

from jobs import state_commit

ORIGINAL = getattr(RemoteKeyedStateBackend.commit, "replaced", RemoteKeyedStateBackend.commit)


class Answer(_Future):  # type: ignore[misc]
    """A request's future, answered at once: records the wait when someone waits."""

    def __init__(self, log: list[tuple[Any, ...]], key: bytes) -> None:
        super().__init__()
        self.log, self.key = log, key
        self.set(beam_fn_api_pb2.StateResponse())

    def get(self, timeout: float | None = None) -> beam_fn_api_pb2.StateResponse:
        self.log.append(("wait", self.key))
        return super().get(timeout)


class Channel(StateHandler):  # type: ignore[misc]
    """The JVM end of the state channel: every key starts empty; requests are logged."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    def process_instruction_id(self, bundle_id: str) -> Any:
        raise NotImplementedError

    def get_raw(self, state_key: Any, continuation_token: Any = None) -> Any:
        return b"", None

    def append_raw(self, state_key: Any, data: bytes) -> Answer:
        self.log.append(("append", state_key.bag_user_state.key, data))
        return Answer(self.log, state_key.bag_user_state.key)

    def clear(self, state_key: Any) -> Answer:
        self.log.append(("clear", state_key.bag_user_state.key))
        return Answer(self.log, state_key.bag_user_state.key)

    def done(self) -> None:
        pass


def bundle(commit: Any, channel: Channel) -> list[tuple[Any, ...]]:
    """Three users' values written (one of them twice), one cleared, one only read, then
    the bundle's commit; a second commit must send nothing."""
    handler = GlobalCachingStateHandler(StateCache(0), channel)
    backend = RemoteKeyedStateBackend(handler, coders.PickleCoder(), None, 1000, 1000, 1000)
    state = backend.get_value_state("user", coders.PickleCoder())
    for user, value in [("a", 1), ("b", 2), ("a", 3), ("c", None), ("d", "read"), ("e", 5)]:
        backend.set_current_key(user)
        state.value()
        if value is None:
            state.clear()
        elif value != "read":
            state.update(value)
    commit(backend)
    log = list(channel.log)
    channel.log.clear()
    commit(backend)
    assert channel.log == [], "a second commit sent again"
    return log


def sends(log: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [entry for entry in log if entry[0] != "wait"]


def test_sends_what_pyflink_sends_in_the_same_order() -> None:
    own, pipelined = bundle(ORIGINAL, Channel()), bundle(state_commit.pipelined_commit,
                                                         Channel())
    assert sends(own), "the bundle wrote nothing"
    assert sends(pipelined) == sends(own)
    waited = {entry[1] for entry in pipelined if entry[0] == "wait"}
    assert waited == {entry[1] for entry in sends(own)}  # every changed key acknowledged


def test_waits_only_after_the_last_send() -> None:
    own, pipelined = bundle(ORIGINAL, Channel()), bundle(state_commit.pipelined_commit,
                                                         Channel())
    kinds = [entry[0] for entry in pipelined]
    assert "wait" not in kinds[:len(sends(pipelined))]
    # PyFlink's own commit waits for each key before sending the next
    own_kinds = [entry[0] for entry in own]
    assert own_kinds.index("wait") < len(own_kinds) - own_kinds[::-1].index("append") - 1


def test_install_patches_once_and_only_the_pinned_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pyflink.version

    monkeypatch.setattr(RemoteKeyedStateBackend, "commit", ORIGINAL)
    monkeypatch.setattr(pyflink.version, "__version__", "2.3.0")
    assert state_commit.install() is False
    assert RemoteKeyedStateBackend.commit is ORIGINAL
    monkeypatch.setattr(pyflink.version, "__version__", state_commit.PYFLINK_VERSION)
    assert state_commit.install() is True
    assert RemoteKeyedStateBackend.commit is state_commit.pipelined_commit
    assert state_commit.install() is True
    assert state_commit.pipelined_commit.replaced is ORIGINAL  # type: ignore[attr-defined]
