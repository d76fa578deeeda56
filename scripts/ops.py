"""Operate the nudge jobs on a Flink cluster: submit, stop with a savepoint, resume, status.

    python scripts/ops.py submit triggers            # = make submit JOB=triggers
    python scripts/ops.py stop triggers              # savepoint + stop; prints its path
    python scripts/ops.py resume triggers [--savepoint PATH]   # latest one by default
    python scripts/ops.py status                     # = make status; exit 0 = healthy

The cluster is the one at ``FLINK_REST`` (default ``http://127.0.0.1:8081``, the session
cluster of ``make up``). Jobs are submitted with the PyFlink wheel's own ``flink run -d
-py``, with the project's packages shipped by ``-pyfs`` and the job's settings taken
from the ``cluster`` overlay (``NUDGE_*`` variables pass through). The client needs the
Kafka connector on its class path to plan the SQL; ``var/flink/lib`` (the stack's lib/)
has it. Savepoints that ``stop`` takes are recorded in ``var/ops/<job>.savepoint``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import stack  # noqa: E402

JOBS = {"triggers": "nudge-triggers", "profiles": "nudge-profiles"}
# A job in one of these states holds (or is about to hold) slots.
ACTIVE_STATES = ("RUNNING", "CREATED", "RESTARTING", "INITIALIZING")
PACKAGES = ("config", "jobs", "udfs", "schemas")
OPS_DIR = ROOT / "var" / "ops"
PYFS_DIR = ROOT / "build" / "pyfs"


class OpsError(RuntimeError):
    """Something the operator must act on; the message says what."""


# --- Flink REST ---------------------------------------------------------------------------

def rest_url() -> str:
    return os.environ.get("FLINK_REST", f"http://127.0.0.1:{stack.FLINK_REST_PORT}").rstrip("/")


def rest(path: str, method: str = "GET", body: dict[str, Any] | None = None,
         timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{rest_url()}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise OpsError(f"Flink REST {method} {path}: HTTP {exc.code} "
                       f"{exc.read().decode(errors='replace')[:300]}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise OpsError(f"cannot reach the Flink cluster at {rest_url()} ({exc}); is it "
                       "running? (`make up` locally, or set FLINK_REST)") from exc


def find_job(name: str, states: tuple[str, ...] = ("RUNNING",)) -> dict[str, Any] | None:
    """The newest job called `name` in one of `states`."""
    jobs = [j for j in rest("/jobs/overview")["jobs"]
            if j["name"] == name and j["state"] in states]
    return max(jobs, key=lambda j: j["start-time"]) if jobs else None


# --- submit / stop / resume ---------------------------------------------------------------

def stage_code() -> Path:
    """A folder holding only the project's packages, shipped with ``-pyfs``: the folder
    itself goes on the workers' PYTHONPATH, so ``import udfs.cart`` works there."""
    target = PYFS_DIR / "nudge"
    shutil.rmtree(target, ignore_errors=True)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, target / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def client_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``flink`` CLI's environment: ours (plus `env`), the stack's conf and a lib/
    with the connector."""
    lib, conf = stack.FLINK_DIR / "lib", stack.FLINK_DIR / "conf"
    if not any(lib.glob("flink-sql-connector-kafka*.jar")) or not (conf / "config.yaml").exists():
        stack.flink_env()  # builds var/flink/{lib,conf}; needs `make jars`
    return {**os.environ, **(env or {}), "FLINK_CONF_DIR": str(conf),
            "FLINK_LIB_DIR": str(lib), "FLINK_LOG_DIR": str(stack.FLINK_DIR / "log")}


def wait_running(job_id: str, wait_s: float) -> bool:
    """Whether `job_id` and all its tasks are RUNNING within `wait_s` (False as soon as
    it has ended)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        detail = rest(f"/jobs/{job_id}")
        if detail["state"] == "RUNNING" and {v["status"] for v in detail["vertices"]} == {
                "RUNNING"}:
            return True
        if detail["state"] in ("FAILED", "CANCELED", "FINISHED"):
            return False
        time.sleep(1)
    return False


def cancel(job_id: str, wait_s: float = 60) -> None:
    """Cancel `job_id` and wait until it has ended (its slots are free again). On the
    local stack, a TaskManager the cancel killed is started again
    (`stack.ensure_taskmanager`). A job that has already ended is left as it is."""
    if rest(f"/jobs/{job_id}")["state"] in ("CANCELED", "FAILED", "FINISHED"):
        return
    rest(f"/jobs/{job_id}?mode=cancel", "PATCH")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if rest(f"/jobs/{job_id}")["state"] in ("CANCELED", "FAILED", "FINISHED"):
            break
        time.sleep(0.5)
    if rest_url() == f"http://127.0.0.1:{stack.FLINK_REST_PORT}":
        time.sleep(2)  # the TaskManager shuts down a moment after the job ends
        stack.ensure_taskmanager()


def submit(job: str, savepoint: str | None = None, wait_s: float = 120,
           script: Path | None = None, args: tuple[str, ...] = (),
           env: Mapping[str, str] | None = None) -> str:
    """Submit `job` detached (from `savepoint` if given); return its job id once RUNNING.
    `env` adds variables (NUDGE_* settings) for this submission only; `script` and
    `args` run another PyFlink program the same way (benchmarks)."""
    name = JOBS.get(job, job)
    running = find_job(name, ACTIVE_STATES)
    if running:
        raise OpsError(f"{name} is already {running['state']} as job {running['jid']}; "
                       f"stop it first (make stop JOB={job})")
    url = urlparse(rest_url())
    cmd = [*stack.flink_script("flink"), "run", "-d",
           "-D", f"rest.address={url.hostname}", "-D", f"rest.port={url.port or 80}"]
    if savepoint:
        cmd += ["-s", savepoint]
    environ = client_env(env)
    cmd += ["-py", str(script or ROOT / "jobs" / f"{job}.py"), "-pyfs", str(stage_code()),
            "-pyexec", environ.get("NUDGE_PYTHON", str(stack.VENV_PYTHON)),
            "--env", "cluster", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True)
    job_id = next((line.rsplit(" ", 1)[1] for line in proc.stdout.splitlines()
                   if "submitted with JobID" in line), None)
    if proc.returncode != 0 or job_id is None:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        causes = [line for line in lines if line.startswith(("error:", "Caused by"))]
        tail = "\n".join([*dict.fromkeys(causes), *lines[-10:]])
        raise OpsError(f"flink run failed for {name} (exit {proc.returncode}):\n{tail}")
    if wait_running(job_id, wait_s):
        return job_id
    raise OpsError(f"{name} (job {job_id}) is not running after {wait_s:.0f}s; see the "
                   f"dashboard {rest_url()}/#/job/running/{job_id} or `make logs S=flink`")


def stop(job: str, timeout_s: float = 300) -> str:
    """Stop `job` with a savepoint (Flink's stop-with-savepoint); return its path."""
    name = JOBS[job]
    running = find_job(name)
    if running is None:
        raise OpsError(f"{name} is not running on {rest_url()}")
    job_id = running["jid"]
    trigger = rest(f"/jobs/{job_id}/stop", "POST", {"drain": False})["request-id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = rest(f"/jobs/{job_id}/savepoints/{trigger}")
        if result["status"]["id"] == "COMPLETED":
            operation = result["operation"]
            if "location" not in operation:
                raise OpsError(f"savepoint of {name} failed: "
                               f"{str(operation.get('failure-cause'))[:500]}")
            record_savepoint(job, operation["location"], job_id)
            return str(operation["location"])
        time.sleep(1)
    raise OpsError(f"savepoint of {name} not done after {timeout_s:.0f}s; the job keeps "
                   "running (check checkpoint durations on the dashboard)")


def latest_retained_checkpoint(checkpoint_root: Path, job_id: str) -> str:
    """The newest complete checkpoint a (gone) job left in `checkpoint_root`/<job id>/
    — what to resume from after a JobManager loss without HA."""
    done = [c for c in (checkpoint_root / job_id).glob("chk-*") if (c / "_metadata").exists()]
    if not done:
        raise OpsError(f"no completed checkpoint of job {job_id} in {checkpoint_root}")
    return max(done, key=lambda c: int(c.name.split("-")[1])).as_uri()


def record_savepoint(job: str, location: str, job_id: str) -> None:
    OPS_DIR.mkdir(parents=True, exist_ok=True)
    (OPS_DIR / f"{job}.savepoint").write_text(json.dumps(
        {"location": location, "job_id": job_id, "taken_at": int(time.time() * 1000)}))


def latest_savepoint(job: str) -> str:
    path = OPS_DIR / f"{job}.savepoint"
    if not path.exists():
        raise OpsError(f"no savepoint recorded for {job} in {path}; pass one with "
                       f"SAVEPOINT=… (make resume JOB={job} SAVEPOINT=file:///…)")
    return str(json.loads(path.read_text())["location"])


# --- status ------------------------------------------------------------------------------

@dataclass
class Limits:
    checkpoint_interval_ms: int
    max_checkpoint_age_ms: int
    max_restarts: int
    max_consumer_lag: int
    max_event_time_stall_ms: int = 600_000


@dataclass
class JobStatus:
    name: str
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # worth a look, not unhealthy

    def add(self, label: str, value: object) -> None:
        self.lines.append(f"  {label:<22} {value}")


def vertex_metrics(job_id: str, vertex_id: str, names: list[str],
                   agg: str = "sum") -> dict[str, float]:
    """Metrics aggregated (`agg`: sum, min, max, avg) over a vertex's subtasks (names
    that do not exist are left out)."""
    if not names:
        return {}
    rows = rest(f"/jobs/{job_id}/vertices/{vertex_id}/subtasks/metrics"
                f"?get={quote(','.join(names), safe=',')}&agg={agg}")
    return {row["id"]: float(row[agg]) for row in rows if agg in row}


def custom_metrics(job_id: str, vertex_id: str) -> dict[str, float]:
    """The jobs' own metrics (group ``nudge``) on a vertex, summed over subtasks."""
    listed = rest(f"/jobs/{job_id}/vertices/{vertex_id}/subtasks/metrics")
    names = [m["id"] for m in listed if ".nudge." in m["id"] and not m["id"].endswith(STALL)]
    return {n.split(".nudge.", 1)[1]: v for n, v in vertex_metrics(job_id, vertex_id,
                                                                     names).items()}


STALL = ".nudge.event_time_stalled_ms"  # a gauge of dev.nudge.flink.PartitionWatermarks


def event_time_stall(job_id: str, vertex_id: str) -> int | None:
    """How long the events' event time has stood still on `vertex_id` (where their
    watermarks are made): the least, over its subtasks, of the time since a subtask's
    watermark rose; None when the vertex has no such gauge."""
    listed = rest(f"/jobs/{job_id}/vertices/{vertex_id}/subtasks/metrics")
    names = [m["id"] for m in listed if m["id"].endswith(STALL) and "privacy" not in m["id"]]
    values = vertex_metrics(job_id, vertex_id, names, agg="min").values()
    return int(min(values)) if values else None


def min_watermark(job_id: str, vertex_id: str) -> int | None:
    rows = rest(f"/jobs/{job_id}/vertices/{vertex_id}/watermarks")
    marks = [int(float(r["value"])) for r in rows if r["id"].endswith("currentInputWatermark")]
    marks = [m for m in marks if m > 0]  # Long.MIN_VALUE: no watermark yet
    return min(marks) if len(marks) == len(rows) and marks else None


def consumer_lag(bootstrap: str, group: str, topic: str) -> int | None:
    """Records in `topic` not yet committed by `group` (Flink commits at checkpoints)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        committed = admin.list_group_offsets(group).get(group, {})
        partitions = [TopicPartition(topic, p)
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return None
        ends = consumer.end_offsets(partitions)
        lag = 0
        for tp in partitions:
            meta = committed.get(tp)
            lag += ends[tp] - (meta.offset if meta is not None and meta.offset >= 0 else 0)
        return lag
    finally:
        consumer.close()
        admin.close()


def job_status(job: str, settings: Any, limits: Limits, now_ms: int) -> JobStatus:
    name = JOBS[job]
    st = JobStatus(name)
    found = find_job(name, (*ACTIVE_STATES, "FAILING", "CANCELLING")) \
        or find_job(name, ("FAILED", "CANCELED", "FINISHED"))
    if found is None:
        st.problems.append(f"not submitted (make submit JOB={job})")
        return st
    job_id = found["jid"]
    detail = rest(f"/jobs/{job_id}")
    st.add("job id", job_id)
    st.add("state", detail["state"])
    if detail["state"] != "RUNNING":
        st.problems.append(f"state {detail['state']}")
    st.add("uptime", _duration(detail.get("duration", 0)))
    restarts = rest(f"/jobs/{job_id}/metrics?get=numRestarts")
    count = int(float(restarts[0]["value"])) if restarts else 0
    st.add("restarts", count)
    if count > limits.max_restarts:
        st.problems.append(f"{count} restarts (> {limits.max_restarts})")
    _checkpoint_lines(st, job_id, detail, limits, now_ms)
    vertices = detail["vertices"]
    levels = {v["name"]: rest(f"/jobs/{job_id}/vertices/{v['id']}/backpressure")
              .get("backpressureLevel", "n/a") for v in vertices}
    high = [n for n, level in levels.items() if level == "high"]
    st.add("backpressure", "high at " + "; ".join(n[:60] for n in high) if high
           else ", ".join(sorted(set(levels.values()))))
    if high:
        st.problems.append("backpressure high")
    last = vertices[-1]
    mark = min_watermark(job_id, last["id"])
    st.add("watermark lag", "no watermark yet" if mark is None
           else f"{_duration(now_ms - mark)} behind wall clock")
    # where the events' watermarks are made (after the source chain since issue 31)
    timed = next((v for v in vertices if "events_parsed: event time" in v["name"]), vertices[0])
    stalled = event_time_stall(job_id, timed["id"])
    if stalled is not None:
        st.add("event time", f"last moved {_duration(stalled)} ago")
        if stalled >= limits.max_event_time_stall_ms:
            st.warnings.append(
                f"event time has not moved for {_duration(stalled)}: deadlines and window "
                "ends after the watermark wait for the next event (docs/operations.md, "
                "\"Quiet topics\")")
    rates_in = vertex_metrics(job_id, vertices[0]["id"], ["numRecordsOutPerSecond"])
    rates_out = vertex_metrics(job_id, last["id"], ["numRecordsInPerSecond"])
    st.add("records/s", f"source out {rates_in.get('numRecordsOutPerSecond', 0):.0f}, "
                        f"last operator in {rates_out.get('numRecordsInPerSecond', 0):.0f}")
    for vertex in vertices:
        for metric, value in sorted(custom_metrics(job_id, vertex["id"]).items()):
            st.add(metric, f"{value:.0f}")
    group = f"{settings.kafka.group_id}-{job}"
    try:
        lag = consumer_lag(settings.kafka.bootstrap, group, settings.topics.events)
    except Exception as exc:  # Kafka trouble is a finding, not a crash of the status tool
        st.add("consumer lag", f"unknown ({exc.__class__.__name__}: {exc})")
        st.problems.append("Kafka unreachable")
        return st
    st.add("consumer lag", f"{lag} records ({group} on {settings.topics.events})")
    if lag is not None and lag > limits.max_consumer_lag:
        st.problems.append(f"consumer lag {lag} (> {limits.max_consumer_lag})")
    return st


def _checkpoint_lines(st: JobStatus, job_id: str, detail: dict[str, Any], limits: Limits,
                      now_ms: int) -> None:
    checkpoints = rest(f"/jobs/{job_id}/checkpoints")
    completed = (checkpoints.get("latest") or {}).get("completed")
    counts = checkpoints.get("counts", {})
    if completed:
        age = now_ms - int(completed["latest_ack_timestamp"])
        st.add("last checkpoint", f"{_duration(age)} ago, {_size(completed['state_size'])}, "
                                  f"took {completed['end_to_end_duration']} ms "
                                  f"({counts.get('failed', 0)} failed so far)")
        if age > limits.max_checkpoint_age_ms:
            st.problems.append(f"last checkpoint {_duration(age)} old")
    else:
        st.add("last checkpoint", f"none yet ({counts.get('failed', 0)} failed)")
        if detail.get("duration", 0) > limits.max_checkpoint_age_ms:
            st.problems.append("no checkpoint completed")


def _duration(ms: float) -> str:
    s = int(ms // 1000)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s < 172800 else f"{s // 86400}d"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} TiB"


def status(jobs: list[str], settings: Any, limits: Limits) -> int:
    """Print each job's health; 0 when all are healthy, 1 when not, 2 when unreachable."""
    try:
        overview = rest("/overview")
    except OpsError as exc:
        print(f"UNHEALTHY: {exc}")
        return 2
    print(f"cluster {rest_url()}: Flink {overview.get('flink-version')}, "
          f"{overview.get('taskmanagers')} TaskManager(s), "
          f"{overview.get('slots-available')}/{overview.get('slots-total')} slots free")
    now_ms = int(time.time() * 1000)
    healthy = True
    for job in jobs:
        st = job_status(job, settings, limits, now_ms)
        verdict = "healthy" if not st.problems else "UNHEALTHY: " + "; ".join(st.problems)
        healthy = healthy and not st.problems
        print(f"\n{st.name}: {verdict}")
        print("\n".join(st.lines))
        for warning in st.warnings:
            print(f"  WARNING: {warning}")
    print(f"\n{'healthy' if healthy else 'UNHEALTHY'}")
    return 0 if healthy else 1


# --- command line ------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("submit", "stop", "resume"):
        p = sub.add_parser(command)
        p.add_argument("job", choices=sorted(JOBS))
        if command != "stop":
            p.add_argument("--savepoint", default=None)
    p = sub.add_parser("status")
    p.add_argument("--jobs", default=",".join(JOBS), help="comma-separated (default: both)")
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--max-consumer-lag", type=int, default=1_000_000)
    p.add_argument("--max-event-time-stall", type=float, default=600.0, metavar="SECONDS",
                   help="warn when event time has not moved for this long (default 600)")
    args = parser.parse_args(argv)

    from config.settings import SettingsError, load_settings

    try:
        settings = load_settings("cluster", os.environ)
        if args.command == "status":
            interval = settings.flink.checkpoint_interval_ms
            limits = Limits(interval, max(3 * interval, 60_000), args.max_restarts,
                            args.max_consumer_lag, int(args.max_event_time_stall * 1000))
            return status([j for j in args.jobs.split(",") if j], settings, limits)
        if args.command == "stop":
            print(f"stopped {JOBS[args.job]} with savepoint {stop(args.job)}")
        else:
            savepoint = args.savepoint
            if args.command == "resume" and not savepoint:
                savepoint = latest_savepoint(args.job)
            job_id = submit(args.job, savepoint)
            origin = f" from {savepoint}" if savepoint else ""
            print(f"{JOBS[args.job]} running as job {job_id}{origin} — "
                  f"{rest_url()}/#/job/running/{job_id}")
        return 0
    except (OpsError, SettingsError, stack.StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
