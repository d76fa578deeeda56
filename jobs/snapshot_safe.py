"""Keyed Python functions whose timers are in every checkpoint (PyFlink 2.2.1, process mode).

In process mode the timers a Python function registers reach the JVM with its bundle's
results and are applied to the timer service by jobs queued on the task thread's
mailbox (FLINK-37084). At a checkpoint barrier PyFlink's operator finishes the open
bundle (``prepareSnapshotPreBarrier``) but does not run those jobs before the snapshot:
the checkpoint holds the bundle's state writes but not the timers it registered, and a
restore from it loses them — notifications that never fire (docs/guarantees.md).

``dev.nudge.flink.SnapshotSafePythonKeyedProcessOperator`` (``jobs/java/``, built by
``make jars`` into ``build/jars/flink/nudge-flink-operators.jar``) is PyFlink's operator
with those timers applied right after the flush, before the snapshot. ``install()``
makes every keyed ``process`` built afterwards in this process use it: it wraps
PyFlink's ``_get_one_input_stream_operator`` and swaps the operator it returns for the
subclass, with the same configuration, function and types. The job graph is otherwise
unchanged (same operator names, uids and state), so checkpoints and savepoints taken
with either operator restore with the other.

It touches PyFlink internals and the subclass is compiled against the 2.2.1 jar, so it
is installed only on that version. ``flink.python_snapshot_safe_timers: false`` leaves
PyFlink's operator in place.
"""

from __future__ import annotations

from typing import Any

from config.settings import SettingsError
from jobs.runtime import NUDGE_JAR, nudge_java_class
from jobs.state_commit import PYFLINK_VERSION  # the version both patches are written for

OPERATOR = "dev.nudge.flink.SnapshotSafePythonKeyedProcessOperator"
PYFLINK_OPERATOR = ("org.apache.flink.streaming.api.operators.python.process."
                    "ExternalPythonKeyedProcessOperator")
JAR = NUDGE_JAR


class SnapshotSafeError(RuntimeError):
    """The snapshot-safe operator was asked for but cannot be used."""


def install() -> None:
    """Make keyed ``process`` calls build the snapshot-safe operator (idempotent).

    Call after the environment is created with the operator's jar on ``pipeline.jars``
    or on the cluster's class path; raises ``SnapshotSafeError`` when PyFlink is not
    2.2.1 or the class cannot be loaded."""
    from pyflink.datastream import data_stream
    from pyflink.fn_execution.flink_fn_execution_pb2 import UserDefinedDataStreamFunction
    from pyflink.version import __version__

    if getattr(data_stream._get_one_input_stream_operator, "snapshot_safe", False):
        return
    if __version__ != PYFLINK_VERSION:
        raise SnapshotSafeError(f"PyFlink {__version__}: the operator is built for "
                                f"{PYFLINK_VERSION} only")
    operator_class()
    original = data_stream._get_one_input_stream_operator
    keyed_process = UserDefinedDataStreamFunction.KEYED_PROCESS  # windows keep PyFlink's

    def snapshot_safe_operator(stream: Any, func: Any, func_type: int,
                               output_type: Any = None) -> tuple[Any, Any]:
        j_operator, j_output_type = original(stream, func, func_type, output_type)
        if func_type == keyed_process and j_operator.getClass().getName() == PYFLINK_OPERATOR:
            j_operator = operator_class().of(j_operator)
        return j_operator, j_output_type

    snapshot_safe_operator.snapshot_safe = True  # type: ignore[attr-defined]
    data_stream._get_one_input_stream_operator = snapshot_safe_operator


def operator_class() -> Any:
    """The Java class through the gateway; ``SnapshotSafeError`` if it is not loadable."""
    try:
        return nudge_java_class(OPERATOR)
    except SettingsError as exc:
        raise SnapshotSafeError(str(exc)) from exc
