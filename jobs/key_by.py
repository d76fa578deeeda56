"""Keying a stream by one of its fields without a Python operator.

PyFlink's ``DataStream.key_by`` runs a Python map of its own (``AddKey``, shown as
``_stream_key_by_map_operator`` in the dashboard) that turns each record into
``(key, record)`` before the Java ``keyBy``. Every record then crosses into Python and
back once more before the keyed Python function, and at every checkpoint barrier that
map's bundle must be flushed into the backpressured pipeline before the barrier may pass
(docs/performance.md). When the key is a field the record already has, the JVM can make
the same ``(key, record)`` rows: ``dev.nudge.flink.KeyedByField`` (jobs/java/), chained
to the operator before it. The keyed stream is the one ``key_by`` builds — same key
type (a one-field row), same partitioning, same state — so the keyed function, its uid
and its state are unchanged.
"""

from __future__ import annotations

from typing import Any

from jobs.runtime import nudge_java_class

KEYED_BY_FIELD = "dev.nudge.flink.KeyedByField"


def key_by_field(stream: Any, field: int, key_type: Any, name: str, uid: str) -> Any:
    """``stream.key_by(lambda row: row[field], key_type)``, with the key made in the JVM.

    `stream` is a PyFlink DataStream of rows (e.g. from ``to_data_stream``); `name` and
    `uid` are the key map's in the job graph."""
    from pyflink.common import Types
    from pyflink.common.typeinfo import _from_java_type
    from pyflink.datastream.data_stream import KeyedStream
    from pyflink.java_gateway import get_gateway

    j_stream = stream._j_data_stream
    row_type = _from_java_type(j_stream.getTransformation().getOutputType())
    keyed_rows = (j_stream
                  .map(nudge_java_class(KEYED_BY_FIELD)(field),
                       Types.ROW([key_type, row_type]).get_java_type_info())
                  .name(name)
                  .uid(uid))
    j_keyed = keyed_rows.keyBy(get_gateway().jvm.KeyByKeySelector(),
                               Types.ROW([key_type]).get_java_type_info())
    return KeyedStream(j_keyed, row_type, stream)
