"""Does a PyFlink keyed process function keep its event-time timers across a restore?

A reproducer outside nudge for the loss in docs/guarantees.md: no Kafka, no SQL, no
nudge code (unless ``--snapshot-safe``). A bounded ``NumberSequenceSource`` 0..N-1
(event time = the value) is keyed by ``value % keys``; each element bumps a count and a
small dict in two ``ValueState`` objects and registers one event-time timer at
``value + --timer-delay``. Each firing appends its timestamp to a file (appends survive
restarts; replays may repeat a line). At each value of ``--fail-at`` the function raises
once, at the first element at or after it that comes after a completed checkpoint, so
the job restores from a checkpoint. Afterwards every timer must have fired once at
least; the script prints what is missing and exits 1 if anything is.

Deterministic form (tests/pipeline/test_timer_restore.py): a timer delay beyond the
input holds every timer until the end of input, so a timer missing from the restored
checkpoint can never fire; ``--rate`` and a small ``--bundle-size`` keep data flowing
while checkpoints complete. PyFlink 2.2.1's operator loses the timers of the bundle
flushed at the restored checkpoint's barrier; ``--snapshot-safe`` uses nudge's operator
(jobs/snapshot_safe.py, needs ``make jars``), which loses none:

    .venv/bin/python scripts/timer_restore_check.py --events 120000 --rate 2500 \\
        --bundle-size 2000 --timer-delay 1000000000 --fail-at 40000,80000 [--snapshot-safe]

Runs on the embedded minicluster (~1–6 min). Other settings as in nudge's overlay: bundle
time 1 s, state cache 100,000, checkpoints every 2 s, heap state backend.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from typing import Any

from pyflink.common import Configuration, Types, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import KeyedProcessFunction, MapFunction, StreamExecutionEnvironment
from pyflink.datastream.connectors.number_seq import NumberSequenceSource
from pyflink.datastream.state import ValueStateDescriptor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jobs import snapshot_safe  # noqa: E402


class ValueAsTimestamp(TimestampAssigner):  # type: ignore[misc]
    def extract_timestamp(self, value: Any, record_timestamp: int) -> int:
        return int(value)


class Throttle(MapFunction):  # type: ignore[misc]
    """At most `rate` elements/s per subtask, so checkpoints complete while data flows
    (unthrottled, the first barrier queues behind the whole backlog)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def open(self, runtime_context: Any) -> None:
        self.started = time.monotonic()
        self.count = 0

    def map(self, value: int) -> int:
        self.count += 1
        ahead = self.count / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)
        return value


class CountAndTimer(KeyedProcessFunction):  # type: ignore[misc]
    def __init__(self, out_dir: str, fail_at: frozenset[int], delay: int) -> None:
        self.out_dir = out_dir
        self.fail_at = fail_at
        self.delay = delay

    def open(self, runtime_context: Any) -> None:
        self.count = runtime_context.get_state(
            ValueStateDescriptor("count", Types.PICKLED_BYTE_ARRAY()))
        self.pending = runtime_context.get_state(
            ValueStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY()))
        name = f"fired.{runtime_context.get_index_of_this_subtask()}.{os.getpid()}"
        self.out = open(os.path.join(self.out_dir, name), "a", buffering=1)  # noqa: SIM115
        self.failed: set[int] = set()  # values of --fail-at whose marker file was seen

    def process_element(self, value: int, ctx: Any) -> Any:
        if any(f <= value and f not in self.failed for f in self.fail_at):
            self.fail_if_due(value)
        self.count.update((self.count.value() or 0) + 1)
        pending = self.pending.value() or {}
        pending[value + self.delay] = value
        self.pending.update(pending)
        ctx.timer_service().register_event_time_timer(value + self.delay)
        return iter(())

    def fail_if_due(self, value: int) -> None:
        """Fail once per value of --fail-at, at the first element at or after it that comes
        after a completed checkpoint, so the restore always starts from a checkpoint. The
        markers are files: every subtask, and a worker started after the restore, sees
        them; once seen, a value is not looked up again for every element."""
        self.failed |= {f for f in self.fail_at
                        if os.path.exists(os.path.join(self.out_dir, f"failed.{f}"))}
        due = [f for f in self.fail_at if f <= value and f not in self.failed]
        if due and glob.glob(os.path.join(self.out_dir, "checkpoints", "*", "chk-*",
                                          "_metadata")):
            open(os.path.join(self.out_dir, f"failed.{min(due)}"), "w").close()
            raise RuntimeError(f"injected failure at {value}")

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        pending = self.pending.value() or {}
        value = pending.pop(timestamp, None)
        if pending:
            self.pending.update(pending)
        else:
            self.pending.clear()
        self.out.write(f"{timestamp} {value}\n")
        return iter(())

    def close(self) -> None:
        self.out.close()


def run_job(args: argparse.Namespace, out_dir: str) -> None:
    conf = Configuration()
    if args.snapshot_safe:
        conf.set_string("pipeline.jars", "file://" + os.path.abspath(snapshot_safe.JAR))
    for key, value in {
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.execution-mode": args.mode,
        "python.fn-execution.bundle.size": str(args.bundle_size),
        "python.fn-execution.bundle.time": "1000",
        "python.state.cache-size": "100000",
        "execution.checkpointing.interval": "2 s",
        "execution.checkpointing.dir": "file://" + os.path.join(out_dir, "checkpoints"),
        "execution.checkpointing.tolerable-failed-checkpoints": "100",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "20",
        "restart-strategy.fixed-delay.delay": "1 s",
    }.items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    if args.snapshot_safe:
        snapshot_safe.install()
    env.set_parallelism(args.parallelism)
    fail_at = frozenset(int(v) for v in args.fail_at.split(",") if v)
    watermarks = (WatermarkStrategy.for_monotonous_timestamps()
                  .with_timestamp_assigner(ValueAsTimestamp()))
    stream = env.from_source(NumberSequenceSource(0, args.events - 1), watermarks, "sequence")
    if args.rate:
        stream = stream.map(Throttle(args.rate / args.parallelism), Types.LONG())
    (stream
     .key_by(lambda v: f"k{v % args.keys}", key_type=Types.STRING())
     .process(CountAndTimer(out_dir, fail_at, args.timer_delay)).name("count and timer"))
    env.execute("timer restore check")


def missing_ranges(missing: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for ts in missing:
        if ranges and ranges[-1][1] == ts - 1:
            ranges[-1] = (ranges[-1][0], ts)
        else:
            ranges.append((ts, ts))
    return ranges


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--fail-at", default="100000,200000,300000")
    parser.add_argument("--bundle-size", type=int, default=100_000)
    parser.add_argument("--mode", default="process", choices=["process", "thread"])
    parser.add_argument("--timer-delay", type=int, default=1000,
                        help="each timer fires this long (event time) after its element; "
                        "a delay beyond --events holds every timer until the end of input")
    parser.add_argument("--rate", type=float, default=0,
                        help="throttle the source to this many elements/s (0: no limit)")
    parser.add_argument("--snapshot-safe", action="store_true",
                        help="use nudge's snapshot-safe operator (jobs/snapshot_safe.py)")
    args = parser.parse_args()
    out_dir = tempfile.mkdtemp(prefix="timer-restore-")
    started = time.time()
    run_job(args, out_dir)
    fired: set[int] = set()
    for path in glob.glob(os.path.join(out_dir, "fired.*")):
        with open(path) as lines:
            fired.update(int(line.split()[0]) for line in lines)
    missing = sorted(set(range(args.timer_delay, args.events + args.timer_delay)) - fired)
    print(json.dumps({
        "events": args.events, "parallelism": args.parallelism, "mode": args.mode,
        "timer_delay": args.timer_delay, "snapshot_safe": args.snapshot_safe,
        "restores": len(glob.glob(os.path.join(out_dir, "failed.*"))),
        "seconds": round(time.time() - started, 1), "timers_fired": len(fired),
        "timers_missing": len(missing), "missing_ranges": missing_ranges(missing)[:20],
        "output": out_dir}))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
