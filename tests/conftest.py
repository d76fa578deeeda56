"""Shared fixtures for the three test tiers.

- ``tests/unit``: pure Python, no JVM, no services.
- ``tests/pipeline``: a real PyFlink job on a local minicluster (``execute_and_collect``).
- ``tests/integration``: the real local stack (Kafka, Redis, Flink); the ``stack`` fixture
  starts it with ``scripts/stack.py up`` when it is not already answering.
- ``tests/faults``: fuzzing of the decoders, and faults injected into jobs running on the
  stack's standalone cluster (``make test-faults``; docs/guarantees.md).

Topics are created per test with a random suffix (``topic_factory``) and deleted after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import ops as ops_mod  # noqa: E402
from scripts import stack as stack_mod  # noqa: E402

BOOTSTRAP = f"127.0.0.1:{stack_mod.KAFKA_PORT}"
REDIS_URL = f"redis://127.0.0.1:{stack_mod.REDIS_PORT}/0"
FLINK_REST = f"http://127.0.0.1:{stack_mod.FLINK_REST_PORT}"
CLUSTER_PARTITIONS = 2  # partitions of the topics of jobs submitted to the cluster


def wait_for(check: Callable[[], bool], timeout_s: float,
             what: str | Callable[[], str]) -> None:
    """Poll `check` every second until it holds; fail the test after `timeout_s`. `what`
    may be a callable, evaluated on failure (to show the state at the time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for "
                f"{what() if callable(what) else what}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by tier from their folder, so `-m "not integration"` works."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "faults" in parts:
            item.add_marker(pytest.mark.faults)
        elif "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "pipeline" in parts:
            item.add_marker(pytest.mark.pipeline)


@pytest.fixture(scope="session")
def stack() -> dict[str, str]:
    """The local stack, started if it is not running (left running for the next run)."""
    if not all(svc.healthy() for svc in stack_mod.SERVICE_TABLE.values()):
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "stack.py"), "up"],
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"could not start the local stack:\n{proc.stdout}{proc.stderr}")
    return {"bootstrap": BOOTSTRAP, "redis_url": REDIS_URL, "flink_rest": FLINK_REST}


@pytest.fixture(scope="session")
def kafka_admin(stack: dict[str, str]) -> Iterator[object]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=stack["bootstrap"], client_id="nudge-tests")
    yield admin
    admin.close()


@pytest.fixture
def topic_factory(kafka_admin: object) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics; all are deleted when the test ends."""
    from kafka.admin import NewTopic

    created: list[str] = []

    def make(prefix: str = "t", partitions: int = 2) -> str:
        name = f"test-{prefix}-{uuid.uuid4().hex[:10]}"
        kafka_admin.create_topics([NewTopic(name, partitions, 1)])  # type: ignore[attr-defined]
        created.append(name)
        return name

    yield make
    if created:
        try:
            kafka_admin.delete_topics(created)  # type: ignore[attr-defined]
        except Exception as exc:  # a failed clean-up must not hide the test's result
            print(f"warning: could not delete topics {created}: {exc}")


@pytest.fixture
def topic(topic_factory: Callable[..., str]) -> str:
    return topic_factory()


@pytest.fixture
def redis_client(stack: dict[str, str]) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(stack["redis_url"])
    yield client
    client.close()


def child_environ() -> dict[str, str]:
    """This process's environment for a PyFlink program run as a subprocess, without
    PyFlink's own variables: an in-process PyFlink (pipeline tests) sets some that would
    stop the child from launching its gateway."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYFLINK_")}


@pytest.fixture
def test_environ(stack: dict[str, str]) -> dict[str, str]:
    """Environment for a job run as a subprocess: the stack's addresses."""
    return {**child_environ(), "NUDGE_ENV": "local", "NUDGE_KAFKA__BOOTSTRAP":
            stack["bootstrap"], "NUDGE_REDIS__URL": stack["redis_url"]}


@pytest.fixture
def local_job() -> Iterator[Callable[[str, dict[str, str], str], subprocess.Popen]]:
    """Start `python -m <module>` (a job on its own local minicluster) with `env`, its
    output in var/<log_name>.log; every job started is stopped when the test ends."""
    procs: list[subprocess.Popen] = []

    def start(module: str, env: dict[str, str], log_name: str) -> subprocess.Popen:
        log = open(ROOT / "var" / f"{log_name}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def cluster_env(stack: dict[str, str], topic_factory, test_environ: dict[str, str]  # type: ignore[no-untyped-def]
                ) -> Iterator[dict[str, str]]:
    """Fresh topics and consumer groups for jobs submitted to the stack's cluster; no
    nudge job may be running there already (they would hold the slots)."""
    for name in ops_mod.JOBS.values():
        job = ops_mod.find_job(name, ops_mod.ACTIVE_STATES)
        if job is not None:
            print(f"cancelling leftover {name} ({job['jid']})")
            ops_mod.cancel(job["jid"])
    suffix = uuid.uuid4().hex[:8]
    env = {**test_environ, "FLINK_REST": stack["flink_rest"],
           "NUDGE_TOPICS__EVENTS": topic_factory("ops-events", CLUSTER_PARTITIONS),
           "NUDGE_TOPICS__NOTIFICATIONS": topic_factory("ops-notifications", CLUSTER_PARTITIONS),
           "NUDGE_TOPICS__PRIVACY": topic_factory("ops-privacy", CLUSTER_PARTITIONS),
           "NUDGE_TOPICS__AUDIT": topic_factory("ops-audit", 1),
           "NUDGE_TOPICS__DLQ": topic_factory("ops-dlq", 1),
           "NUDGE_KAFKA__GROUP_ID": f"ops-{suffix}",
           "NUDGE_REDIS__KEY_PREFIX": f"ops-{suffix}:",
           "NUDGE_FLINK__CHECKPOINT_INTERVAL_MS": "2s"}
    env.pop("NUDGE_ENV", None)
    saved = dict(os.environ)
    os.environ.update(env)  # ops_mod.* read FLINK_REST and pass NUDGE_* to `flink run`
    try:
        yield env
    finally:
        for name in ops_mod.JOBS.values():
            job = ops_mod.find_job(name, ops_mod.ACTIVE_STATES)
            if job is not None:
                ops_mod.cancel(job["jid"])
        os.environ.clear()
        os.environ.update(saved)
