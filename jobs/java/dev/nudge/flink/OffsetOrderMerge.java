package dev.nudge.flink;

import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Map;
import org.apache.flink.api.common.functions.FilterFunction;
import org.apache.flink.runtime.state.StateSnapshotContext;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.TwoInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * Puts the rows of a stage that sends some records through Python back in Kafka offset
 * order, per partition.
 *
 * <p>The source stage decodes JSON in SQL and hands the rest (Avro, rare JSON) to a Python
 * table function, whose results come back up to a bundle later than the SQL rows that
 * followed them in the topic. Input 1 is every record in topic order, each either decoded
 * or a placeholder (its lane field not null) for a record that Python decodes; input 2 is
 * Python's results, in the same order as their placeholders. Per partition, rows behind a
 * placeholder wait until its result comes, so that everything after this operator —
 * watermarks, de-duplication ("the first of two records with one event_id"), lateness —
 * sees the records in the order of the topic, as if one decoder had read them all.
 *
 * <p>Nothing is buffered across a checkpoint with aligned checkpoints: the barrier of input
 * 1 waits for that of input 2, and the Python operator forwards its barrier only after
 * every result of the records before it. A snapshot that finds a row waiting (unaligned
 * checkpoints, which the settings refuse) fails the checkpoint loudly instead of losing it.
 * Plumbing only: no trigger or profile logic.
 */
public final class OffsetOrderMerge extends AbstractStreamOperator<Row>
        implements TwoInputStreamOperator<Row, Row, Row> {

    private static final long serialVersionUID = 1L;

    private final int partitionField;
    private final int offsetField;
    private final int laneField;
    private transient Map<Integer, Lanes> partitions;

    /** One partition's rows in flight. */
    private static final class Lanes {
        // input 1's rows from the first placeholder without its result on, in order; a
        // placeholder is replaced by its result when that comes (so the head is always a
        // placeholder still waiting)
        final ArrayDeque<Row> waiting = new ArrayDeque<>();
        final ArrayDeque<Boolean> ready = new ArrayDeque<>();
        // results that came before their placeholder (the two inputs are separate
        // channels: input 2 may be ahead of input 1)
        final ArrayDeque<Row> early = new ArrayDeque<>();

        boolean isEmpty() {
            return waiting.isEmpty() && early.isEmpty();
        }
    }

    public OffsetOrderMerge(int partitionField, int offsetField, int laneField) {
        this.partitionField = partitionField;
        this.offsetField = offsetField;
        this.laneField = laneField;
    }

    /** The rows of input 1 that are placeholders: what goes to Python. */
    public static FilterFunction<Row> placeholders(int laneField) {
        return row -> row.getField(laneField) != null;
    }

    @Override
    public void open() throws Exception {
        super.open();
        partitions = new HashMap<>();
    }

    private Lanes lanes(Row row) {
        return partitions.computeIfAbsent((Integer) row.getField(partitionField), p -> new Lanes());
    }

    @Override
    public void processElement1(StreamRecord<Row> element) {
        Row row = element.getValue();
        Lanes lanes = lanes(row);
        Row out = row;
        if (row.getField(laneField) != null) { // a placeholder
            if (lanes.early.isEmpty()) {
                lanes.waiting.addLast(Row.copy(row)); // rows may be reused upstream
                lanes.ready.addLast(false);
                return;
            }
            out = matching(lanes.early.pollFirst(), row);
        }
        if (lanes.waiting.isEmpty()) {
            output.collect(new StreamRecord<>(out));
        } else {
            lanes.waiting.addLast(out == row ? Row.copy(row) : out);
            lanes.ready.addLast(true);
        }
    }

    @Override
    public void processElement2(StreamRecord<Row> element) {
        Row result = element.getValue();
        Lanes lanes = lanes(result);
        if (lanes.waiting.isEmpty()) {
            lanes.early.addLast(Row.copy(result));
            return;
        }
        matching(result, lanes.waiting.pollFirst());
        lanes.ready.pollFirst();
        output.collect(new StreamRecord<>(result));
        while (!lanes.waiting.isEmpty() && lanes.ready.peekFirst()) {
            lanes.ready.pollFirst();
            output.collect(new StreamRecord<>(lanes.waiting.pollFirst()));
        }
    }

    /** `result`, checked to be the one of `placeholder` (results come in order). */
    private Row matching(Row result, Row placeholder) {
        Object offset = placeholder.getField(offsetField);
        if (!offset.equals(result.getField(offsetField))) {
            throw new IllegalStateException(
                    "Python result for partition " + result.getField(partitionField)
                            + " offset " + result.getField(offsetField)
                            + " where the placeholder of offset " + offset + " is next");
        }
        return result;
    }

    @Override
    public void snapshotState(StateSnapshotContext context) throws Exception {
        super.snapshotState(context);
        for (Map.Entry<Integer, Lanes> entry : partitions.entrySet()) {
            if (!entry.getValue().isEmpty()) {
                throw new IllegalStateException(
                        "rows of partition " + entry.getKey()
                                + " still wait for Python at a checkpoint: only aligned"
                                + " checkpoints keep this stage exactly once");
            }
        }
    }
}
