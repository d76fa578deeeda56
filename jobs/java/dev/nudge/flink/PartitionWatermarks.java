package dev.nudge.flink;

import java.time.Instant;
import java.util.HashMap;
import java.util.Map;
import org.apache.flink.api.common.eventtime.TimestampAssigner;
import org.apache.flink.api.common.eventtime.TimestampAssignerSupplier;
import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.eventtime.WatermarkGenerator;
import org.apache.flink.api.common.eventtime.WatermarkGeneratorSupplier;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.Gauge;
import org.apache.flink.types.Row;
import org.apache.flink.util.clock.RelativeClock;

/**
 * Event time from the decoded records, with a watermark per Kafka partition: what the
 * Kafka source does per split, applied after the Python decode stage, so that only the
 * validated {@code ts} of accepted records moves it.
 *
 * <p>Rows carry a time field (TIMESTAMP_LTZ, the record's normalized {@code ts}), the
 * partition the record came from, and an error field (the rejection reason, null for an
 * accepted record). Per partition the generator keeps the highest time of its accepted
 * records; the watermark is the lowest of those over the partitions that are not idle,
 * minus {@code lagMs}. A rejected record never moves it. A partition is idle when no
 * accepted record came from it for {@code idleMs} of Flink's input activity clock (wall
 * clock, paused while the operator is backpressured); a partition seen but without an
 * accepted record yet holds the watermark until then, as does a subtask that has seen no
 * record at all since it began to run (its first periodic emit, once the whole chain and
 * its Python workers are open). When every partition is idle, so is the output.
 *
 * <p>Like the source's per-split watermarks this is not checkpointed: after a restore each
 * partition starts again from its first record. No trigger or profile logic lives here:
 * only time bookkeeping, which Flink offers per split at the source but not after an
 * operator.
 */
public final class PartitionWatermarks implements WatermarkStrategy<Row> {

    private static final long serialVersionUID = 1L;

    private final int timeField;
    private final int partitionField;
    private final int errorField;
    private final String counters; // null: none
    private final long lagMs;
    private final long idleMs;

    /**
     * With {@code counters} not null, the operator also counts what it sees, as
     * {@code nudge.<counters>_parsed} (accepted records) and {@code nudge.<counters>_rejected}:
     * the decode runs in SQL and in Python, and this is where both meet.
     */
    public PartitionWatermarks(
            int timeField,
            int partitionField,
            int errorField,
            long lagMs,
            long idleMs,
            String counters) {
        if (lagMs < 0 || idleMs <= 0) {
            throw new IllegalArgumentException(
                    "lagMs must be >= 0 and idleMs > 0, got " + lagMs + " and " + idleMs);
        }
        this.timeField = timeField;
        this.partitionField = partitionField;
        this.errorField = errorField;
        this.counters = counters;
        this.lagMs = lagMs;
        this.idleMs = idleMs;
    }

    @Override
    public TimestampAssigner<Row> createTimestampAssigner(TimestampAssignerSupplier.Context context) {
        return (row, previous) -> {
            Object time = row.getField(timeField);
            return time == null ? 0L : ((Instant) time).toEpochMilli();
        };
    }

    @Override
    public WatermarkGenerator<Row> createWatermarkGenerator(
            WatermarkGeneratorSupplier.Context context) {
        Counter parsed = null;
        Counter rejected = null;
        if (counters != null) {
            parsed = context.getMetricGroup().addGroup("nudge").counter(counters + "_parsed");
            rejected = context.getMetricGroup().addGroup("nudge").counter(counters + "_rejected");
        }
        Generator generator =
                new Generator(this, context.getInputActivityClock(), parsed, rejected);
        // How long this subtask's event time has stood still: wall-clock ms since its
        // watermark last rose (or since it began to run, when it has none yet). On a
        // quiet topic nothing moves it until the next record (docs/operations.md).
        context.getMetricGroup()
                .addGroup("nudge")
                .gauge("event_time_stalled_ms", (Gauge<Long>) generator::stalledMs);
        return generator;
    }

    /** One partition's bookkeeping. */
    private static final class Partition {
        long maxTime = Long.MIN_VALUE; // highest time of an accepted record
        long lastActiveMs; // activity clock at the last periodic emit that followed one
        boolean acceptedSinceEmit = true; // a new partition counts as active
    }

    static final class Generator implements WatermarkGenerator<Row> {
        private final PartitionWatermarks spec;
        private final Map<Integer, Partition> partitions = new HashMap<>();
        // Flink's input activity clock: it stands still while the operator is
        // backpressured, so a slow pipeline does not make its partitions idle.
        private final RelativeClock clock;
        // When the subtask began to run: its first periodic emit, which comes only once
        // the whole chain is open (the Python workers up), not at construction.
        private long startedMs = -1;
        private boolean idle;
        private long emitted = Long.MIN_VALUE; // the highest watermark emitted
        private volatile long lastRiseWallMs = -1; // wall clock when it last rose

        private final Counter parsed; // null: not counted
        private final Counter rejected;

        Generator(PartitionWatermarks spec, RelativeClock clock, Counter parsed, Counter rejected) {
            this.spec = spec;
            this.clock = clock;
            this.parsed = parsed;
            this.rejected = rejected;
        }

        @Override
        public void onEvent(Row row, long time, WatermarkOutput output) {
            Integer key = (Integer) row.getField(spec.partitionField);
            boolean rejected = row.getField(spec.errorField) != null;
            if (parsed != null) {
                (rejected ? this.rejected : parsed).inc();
            }
            Partition partition = partitions.get(key);
            if (partition == null) {
                partition = new Partition(); // its activity starts at the next emit
                partitions.put(key, partition);
            }
            if (rejected) {
                return; // rejected: never moves event time, never keeps a partition active
            }
            if (time > partition.maxTime) {
                partition.maxTime = time;
            }
            partition.acceptedSinceEmit = true;
            if (idle) {
                idle = false;
                output.markActive();
            }
        }

        @Override
        public void onPeriodicEmit(WatermarkOutput output) {
            long now = clock.relativeTimeMillis();
            if (startedMs < 0) {
                startedMs = now;
                lastRiseWallMs = System.currentTimeMillis();
            }
            if (partitions.isEmpty()) {
                if (now - startedMs >= spec.idleMs) {
                    markIdle(output);
                }
                return;
            }
            long lowest = Long.MAX_VALUE;
            boolean anyActive = false;
            for (Partition partition : partitions.values()) {
                if (partition.acceptedSinceEmit) {
                    partition.acceptedSinceEmit = false;
                    partition.lastActiveMs = now;
                }
                if (now - partition.lastActiveMs < spec.idleMs) {
                    anyActive = true;
                    lowest = Math.min(lowest, partition.maxTime);
                }
            }
            if (!anyActive) {
                markIdle(output);
            } else if (lowest != Long.MIN_VALUE) {
                if (idle) {
                    idle = false;
                    output.markActive();
                }
                long watermark = lowest - spec.lagMs;
                if (watermark > emitted) {
                    emitted = watermark;
                    lastRiseWallMs = System.currentTimeMillis();
                }
                output.emitWatermark(new Watermark(watermark));
            }
        }

        /** Wall-clock ms since the watermark last rose; 0 before the subtask runs. */
        long stalledMs() {
            long since = lastRiseWallMs;
            return since < 0 ? 0L : System.currentTimeMillis() - since;
        }

        private void markIdle(WatermarkOutput output) {
            if (!idle) {
                idle = true;
                output.markIdle();
            }
        }
    }
}
