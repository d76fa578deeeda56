"""What every nudge job shares around its pipeline: the command line, the settings, the
Flink environments and how a job is executed.

A job module defines ``build(env, t_env, settings)`` and calls :func:`run_job` from its
``main``; this module turns settings into Flink configuration (parallelism, exactly-once
checkpoints, Python bundle and state-cache sizes, connector jars) so no job repeats it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from config.settings import ENVIRONMENTS, Settings, SettingsError, load_settings

log = logging.getLogger("nudge")

Builder = Callable[[Any, Any, Settings], None]


def parse_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--env", choices=ENVIRONMENTS, default=None,
                        help="settings overlay (default: $NUDGE_ENV or local)")
    parser.add_argument("--detached", action="store_true",
                        help="submit and return instead of waiting for the job to end")
    # `flink run -py` passes its own arguments through; ignore what we do not know.
    args, _unknown = parser.parse_known_args(argv)
    return args


def settings_or_exit(env: str | None) -> Settings:
    """Load settings; a bad setting stops start-up with a message naming it."""
    try:
        return load_settings(env, os.environ)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def checkpoint_options(f: Any) -> dict[str, str]:
    """Flink options for checkpoints, state backend and restarts (settings `flink.*`)."""
    from config.settings import CHECKPOINT_RETENTION

    return {
        "execution.checkpointing.timeout": f"{f.checkpoint_timeout_ms} ms",
        "execution.checkpointing.min-pause": f"{f.checkpoint_min_pause_ms} ms",
        "execution.checkpointing.tolerable-failed-checkpoints":
            str(f.tolerable_checkpoint_failures),
        "execution.checkpointing.externalized-checkpoint-retention":
            CHECKPOINT_RETENTION[f.checkpoint_retention],
        "execution.checkpointing.incremental": str(f.incremental_checkpoints).lower(),
        "execution.checkpointing.unaligned.enabled": str(f.unaligned_checkpoints).lower(),
        "state.backend.type": f.state_backend,
        "restart-strategy.type": "exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff": f"{f.restart_initial_backoff_ms} ms",
        "restart-strategy.exponential-delay.max-backoff": f"{f.restart_max_backoff_ms} ms",
        "restart-strategy.exponential-delay.reset-backoff-threshold": "1 h",
    }


def create_environments(settings: Settings) -> tuple[Any, Any]:
    """A StreamExecutionEnvironment and its StreamTableEnvironment, configured."""
    from pyflink.common import Configuration
    from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
    from pyflink.table import EnvironmentSettings, StreamTableEnvironment

    f = settings.flink
    conf = Configuration()
    jars = f.jar_urls()
    if jars:
        conf.set_string("pipeline.jars", ";".join(jars))
    conf.set_string("python.execution-mode", f.python_execution_mode)
    conf.set_string("python.fn-execution.bundle.size", str(f.python_bundle_size))
    conf.set_string("python.fn-execution.bundle.time", str(f.python_bundle_time_ms))
    conf.set_string("python.state.cache-size", str(f.python_state_cache_size))
    # Chained operators pass records on without a defensive copy. Every operator of the
    # jobs is SQL (copies where it keeps a row) or Python (serializes the row at once),
    # so nothing holds on to a reused object; a third fewer young collections, SQL half
    # +23 % (docs/performance.md, sixth round).
    conf.set_string("pipeline.object-reuse", "true")
    if settings.env == "local":  # elsewhere the cluster's python.executable applies
        conf.set_string("python.executable", sys.executable)
        conf.set_string("python.client.executable", sys.executable)
    checkpoints = f.checkpoint_uri()
    if checkpoints:
        conf.set_string("execution.checkpointing.storage", "filesystem")
        conf.set_string("execution.checkpointing.dir", checkpoints)
    for key, value in checkpoint_options(f).items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    if f.python_snapshot_safe_timers and f.python_execution_mode == "process":
        use_snapshot_safe_operator()
    env.set_parallelism(f.parallelism)
    env.get_config().set_auto_watermark_interval(f.watermark_interval_ms)
    env.enable_checkpointing(f.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    t_env = StreamTableEnvironment.create(
        env, environment_settings=EnvironmentSettings.in_streaming_mode())
    t_conf = t_env.get_config()
    t_conf.set("table.exec.source.idle-timeout", f"{settings.events.idle_timeout_ms} ms")
    t_conf.set("table.local-time-zone", "UTC")
    return env, t_env


def use_snapshot_safe_operator() -> None:
    """Keyed Python functions built from here on keep the timers of the bundle flushed at
    a checkpoint barrier in that checkpoint (jobs/snapshot_safe.py); without the operator
    the job does not start."""
    from jobs import snapshot_safe

    try:
        snapshot_safe.install()
        log.info("keyed Python functions run in %s", snapshot_safe.OPERATOR)
    except snapshot_safe.SnapshotSafeError as exc:
        raise SettingsError(
            f"setting flink.python_snapshot_safe_timers: {exc} (false runs PyFlink's "
            "operator, whose timers a restore can lose: docs/guarantees.md)") from exc


NUDGE_JAR = "build/jars/flink/nudge-flink-operators.jar"


def nudge_java_class(name: str) -> Any:
    """One of nudge's own Java classes (jobs/java/) through the gateway of the environment
    just created; SettingsError naming flink.jars if its jar is on no class path."""
    from py4j.java_gateway import JavaClass
    from pyflink.java_gateway import get_gateway

    j_class = get_gateway().jvm
    for part in name.split("."):
        j_class = getattr(j_class, part)
    if not isinstance(j_class, JavaClass):
        raise SettingsError(f"setting flink.jars: class {name} not found: build it with "
                            f"`make jars` and put {NUDGE_JAR} on flink.jars (pipeline.jars) "
                            "or in the cluster's lib/ folder")
    return j_class


def run_job(name: str, build: Builder, argv: Sequence[str] | None, description: str) -> None:
    """Parse the command line, load settings, build the pipeline and execute it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(description, argv)
    settings = settings_or_exit(args.env)
    try:
        env, t_env = create_environments(settings)
        build(env, t_env, settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    log.info("starting %s (env=%s, parallelism=%d)", name, settings.env,
             settings.flink.parallelism)
    if args.detached:
        client = env.execute_async(name)
        log.info("submitted %s as job %s", name, client.get_job_id())
    else:
        env.execute(name)
