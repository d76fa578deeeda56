"""Python timers survive a restore: the timers a keyed Python function registered in the
bundle flushed at a checkpoint barrier are in that checkpoint (jobs/snapshot_safe.py).

Runs scripts/timer_restore_check.py on a local minicluster: a throttled sequence keyed
by value, one event-time timer per element set far past the end of the input (so each
timer can only fire from state: at the end of input, after the restore), and one
injected failure after a completed checkpoint, so the job restores from it. With
PyFlink 2.2.1's own operator the same run loses the timers of the bundles flushed at
the restored checkpoint's barrier (4,000 of 120,000 and 71,283 of 200,000 in two runs,
docs/guarantees.md); with nudge's operator every timer fires.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_environ

pytestmark = pytest.mark.pipeline

EVENTS = 16_000


def test_timers_of_the_barrier_bundle_survive_a_restore() -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/timer_restore_check.py", "--snapshot-safe",
         "--events", str(EVENTS), "--keys", "5000", "--rate", "2000",
         "--bundle-size", "1000", "--timer-delay", "1000000000", "--fail-at", "8000"],
        cwd=ROOT, env=child_environ(), capture_output=True, text=True, timeout=540)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1])
    assert result["restores"] == 1, result  # the failure was injected after a checkpoint
    assert result["timers_missing"] == 0, result
    assert result["timers_fired"] == EVENTS
    assert proc.returncode == 0


def test_a_job_without_the_operator_jar_does_not_start() -> None:
    """Asked for (the default) but not on the class path: start-up stops and names the
    setting, rather than running with timers a restore can lose."""
    connector_only = "build/jars/flink/flink-sql-connector-kafka-5.0.0-2.2.jar"
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.triggers"], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**child_environ(), "NUDGE_FLINK__JARS": connector_only})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "setting flink.python_snapshot_safe_timers" in proc.stderr
    assert "SnapshotSafePythonKeyedProcessOperator not found" in proc.stderr
