"""Trigger settings (udfs.rules): contract defaults and validation."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from udfs.rules import TRIGGERS, TriggerRules

MIN, HOUR = 60_000, 3_600_000


def test_defaults_are_the_contracts() -> None:
    rules = TriggerRules()
    assert (rules.cart_abandon_after, rules.checkout_abandon_after) == (30 * MIN, 15 * MIN)
    assert (rules.session_gap, rules.high_intent_within) == (30 * MIN, 10 * MIN)
    assert (rules.browse_min_views, rules.browse_max_products) == (3, 10)
    assert rules.cooldowns() == {"cart_abandoned": 24 * HOUR, "checkout_abandoned": 24 * HOUR,
                                 "browse_abandoned": 24 * HOUR, "high_intent": HOUR}
    assert rules.default_marketing_consent and rules.default_personalization_consent
    assert rules.default_currency == "EUR"
    assert set(rules.cooldowns()) == set(TRIGGERS)


def test_unknown_trigger_has_no_cooldown() -> None:
    with pytest.raises(ValueError, match="unknown trigger"):
        TriggerRules().cooldown_ms("birthday")


@pytest.mark.parametrize("field, value", [
    ("cart_abandon_after", 0),
    ("checkout_abandon_after", -1),
    ("session_gap", 1.5),
    ("high_intent_within", True),
    ("high_intent_cooldown", 0),
    ("browse_abandoned_cooldown", None),
    ("browse_min_views", 0),
    ("browse_max_products", 0),
    ("default_marketing_consent", 1),
    ("default_personalization_consent", "yes"),
    ("default_currency", ""),
])
def test_invalid_values_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TriggerRules(**{field: value})  # type: ignore[arg-type]


def test_frozen_replace_and_pickle() -> None:
    rules = TriggerRules()
    with pytest.raises(AttributeError):
        rules.session_gap = 1  # type: ignore[misc]
    assert rules.replace(browse_min_views=1).browse_min_views == 1
    with pytest.raises(ValueError, match="browse_min_views"):
        rules.replace(browse_min_views=0)
    assert pickle.loads(pickle.dumps(rules)) == rules


def test_from_settings_section() -> None:
    section = SimpleNamespace(
        cart_abandon_after_ms=60_000, checkout_abandon_after_ms=30_000, session_gap_ms=120_000,
        browse_min_views=2, high_intent_within_ms=10_000, abandon_cooldown_ms=5 * HOUR,
        high_intent_cooldown_ms=HOUR // 2, default_marketing_consent=False,
        default_personalization_consent=True)
    rules = TriggerRules.from_settings(section, default_currency="USD")
    assert rules == TriggerRules(
        cart_abandon_after=60_000, checkout_abandon_after=30_000, session_gap=120_000,
        browse_min_views=2, high_intent_within=10_000, cart_abandoned_cooldown=5 * HOUR,
        checkout_abandoned_cooldown=5 * HOUR, browse_abandoned_cooldown=5 * HOUR,
        high_intent_cooldown=HOUR // 2, default_marketing_consent=False,
        default_currency="USD")
