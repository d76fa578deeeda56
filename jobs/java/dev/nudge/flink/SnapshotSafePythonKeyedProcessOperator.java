package dev.nudge.flink;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.streaming.api.functions.python.DataStreamPythonFunctionInfo;
import org.apache.flink.streaming.api.operators.python.process.AbstractExternalDataStreamPythonFunctionOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonKeyedProcessOperator;

/**
 * PyFlink's keyed process operator (process mode) with its Python timers in every
 * checkpoint.
 *
 * <p>In Flink 2.2.1 the timers a Python function registers reach the JVM with the bundle's
 * results and are applied to the timer service by mailbox jobs on the task thread
 * (FLINK-37084). {@code prepareSnapshotPreBarrier} finishes the bundle but does not run
 * those jobs, so the timers of the bundle flushed at a barrier are registered only after the
 * snapshot: the checkpoint holds the bundle's state writes but not its timers, and a restore
 * from it loses them. Only a watermark drained them first. This operator applies them right
 * after the flush, before the snapshot (the queued jobs then find them registered and do
 * nothing). See docs/guarantees.md.
 *
 * <p>Built against the apache-flink 2.2.1 wheel; {@code jobs/snapshot_safe.py} puts it in
 * place of PyFlink's operator, on that version only.
 */
public class SnapshotSafePythonKeyedProcessOperator<OUT>
        extends ExternalPythonKeyedProcessOperator<OUT> {

    private static final long serialVersionUID = 1L;

    public SnapshotSafePythonKeyedProcessOperator(
            Configuration config,
            DataStreamPythonFunctionInfo pythonFunctionInfo,
            RowTypeInfo inputTypeInfo,
            TypeInformation<OUT> outputTypeInfo) {
        super(config, pythonFunctionInfo, inputTypeInfo, outputTypeInfo);
    }

    /** The same operator as PyFlink built it, as this class. */
    public static <OUT> SnapshotSafePythonKeyedProcessOperator<OUT> of(
            ExternalPythonKeyedProcessOperator<OUT> operator) {
        return new SnapshotSafePythonKeyedProcessOperator<>(
                operator.getConfiguration(),
                operator.getPythonFunctionInfo(),
                (RowTypeInfo) operator.getInputTypeInfo(),
                operator.getProducedType());
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        super.prepareSnapshotPreBarrier(checkpointId);
        drainUnregisteredTimers();
    }

    @Override
    public void finish() throws Exception {
        super.finish();
        drainUnregisteredTimers();
    }

    /** Chaining Python operators copies the first one: keep the copy snapshot-safe. */
    @Override
    public <T> AbstractExternalDataStreamPythonFunctionOperator<T> copy(
            DataStreamPythonFunctionInfo pythonFunctionInfo, TypeInformation<T> outputTypeInfo) {
        return new SnapshotSafePythonKeyedProcessOperator<>(
                config, pythonFunctionInfo, (RowTypeInfo) getInputTypeInfo(), outputTypeInfo);
    }
}
