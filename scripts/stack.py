"""The local stack: a KRaft Kafka broker, Redis and a Flink session cluster, no Docker.

Every service runs as a plain background process of this machine, with all its state
(Kafka log dirs, Redis dump, Flink conf, logs and checkpoints) under ``var/``:

    service  address              log file
    kafka    127.0.0.1:9092       var/kafka/logs/server.log
    redis    127.0.0.1:6379       var/redis/redis.log
    flink    http://127.0.0.1:8081  var/flink/log/

Each command is idempotent: ``up`` starts only what is not answering, waits until each
service answers (or names the service and its log file and exits non-zero), then
creates the contract's topics; ``down`` stops what runs.

    python scripts/stack.py up [kafka|redis|flink ...]
    python scripts/stack.py down | ps | logs [SERVICE] | topics | clean
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
JARS = ROOT / "build" / "jars"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PROMETHEUS_PORTS = (9249, 9259)
SERVICES = ("kafka", "redis", "flink")

KAFKA_PORT, KAFKA_CONTROLLER_PORT, REDIS_PORT, FLINK_REST_PORT = 9092, 9093, 6379, 8081
FLINK_SLOTS = 4


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    log: Path
    start: Callable[[], None]
    stop: Callable[[], None]
    healthy: Callable[[], bool]
    timeout_s: float


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return check()


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def stop_pid(path: Path, name: str, timeout_s: float = 30) -> None:
    pid = read_pid(path)
    if pid is None:
        path.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: read_pid(path) is None, timeout_s):
        print(f"{name}: still running after {timeout_s:.0f}s, killing pid {pid}")
        os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)


def spawn(cmd: list[str], log: Path, pid_file: Path, env: dict[str, str] | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})
    pid_file.write_text(str(proc.pid))


# --- Kafka -------------------------------------------------------------------------------

KAFKA_DIR = VAR / "kafka"
KAFKA_PID = KAFKA_DIR / "kafka.pid"


def kafka_classpath() -> str:
    jars = JARS / "kafka"
    if not any(jars.glob("kafka_2.13-*.jar")):
        raise StackError(f"kafka: no broker jars in {jars} (run `make jars`)")
    return f"{jars}/*"


def kafka_cluster_id() -> str:
    """A random KRaft cluster id (URL-safe base64 of 16 bytes, as Kafka makes them). One in
    64 starts with "-", which the storage tool's argument parser takes for an option
    ("argument --cluster-id: expected one argument"): such ids are drawn again, as
    Kafka's own `Uuid.randomUuid` does."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def kafka_start() -> None:
    data, logs = KAFKA_DIR / "data", KAFKA_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    props = KAFKA_DIR / "server.properties"
    props.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{KAFKA_CONTROLLER_PORT}",
        f"listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT},"
        f"CONTROLLER://127.0.0.1:{KAFKA_CONTROLLER_PORT}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data}",
        "num.partitions=2",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=4",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        # Tests, the demo and the benchmark send events with past timestamps (the Kafka
        # timestamp is the event's ts). Kafka deletes and rolls segments by record
        # timestamp, so with time-based retention it deleted months-old test records at
        # its next 5-min check, sometimes before a job had read them. The local broker
        # keeps data by size only and never rolls a segment for its age.
        "log.retention.hours=-1",
        "log.retention.bytes=2147483648",
        "log.roll.hours=87600",
        "",
    ]))
    log4j = KAFKA_DIR / "log4j2.properties"
    log4j.write_text("\n".join([
        "status = warn",
        "appender.file.type = File",
        "appender.file.name = file",
        f"appender.file.fileName = {logs / 'server.log'}",
        "appender.file.layout.type = PatternLayout",
        "appender.file.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.file.ref = file",
        "logger.kafka.name = kafka",
        "logger.kafka.level = INFO",
        "logger.clients.name = org.apache.kafka",
        "logger.clients.level = WARN",
        "",
    ]))
    java = ["java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={log4j}", "-cp", kafka_classpath()]
    if not (data / "meta.properties").exists():
        cluster_id = kafka_cluster_id()
        fmt = subprocess.run(java + ["kafka.tools.StorageTool", "format", "--standalone",
                                     "-t", cluster_id, "-c", str(props)],
                             capture_output=True, text=True, cwd=ROOT)
        if fmt.returncode != 0:
            raise StackError(f"kafka: formatting {data} failed:\n{fmt.stdout}{fmt.stderr}")
    spawn(java + ["kafka.Kafka", str(props)], logs / "stdout.log", KAFKA_PID)


def kafka_healthy() -> bool:
    """The broker answers a metadata request (not just an open port)."""
    if not port_open(KAFKA_PORT):
        return False
    try:
        from kafka import KafkaAdminClient
    except ImportError:  # before `make setup`: the open port is all we can check
        return True
    try:
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{KAFKA_PORT}",
                                 request_timeout_ms=5000, client_id="nudge-stack")
        try:
            admin.list_topics()
        finally:
            admin.close()
        return True
    except Exception:
        return False


# --- Redis -------------------------------------------------------------------------------

REDIS_DIR = VAR / "redis"
REDIS_PID = REDIS_DIR / "redis.pid"


def redis_binary() -> str:
    """Debian's redis-server, installed with apt-get when missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    print("redis: redis-server not found, installing Debian's redis-server package")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    for cmd in (["apt-get", "-q", "update"],
                ["apt-get", "-y", "-q", "install", "--no-install-recommends", "redis-server"]):
        if subprocess.run(sudo + cmd, stdout=subprocess.DEVNULL).returncode != 0:
            raise StackError(f"redis: `{' '.join(sudo + cmd)}` failed; install redis-server")
    found = shutil.which("redis-server")
    if not found:
        raise StackError("redis: redis-server is still missing after apt-get install")
    return found


def redis_start() -> None:
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run([redis_binary(), "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                    "--daemonize", "yes", "--dir", str(REDIS_DIR),
                    "--pidfile", str(REDIS_PID), "--logfile", str(REDIS_DIR / "redis.log"),
                    "--save", "60 1000", "--appendonly", "no"], check=True, cwd=ROOT)


def redis_healthy() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# --- Flink -------------------------------------------------------------------------------

FLINK_DIR = VAR / "flink"


def flink_home() -> Path:
    home = next((ROOT / ".venv" / "lib").glob("python3*/site-packages/pyflink"), None)
    if home is None or not (home / "bin" / "start-cluster.sh").exists():
        raise StackError("flink: PyFlink is not installed in .venv (run `make setup`)")
    return home


def flink_env() -> dict[str, str]:
    """Environment for the wheel's scripts: our conf, a lib/ with the connector, our logs."""
    home = flink_home()
    lib, conf, log = FLINK_DIR / "lib", FLINK_DIR / "conf", FLINK_DIR / "log"
    for d in (lib, conf, log, FLINK_DIR / "checkpoints", FLINK_DIR / "savepoints"):
        d.mkdir(parents=True, exist_ok=True)
    for stale in lib.iterdir():
        stale.unlink()
    connector = sorted((JARS / "flink").glob("*.jar"))
    if not connector:
        raise StackError(f"flink: no connector jar in {JARS / 'flink'} (run `make jars`)")
    # flink-python in lib/ (not shipped with every job): a per-job copy is loaded by each
    # job's class loader and leaks Metaspace until the TaskManager dies (seen after ~8
    # submissions: OutOfMemoryError: Metaspace).
    python_jar = sorted((home / "opt").glob("flink-python-*.jar"))
    for jar in [*sorted((home / "lib").glob("*.jar")), *python_jar, *connector]:
        (lib / jar.name).symlink_to(jar)
    for name in ("log4j.properties", "log4j-console.properties", "log4j-cli.properties",
                 "log4j-session.properties", "logback.xml"):
        shutil.copyfile(home / "conf" / name, conf / name)
    (conf / "masters").write_text(f"127.0.0.1:{FLINK_REST_PORT}\n")
    (conf / "workers").write_text("127.0.0.1\n")
    java_opts = _wheel_java_opts(home / "conf" / "config.yaml")
    config = {
        "env.java.opts.all": java_opts,
        "jobmanager.bind-host": "127.0.0.1",
        "jobmanager.rpc.address": "127.0.0.1",
        "jobmanager.rpc.port": 6123,
        "jobmanager.memory.process.size": "1600m",
        "jobmanager.execution.failover-strategy": "region",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        "taskmanager.numberOfTaskSlots": FLINK_SLOTS,
        "taskmanager.memory.process.size": "4096m",
        "taskmanager.memory.jvm-metaspace.size": "512m",
        "parallelism.default": 2,
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.port": FLINK_REST_PORT,
        "python.executable": str(VENV_PYTHON),
        "python.client.executable": str(VENV_PYTHON),
        "execution.checkpointing.dir": (FLINK_DIR / "checkpoints").as_uri(),
        "execution.checkpointing.savepoint-dir": (FLINK_DIR / "savepoints").as_uri(),
        "state.backend.type": "hashmap",
        # In-flight buffers sized to ~1 s of data: under backpressure checkpoint barriers
        # do not queue behind minutes of records (docs/operations.md).
        "taskmanager.network.memory.buffer-debloat.enabled": "true",
        "web.submit.enable": "true",
        # REST metrics at most 1 s old (default 10 s): make status and make bench read them.
        "metrics.fetcher.update-interval": 1000,
        # /metrics for Prometheus: JobManager on the first free port, TaskManager the next.
        "metrics.reporter.prom.factory.class":
            "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        "metrics.reporter.prom.port": f"{PROMETHEUS_PORTS[0]}-{PROMETHEUS_PORTS[1]}",
    }
    (conf / "config.yaml").write_text(
        "# Written by scripts/stack.py for the local Flink session cluster.\n"
        + "".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
    return {"FLINK_CONF_DIR": str(conf), "FLINK_LIB_DIR": str(lib), "FLINK_LOG_DIR": str(log),
            "FLINK_PID_DIR": str(FLINK_DIR)}


def _wheel_java_opts(config_yaml: Path) -> str:
    """The --add-opens flags the wheel's own config.yaml passes to the JVMs (Java 17)."""
    lines = config_yaml.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "opts:" and i + 1 < len(lines) and "all:" in lines[i + 1]:
            return lines[i + 1].split("all:", 1)[1].strip()
    return ""


def flink_script(name: str) -> list[str]:
    return ["bash", str(flink_home() / "bin" / name)]


def flink_start() -> None:
    env = flink_env()
    # A session of its own: the daemons must outlive whatever started them (a test run).
    proc = subprocess.run(flink_script("start-cluster.sh"), env={**os.environ, **env},
                          cwd=ROOT, capture_output=True, text=True, start_new_session=True)
    if proc.returncode != 0:
        raise StackError(f"flink: start-cluster.sh failed:\n{proc.stdout}{proc.stderr}")


def _flink_dirs_env() -> dict[str, str]:
    """The wheel scripts' environment for the cluster `flink_env` set up (no rewrite)."""
    return {**os.environ, "FLINK_CONF_DIR": str(FLINK_DIR / "conf"),
            "FLINK_LIB_DIR": str(FLINK_DIR / "lib"), "FLINK_LOG_DIR": str(FLINK_DIR / "log"),
            "FLINK_PID_DIR": str(FLINK_DIR)}


def flink_stop() -> None:
    if not any(FLINK_DIR.glob("*.pid")):
        return
    subprocess.run(flink_script("stop-cluster.sh"), env=_flink_dirs_env(), cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: not port_open(FLINK_REST_PORT), 30)


def taskmanager_pids() -> list[int]:
    """The live TaskManagers of the local cluster. The pid file also keeps the pids of
    killed ones, so each is checked against what runs under that pid now."""
    pid_file = FLINK_DIR / "flink--taskexecutor.pid"
    pids = [int(p) for p in pid_file.read_text().split()] if pid_file.exists() else []
    live = []
    for pid in dict.fromkeys(pids):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"TaskManagerRunner" in cmdline:
            live.append(pid)
    return live


def taskmanager_kill() -> list[int]:
    """kill -9 every TaskManager of the local cluster (fault injection); their pids."""
    killed = []
    for pid in taskmanager_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def taskmanager_start() -> None:
    """Start one more TaskManager (what a cluster manager would do after a loss)."""
    proc = subprocess.run([*flink_script("taskmanager.sh"), "start"], env=_flink_dirs_env(),
                          cwd=ROOT, capture_output=True, text=True, start_new_session=True)
    if proc.returncode != 0:
        raise StackError(f"flink: taskmanager.sh start failed:\n{proc.stdout}{proc.stderr}")


def ensure_taskmanager(wait_s: float = 90) -> bool:
    """Start a TaskManager when the local cluster answers but has none alive; True if
    one had to be started. Cancelling a job whose pandas UDF is mid-bundle can kill the
    TaskManager in Flink 2.2.1 (ArrowPythonScalarFunctionOperator.close writes to the
    closed Python channel: "FATAL - exception in exception handler"; docs/runbook.md).
    A cluster manager restarts it in production; on the local stack this does."""
    if flink_overview() is None or taskmanager_pids():
        return False
    print("flink: no TaskManager alive (see docs/runbook.md, 'TaskManager gone after a "
          "cancel'); starting one", file=sys.stderr)
    taskmanager_start()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if (flink_overview() or {}).get("slots-available", 0) > 0:
            return True
        time.sleep(1)
    raise StackError(f"flink: the new TaskManager did not register within {wait_s:.0f}s")


def flink_overview() -> dict | None:
    try:
        url = f"http://127.0.0.1:{FLINK_REST_PORT}/overview"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def flink_healthy() -> bool:
    overview = flink_overview()
    return overview is not None and overview.get("slots-total", 0) >= FLINK_SLOTS


SERVICE_TABLE = {
    "kafka": Service("kafka", KAFKA_PORT, KAFKA_DIR / "logs" / "server.log", kafka_start,
                     lambda: stop_pid(KAFKA_PID, "kafka", 60), kafka_healthy, 90),
    "redis": Service("redis", REDIS_PORT, REDIS_DIR / "redis.log", redis_start,
                     lambda: stop_pid(REDIS_PID, "redis"), redis_healthy, 20),
    "flink": Service("flink", FLINK_REST_PORT, FLINK_DIR / "log", flink_start, flink_stop,
                     flink_healthy, 120),
}


# --- topics ------------------------------------------------------------------------------

def contract_topics() -> dict[str, int]:
    """Topic name → partitions, names from the local settings (NUDGE_* overrides apply)."""
    sys.path.insert(0, str(ROOT))
    from config.settings import load_settings

    topics = load_settings(environ=os.environ).topics
    return {topics.events: 4, topics.notifications: 4, topics.dlq: 2, topics.privacy: 2,
            topics.audit: 1}


def ensure_topics() -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{KAFKA_PORT}",
                             client_id="nudge-stack")
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, partitions, 1)
                   for name, partitions in contract_topics().items() if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
            print("kafka: created topics " + ", ".join(t.name for t in missing))
    finally:
        admin.close()


# --- commands ----------------------------------------------------------------------------

def up(names: list[str]) -> None:
    for name in names:
        svc = SERVICE_TABLE[name]
        if svc.healthy():
            print(f"{name}: already running on 127.0.0.1:{svc.port}")
            continue
        if name == "flink" and ensure_taskmanager():  # the JobManager was there
            print(f"{name}: up on 127.0.0.1:{svc.port} (TaskManager restarted)")
            continue
        if port_open(svc.port):
            raise StackError(f"{name}: port {svc.port} is taken by something that does not "
                             f"answer like {name}; free it and retry (log: {svc.log})")
        print(f"{name}: starting …", flush=True)
        svc.start()
        if not wait_until(svc.healthy, svc.timeout_s):
            raise StackError(f"{name}: did not answer on 127.0.0.1:{svc.port} within "
                             f"{svc.timeout_s:.0f}s; see its log: {svc.log}")
        print(f"{name}: up on 127.0.0.1:{svc.port}")
    if "kafka" in names:
        ensure_topics()


def down(names: list[str]) -> None:
    for name in reversed(names):
        SERVICE_TABLE[name].stop()
        print(f"{name}: stopped")


def ps() -> int:
    down_count = 0
    for name, svc in SERVICE_TABLE.items():
        ok = svc.healthy()
        down_count += not ok
        detail = ""
        if name == "flink" and ok:
            ov = flink_overview() or {}
            detail = (f"  slots {ov.get('slots-available')}/{ov.get('slots-total')} free, "
                      f"{ov.get('jobs-running')} jobs running")
        print(f"{name:6} {'up  ' if ok else 'down'}  127.0.0.1:{svc.port}{detail}")
    return 1 if down_count else 0


def logs(names: list[str], lines: int) -> None:
    for name in names:
        log = SERVICE_TABLE[name].log
        files = sorted(log.glob("*.log")) if log.is_dir() else [log]
        for f in files:
            if f.exists():
                print(f"==> {f} <==")
                print("".join(f.read_text(errors="replace").splitlines(True)[-lines:]))


def clean() -> None:
    down(list(SERVICES))
    shutil.rmtree(VAR, ignore_errors=True)
    print(f"removed {VAR}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "ps", "logs", "topics", "clean"))
    parser.add_argument("services", nargs="*", choices=(*SERVICES, []), default=[])
    parser.add_argument("-n", "--lines", type=int, default=40, help="log lines per file")
    args = parser.parse_args(argv)
    names = [s for s in SERVICES if s in args.services] or list(SERVICES)
    try:
        if args.command == "up":
            up(names)
        elif args.command == "down":
            down(names)
        elif args.command == "ps":
            return ps()
        elif args.command == "logs":
            logs(names, args.lines)
        elif args.command == "topics":
            ensure_topics()
        else:
            clean()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
