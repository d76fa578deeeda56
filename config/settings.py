"""nudge settings: one typed, frozen object built from YAML and the environment.

Order of precedence, lowest first:

1. ``config/base.yaml``
2. the environment's overlay ``config/<env>.yaml`` (``local``, ``docker``, ``cluster``)
3. environment variables ``NUDGE_A__B__C`` for the setting at YAML path ``a.b.c``

Any problem — an unknown key, a wrong type, a value out of range — raises
``SettingsError`` whose message names the setting, so a job stops at start-up
instead of misbehaving later. Nothing here reads ``os.environ`` by itself: callers
pass the environment in (``load_settings(environ=os.environ)``).

    python -m config.settings --env local     # print the effective settings
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent
ROOT = CONFIG_DIR.parent
ENVIRONMENTS = ("local", "docker", "cluster")
ENV_PREFIX = "NUDGE_"
# flink.checkpoint_retention values → Flink's externalized-checkpoint-retention
CHECKPOINT_RETENTION = {"retain_on_cancellation": "RETAIN_ON_CANCELLATION",
                        "delete_on_cancellation": "DELETE_ON_CANCELLATION",
                        "no_externalized": "NO_EXTERNALIZED_CHECKPOINTS"}

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_MS = {None: 1, "ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000,
            "d": 86_400_000}


class SettingsError(ValueError):
    """A setting is missing, unknown or invalid; the message names it."""


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    group_id: str
    starting_offsets: str
    transaction_timeout_ms: int
    schema_registry_url: str

    def check(self) -> None:
        _require(bool(self.bootstrap.strip()), "kafka.bootstrap", "must not be empty")
        _require(self.starting_offsets in ("earliest", "latest"),
                 "kafka.starting_offsets", "must be earliest or latest")
        _require(0 < self.transaction_timeout_ms <= 900_000, "kafka.transaction_timeout_ms",
                 "must be positive and at most 15 min (the broker's default maximum)")


@dataclass(frozen=True)
class TopicSettings:
    events: str
    notifications: str
    dlq: str
    privacy: str
    audit: str

    def check(self) -> None:
        for f in dataclasses.fields(self):
            name = getattr(self, f.name)
            _require(bool(re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name)), f"topics.{f.name}",
                     f"{name!r} is not a valid Kafka topic name")


@dataclass(frozen=True)
class RedisSettings:
    url: str
    key_prefix: str
    profile_ttl_ms: int

    def check(self) -> None:
        _require(self.url.startswith(("redis://", "rediss://", "unix://")), "redis.url",
                 "must start with redis://, rediss:// or unix://")
        _require(self.profile_ttl_ms >= 1000, "redis.profile_ttl_ms", "must be at least 1s")


@dataclass(frozen=True)
class FormatSettings:
    notifications: str

    def check(self) -> None:
        _require(self.notifications in ("json", "avro"), "formats.notifications",
                 "must be json or avro")


@dataclass(frozen=True)
class EventSettings:
    default_currency: str
    max_future_ms: int
    watermark_delay_ms: int
    allowed_lateness_ms: int
    idle_timeout_ms: int
    dedup_horizon_ms: int
    dedup_max_ids: int
    json_decode: str

    def check(self) -> None:
        _require(bool(re.fullmatch(r"[A-Z]{3}", self.default_currency)),
                 "events.default_currency", "must be an ISO 4217 code such as EUR")
        _require(self.json_decode in ("python", "sql"), "events.json_decode",
                 "must be python or sql")
        for name in ("max_future_ms", "watermark_delay_ms", "allowed_lateness_ms",
                     "idle_timeout_ms", "dedup_horizon_ms", "dedup_max_ids"):
            _require(getattr(self, name) > 0, f"events.{name}", "must be positive")


@dataclass(frozen=True)
class TriggerSettings:
    cart_abandon_after_ms: int
    checkout_abandon_after_ms: int
    session_gap_ms: int
    browse_min_views: int
    high_intent_within_ms: int
    abandon_cooldown_ms: int
    high_intent_cooldown_ms: int
    default_marketing_consent: bool
    default_personalization_consent: bool

    def check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, bool):
                _require(value > 0, f"triggers.{f.name}", "must be positive")


@dataclass(frozen=True)
class ProfileSettings:
    short_window_ms: int
    short_slide_ms: int
    long_window_ms: int
    long_slide_ms: int
    new_visitor_ms: int
    high_value_revenue: float
    cart_abandoner_ms: int
    engaged_views_1h: int
    redis_max_wait_ms: int

    def check(self) -> None:
        for size, slide in (("short_window_ms", "short_slide_ms"),
                            ("long_window_ms", "long_slide_ms")):
            _require(getattr(self, slide) > 0, f"profiles.{slide}", "must be positive")
            _require(getattr(self, size) > 0 and getattr(self, size) % getattr(self, slide) == 0,
                     f"profiles.{size}", f"must be a positive multiple of profiles.{slide}")
        for name in ("new_visitor_ms", "cart_abandoner_ms", "engaged_views_1h",
                     "redis_max_wait_ms"):
            _require(getattr(self, name) > 0, f"profiles.{name}", "must be positive")
        _require(self.high_value_revenue >= 0, "profiles.high_value_revenue",
                 "must not be negative")


@dataclass(frozen=True)
class PrivacySettings:
    erasure_tombstone_ms: int
    state_idle_ms: int
    consent_retention_ms: int
    max_query_chars: int

    def check(self) -> None:
        for f in dataclasses.fields(self):
            _require(getattr(self, f.name) > 0, f"privacy.{f.name}", "must be positive")


@dataclass(frozen=True)
class FlinkSettings:
    parallelism: int
    checkpoint_interval_ms: int
    watermark_interval_ms: int
    python_execution_mode: str
    python_bundle_size: int
    python_bundle_time_ms: int
    python_state_cache_size: int
    python_pipelined_state_commit: bool
    python_snapshot_safe_timers: bool
    checkpoint_dir: str
    checkpoint_timeout_ms: int
    checkpoint_min_pause_ms: int
    tolerable_checkpoint_failures: int
    checkpoint_retention: str
    state_backend: str
    incremental_checkpoints: bool
    unaligned_checkpoints: bool
    restart_initial_backoff_ms: int
    restart_max_backoff_ms: int
    jars: tuple[str, ...] = field(default_factory=tuple)

    def check(self) -> None:
        _require(self.parallelism >= 1, "flink.parallelism", "must be at least 1")
        _require(self.checkpoint_interval_ms >= 100, "flink.checkpoint_interval_ms",
                 "must be at least 100ms")
        _require(self.watermark_interval_ms >= 10, "flink.watermark_interval_ms",
                 "must be at least 10ms")
        _require(self.python_execution_mode in ("process", "thread"),
                 "flink.python_execution_mode", "must be process or thread")
        for name in ("python_bundle_size", "python_bundle_time_ms", "python_state_cache_size",
                     "checkpoint_timeout_ms", "restart_initial_backoff_ms"):
            _require(getattr(self, name) > 0, f"flink.{name}", "must be positive")
        _require(self.checkpoint_timeout_ms > self.checkpoint_interval_ms // 2,
                 "flink.checkpoint_timeout_ms", "must exceed half the checkpoint interval")
        _require(self.checkpoint_min_pause_ms >= 0, "flink.checkpoint_min_pause_ms",
                 "must not be negative")
        _require(self.tolerable_checkpoint_failures >= 0,
                 "flink.tolerable_checkpoint_failures", "must not be negative")
        _require(self.checkpoint_retention in CHECKPOINT_RETENTION,
                 "flink.checkpoint_retention", f"must be one of {', '.join(CHECKPOINT_RETENTION)}")
        _require(self.state_backend in ("hashmap", "rocksdb"), "flink.state_backend",
                 "must be hashmap or rocksdb")
        _require(self.restart_max_backoff_ms >= self.restart_initial_backoff_ms,
                 "flink.restart_max_backoff_ms", "must be at least restart_initial_backoff_ms")
        # The source stage holds rows behind a record Python decodes; only aligned
        # checkpoints see none in flight (jobs/java/dev/nudge/flink/OffsetOrderMerge.java),
        # and the fault suite lost notifications with unaligned ones (docs/guarantees.md).
        _require(not self.unaligned_checkpoints, "flink.unaligned_checkpoints",
                 "must be false: the jobs are exactly once with aligned checkpoints only")

    def checkpoint_uri(self) -> str | None:
        """Where checkpoints go: a URI, a path (relative to the repository root), or
        None to leave it to the cluster's configuration."""
        if not self.checkpoint_dir:
            return None
        if "://" in self.checkpoint_dir:
            return self.checkpoint_dir
        path = Path(self.checkpoint_dir)
        return (path if path.is_absolute() else ROOT / path).as_uri()

    def jar_urls(self) -> list[str]:
        """``file://`` URLs of the jars, relative paths taken from the repository root."""
        urls = []
        for i, jar in enumerate(self.jars):
            path = Path(jar) if Path(jar).is_absolute() else ROOT / jar
            _require(path.is_file(), f"flink.jars[{i}]",
                     f"{path} does not exist (run `make jars`)")
            urls.append(path.as_uri())
        return urls


@dataclass(frozen=True)
class Settings:
    env: str
    kafka: KafkaSettings
    topics: TopicSettings
    redis: RedisSettings
    formats: FormatSettings
    events: EventSettings
    triggers: TriggerSettings
    profiles: ProfileSettings
    privacy: PrivacySettings
    flink: FlinkSettings

    def check(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "check"):
                section.check()
        _require(self.kafka.transaction_timeout_ms > self.flink.checkpoint_interval_ms,
                 "kafka.transaction_timeout_ms", "must exceed flink.checkpoint_interval_ms")
        _require(self.privacy.erasure_tombstone_ms >= self.events.watermark_delay_ms
                 + self.events.allowed_lateness_ms + self.triggers.session_gap_ms,
                 "privacy.erasure_tombstone_ms", "must cover the watermark delay, the "
                 "allowed lateness and a session gap (rows from before an erasure can "
                 "arrive that long after it)")
        _require(self.privacy.state_idle_ms >= max(self.triggers.abandon_cooldown_ms,
                                                    self.triggers.high_intent_cooldown_ms,
                                                    self.profiles.long_window_ms),
                 "privacy.state_idle_ms", "must be at least the longest cooldown and the "
                 "long profile window (state younger than that is still in use)")
        _require(self.events.dedup_horizon_ms >= self.triggers.session_gap_ms,
                 "events.dedup_horizon_ms", "must be at least triggers.session_gap_ms (the "
                 "SQL state TTL also bounds the session-start detection)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _require(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise SettingsError(f"setting {path}: {message}")


def load_settings(env: str | None = None, environ: Mapping[str, str] | None = None,
                  config_dir: Path = CONFIG_DIR) -> Settings:
    """Build the settings of environment ``env`` (default: ``NUDGE_ENV`` or ``local``)."""
    environ = {} if environ is None else environ
    env = env or environ.get("NUDGE_ENV") or "local"
    if env not in ENVIRONMENTS:
        raise SettingsError(f"setting NUDGE_ENV: unknown environment {env!r}, "
                            f"expected one of {', '.join(ENVIRONMENTS)}")
    tree = _read_yaml(config_dir / "base.yaml")
    _merge(tree, _read_yaml(config_dir / f"{env}.yaml"), "")
    for var, raw in sorted(environ.items()):
        if var.startswith(ENV_PREFIX) and var != "NUDGE_ENV" and "__" in var:
            _apply_override(tree, var, raw)
    tree["env"] = env
    settings = _build(Settings, tree, "")
    settings.check()
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"settings file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path}: top level must be a mapping")
    return data


def _merge(base: dict[str, Any], overlay: Mapping[str, Any], prefix: str) -> None:
    for key, value in overlay.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise SettingsError(f"setting {path}: unknown setting")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise SettingsError(f"setting {path}: must be a mapping")
            _merge(base[key], value, f"{path}.")
        else:
            base[key] = value


def _apply_override(tree: dict[str, Any], var: str, raw: str) -> None:
    parts = var[len(ENV_PREFIX):].lower().split("__")
    node: Any = tree
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        if not isinstance(node, dict) or part not in node:
            raise SettingsError(f"setting {path} (from {var}): unknown setting")
        if i == len(parts) - 1:
            if isinstance(node[part], dict):
                raise SettingsError(f"setting {path} (from {var}): is a section, not a value")
            node[part] = _parse_env_value(raw, node[part])
        node = node[part]


def _parse_env_value(raw: str, current: Any) -> Any:
    """Strings stay strings; lists take comma-separated items; the rest is parsed as YAML."""
    if isinstance(current, str):
        return raw
    if isinstance(current, list):
        return [item.strip() for item in raw.split(",") if item.strip()]
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise SettingsError(f"setting {prefix.rstrip('.') or '(root)'}: must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise SettingsError(f"setting {prefix}{key}: unknown setting")
    values = {}
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if f.name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise SettingsError(f"setting {path}: missing")
        values[f.name] = _coerce(hints[f.name], data[f.name], path)
    return cls(**values)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{path}.")  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    if origin is tuple:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise SettingsError(f"setting {path}: must be a list")
        (item_type, _) = typing.get_args(hint)
        return tuple(_coerce(item_type, v, f"{path}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise SettingsError(f"setting {path}: must be true or false, not {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if path.endswith("_ms") and isinstance(value, str):
            return _duration_ms(value, path)
        raise SettingsError(f"setting {path}: must be an integer, not {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise SettingsError(f"setting {path}: must be a number, not {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise SettingsError(f"setting {path}: must be a string, not {value!r}")
    if isinstance(hint, types.UnionType):  # pragma: no cover - no optional settings yet
        raise SettingsError(f"setting {path}: unsupported type {hint}")
    raise SettingsError(f"setting {path}: unsupported type {hint}")


def _duration_ms(text: str, path: str) -> int:
    match = _DURATION.match(text)
    if not match:
        raise SettingsError(f"setting {path}: {text!r} is not a duration (e.g. 500ms, 10s, "
                            "30m, 24h, 7d)")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the effective nudge settings.")
    parser.add_argument("--env", choices=ENVIRONMENTS, default=None)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.env, os.environ)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(settings.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
