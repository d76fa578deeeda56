package dev.nudge.flink;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.types.Row;

/**
 * A row as {@code (key, row)}, the key being one of its fields: the shape a keyed Python
 * function of PyFlink reads. PyFlink's {@code key_by} makes it with a Python map of its own
 * per record, an extra Python operator that every record crosses and that flushes its
 * bundle at every checkpoint barrier; this makes the same rows in the JVM, chained to
 * the operator before it. Plumbing only: the key is a field that is already there.
 */
public final class KeyedByField implements MapFunction<Row, Row> {

    private static final long serialVersionUID = 1L;

    private final int field;

    public KeyedByField(int field) {
        this.field = field;
    }

    @Override
    public Row map(Row row) {
        return Row.of(row.getField(field), row);
    }
}
