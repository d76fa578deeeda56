"""Settings: YAML base + overlay + NUDGE_A__B__C overrides, and errors that name the setting."""

from pathlib import Path

import pytest

from config.settings import SettingsError, load_settings


def test_local_defaults_match_the_contract() -> None:
    s = load_settings("local", {})
    assert s.env == "local"
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.redis.url == "redis://127.0.0.1:6379/0"
    assert s.redis.key_prefix == ""
    assert (s.topics.events, s.topics.notifications, s.topics.dlq, s.topics.privacy,
            s.topics.audit) == ("events", "notifications", "events.dlq", "privacy",
                                "privacy.audit")
    assert s.triggers.cart_abandon_after_ms == 30 * 60_000
    assert s.triggers.checkout_abandon_after_ms == 15 * 60_000
    assert s.triggers.abandon_cooldown_ms == 24 * 3_600_000
    assert s.events.allowed_lateness_ms == 60_000
    assert s.events.watermark_delay_ms == 10_000
    assert s.redis.profile_ttl_ms == 30 * 86_400_000


def test_overlay_replaces_base_values() -> None:
    s = load_settings("docker", {})
    assert s.kafka.bootstrap == "kafka:9092"
    assert s.flink.jars == ()


def test_env_name_comes_from_nudge_env() -> None:
    assert load_settings(None, {"NUDGE_ENV": "cluster"}).env == "cluster"


def test_environment_variables_override_any_path() -> None:
    s = load_settings("local", {
        "NUDGE_KAFKA__BOOTSTRAP": "broker:29092",
        "NUDGE_REDIS__KEY_PREFIX": "shop1:",
        "NUDGE_TRIGGERS__CART_ABANDON_AFTER_MS": "10m",
        "NUDGE_FLINK__PARALLELISM": "4",
        "NUDGE_TRIGGERS__DEFAULT_MARKETING_CONSENT": "false",
        "NUDGE_FLINK__JARS": "a.jar, b.jar",
    })
    assert s.kafka.bootstrap == "broker:29092"
    assert s.redis.key_prefix == "shop1:"
    assert s.triggers.cart_abandon_after_ms == 600_000
    assert s.flink.parallelism == 4
    assert s.triggers.default_marketing_consent is False
    assert s.flink.jars == ("a.jar", "b.jar")


@pytest.mark.parametrize(("environ", "named"), [
    ({"NUDGE_KAFKA__BOOTSTRAPP": "x"}, "kafka.bootstrapp"),
    ({"NUDGE_FLINK__PARALLELISM": "many"}, "flink.parallelism"),
    ({"NUDGE_FLINK__PARALLELISM": "0"}, "flink.parallelism"),
    ({"NUDGE_TRIGGERS__SESSION_GAP_MS": "soon"}, "triggers.session_gap_ms"),
    ({"NUDGE_TRIGGERS__SESSION_GAP_MS": "-5"}, "triggers.session_gap_ms"),
    ({"NUDGE_TOPICS__EVENTS": "bad topic!"}, "topics.events"),
    ({"NUDGE_REDIS__URL": "http://x"}, "redis.url"),
    ({"NUDGE_FORMATS__NOTIFICATIONS": "xml"}, "formats.notifications"),
    ({"NUDGE_KAFKA__TRANSACTION_TIMEOUT_MS": "1h"}, "kafka.transaction_timeout_ms"),
    ({"NUDGE_EVENTS__DEFAULT_CURRENCY": "euro"}, "events.default_currency"),
    ({"NUDGE_TRIGGERS__CART": "1"}, "triggers.cart"),
    ({"NUDGE_ENV": "staging"}, "NUDGE_ENV"),
    ({"NUDGE_FLINK__STATE_BACKEND": "memory"}, "flink.state_backend"),
    ({"NUDGE_FLINK__CHECKPOINT_RETENTION": "keep"}, "flink.checkpoint_retention"),
    ({"NUDGE_FLINK__CHECKPOINT_TIMEOUT_MS": "1s"}, "flink.checkpoint_timeout_ms"),
    ({"NUDGE_FLINK__RESTART_MAX_BACKOFF_MS": "10ms"}, "flink.restart_max_backoff_ms"),
    ({"NUDGE_FLINK__WATERMARK_INTERVAL_MS": "1ms"}, "flink.watermark_interval_ms"),
    ({"NUDGE_FLINK__UNALIGNED_CHECKPOINTS": "true"}, "flink.unaligned_checkpoints"),
    ({"NUDGE_EVENTS__JSON_DECODE": "jvm"}, "events.json_decode"),
])
def test_invalid_settings_name_the_setting(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=rf"setting {named}\b"):
        load_settings(None, environ)


def test_unknown_key_in_an_overlay_file_is_refused(tmp_path: Path) -> None:
    base = Path(__file__).resolve().parents[2] / "config" / "base.yaml"
    (tmp_path / "base.yaml").write_text(base.read_text())
    (tmp_path / "local.yaml").write_text("redis:\n  urll: redis://x\n")
    with pytest.raises(SettingsError, match=r"setting redis\.urll: unknown"):
        load_settings("local", {}, config_dir=tmp_path)


def test_missing_jar_names_the_setting_and_the_fix() -> None:
    s = load_settings("local", {"NUDGE_FLINK__JARS": "build/jars/none.jar"})
    with pytest.raises(SettingsError, match=r"flink\.jars\[0\].*make jars"):
        s.flink.jar_urls()


def test_settings_are_frozen() -> None:
    s = load_settings("local", {})
    with pytest.raises(AttributeError):
        s.kafka.bootstrap = "elsewhere"  # type: ignore[misc]


def test_cluster_overlay_checkpoints_for_production() -> None:
    from jobs.runtime import checkpoint_options

    options = checkpoint_options(load_settings("cluster", {}).flink)
    assert options["state.backend.type"] == "hashmap"
    assert options["execution.checkpointing.incremental"] == "false"
    large = checkpoint_options(load_settings("cluster", {
        "NUDGE_FLINK__STATE_BACKEND": "rocksdb",
        "NUDGE_FLINK__INCREMENTAL_CHECKPOINTS": "true"}).flink)
    assert large["state.backend.type"] == "rocksdb"
    assert large["execution.checkpointing.incremental"] == "true"
    assert options["execution.checkpointing.externalized-checkpoint-retention"] == \
        "RETAIN_ON_CANCELLATION"
    assert options["restart-strategy.type"] == "exponential-delay"
    assert options["execution.checkpointing.timeout"] == "600000 ms"
