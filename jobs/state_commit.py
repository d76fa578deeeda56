"""Pipelined end-of-bundle state commit for the Python worker's keyed state.

At the end of every bundle (every second, and at every watermark and checkpoint barrier
that reaches a keyed Python operator) PyFlink 2.2.1 writes back each key's changed state
with ``RemoteKeyedStateBackend.commit``. That calls Beam's
``SynchronousBagRuntimeState.commit`` once per changed key, and each call **waits for the
JVM's answer before the next key is sent**: with many users, nearly every signal is its
own key in its bundle, so a bundle of n signals ends with n round trips one after the
other. py-spy put 41 % of the trigger function's bundle thread there
(docs/performance.md, fifth round).

``install()`` replaces that method with one that sends every changed key's requests
first and then waits for all the answers. The requests travel in order on the one gRPC
state stream and the JVM applies them in that order, exactly as before; the method still
returns only when every write is acknowledged, so a checkpoint barrier still follows
the bundle's state (docs/guarantees.md). Only the waiting changes: one round trip per
bundle instead of one per key.

It touches PyFlink internals, so it is installed only on the version it was written and
tested against (``PYFLINK_VERSION``); on any other version ``install`` leaves PyFlink
alone and says so. ``flink.python_pipelined_state_commit: false`` switches it off.
"""

from __future__ import annotations

import logging
from typing import Any

PYFLINK_VERSION = "2.2.1"

log = logging.getLogger(__name__)


def install() -> bool:
    """Patch ``RemoteKeyedStateBackend.commit`` in this process (idempotent). Returns
    whether the pipelined commit is in place."""
    from pyflink.fn_execution.state_impl import RemoteKeyedStateBackend
    from pyflink.version import __version__

    if getattr(RemoteKeyedStateBackend.commit, "pipelined", False):
        return True
    if __version__ != PYFLINK_VERSION:
        log.warning("PyFlink %s, not %s: the state commit stays one round trip per key",
                    __version__, PYFLINK_VERSION)
        return False
    pipelined_commit.replaced = RemoteKeyedStateBackend.commit  # type: ignore[attr-defined]
    RemoteKeyedStateBackend.commit = pipelined_commit
    return True


def use(enabled: bool, metrics_group: Any) -> None:
    """For a keyed function's ``open``: install the pipelined commit when ``enabled``
    (``flink.python_pipelined_state_commit``) and report which commit runs in the gauge
    ``pipelined_state_commit`` (1 pipelined, 0 PyFlink's own)."""
    pipelined = enabled and install()
    metrics_group.gauge("pipelined_state_commit", lambda: int(pipelined))


def pipelined_commit(backend: Any) -> None:
    """``RemoteKeyedStateBackend.commit`` with the waits moved after the sends: the same
    states in the same order, each bag state's clear/extend sent without waiting, then
    every answer awaited. Other kinds of state commit as before."""
    from apache_beam.runners.worker.bundle_processor import SynchronousBagRuntimeState

    answers: list[Any] = []

    def send(internal_state: Any) -> None:
        if type(internal_state) is not SynchronousBagRuntimeState:
            backend.commit_internal_state(internal_state)
            return
        answer = None
        if internal_state._cleared:
            answer = internal_state._state_handler.clear(internal_state._state_key)
        if internal_state._added_elements:
            answer = internal_state._state_handler.extend(
                internal_state._state_key, internal_state._value_coder.get_impl(),
                internal_state._added_elements)
        if answer is not None:
            answers.append(answer)
        internal_state._cleared = False
        internal_state._added_elements = []

    for internal_state in backend._internal_state_cache:
        send(internal_state)
    for name, state in backend._all_states.items():
        if (name, backend._encoded_current_key, backend._encode_namespace(state.namespace)) \
                not in backend._internal_state_cache:
            send(state._internal_state)
    for answer in answers:
        answer.get()


pipelined_commit.pipelined = True  # type: ignore[attr-defined]
