"""The trigger rules' settings: one typed, frozen object, all durations in milliseconds.

Every pure trigger function (``udfs.cart``, ``udfs.browse``, ``udfs.high_intent``,
``udfs.gate``) takes a ``TriggerRules`` argument instead of reading settings itself, so the
same code runs in Flink, in tests and in a notebook. The defaults are those of the
external contract (sections "Triggers", "Frequency cap", "Consent").
The object holds only primitives, so it pickles into PyFlink functions as is.

    python -c "from udfs.rules import TriggerRules; print(TriggerRules())"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

CART_ABANDONED = "cart_abandoned"
CHECKOUT_ABANDONED = "checkout_abandoned"
BROWSE_ABANDONED = "browse_abandoned"
HIGH_INTENT = "high_intent"
TRIGGERS: tuple[str, ...] = (CART_ABANDONED, CHECKOUT_ABANDONED, BROWSE_ABANDONED, HIGH_INTENT)

_DURATIONS = (
    "cart_abandon_after",
    "checkout_abandon_after",
    "session_gap",
    "high_intent_within",
    "cart_abandoned_cooldown",
    "checkout_abandoned_cooldown",
    "browse_abandoned_cooldown",
    "high_intent_cooldown",
)
_COUNTS = ("browse_min_views", "browse_max_products")
_FLAGS = ("default_marketing_consent", "default_personalization_consent")


@dataclass(frozen=True)
class TriggerRules:
    """Timeouts, thresholds, cooldowns (ms) and consent defaults of the four triggers.

    ``ValueError`` naming the field is raised for a non-positive or non-integer duration,
    a count below 1, a non-bool consent default or an empty currency.
    """

    cart_abandon_after: int = 30 * MINUTE_MS
    checkout_abandon_after: int = 15 * MINUTE_MS
    session_gap: int = 30 * MINUTE_MS
    browse_min_views: int = 3
    browse_max_products: int = 10
    high_intent_within: int = 10 * MINUTE_MS
    cart_abandoned_cooldown: int = DAY_MS
    checkout_abandoned_cooldown: int = DAY_MS
    browse_abandoned_cooldown: int = DAY_MS
    high_intent_cooldown: int = HOUR_MS
    default_marketing_consent: bool = True
    default_personalization_consent: bool = True
    # Used in cart payloads when no cart event of the run carried a currency.
    default_currency: str = "EUR"

    def __post_init__(self) -> None:
        for name in _DURATIONS + _COUNTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"TriggerRules.{name}: must be an integer, not {value!r}")
        for name in _DURATIONS:
            if getattr(self, name) <= 0:
                raise ValueError(f"TriggerRules.{name}: must be a positive duration in ms, "
                                 f"not {getattr(self, name)!r}")
        for name in _COUNTS:
            if getattr(self, name) < 1:
                raise ValueError(f"TriggerRules.{name}: must be at least 1, "
                                 f"not {getattr(self, name)!r}")
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TriggerRules.{name}: must be true or false, "
                                 f"not {getattr(self, name)!r}")
        if not isinstance(self.default_currency, str) or not self.default_currency.strip():
            raise ValueError(f"TriggerRules.default_currency: must be a currency code, "
                             f"not {self.default_currency!r}")

    def cooldown_ms(self, trigger: str) -> int:
        """The frequency-cap cooldown of ``trigger``; ``ValueError`` for an unknown trigger."""
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {trigger!r}, expected one of {', '.join(TRIGGERS)}")
        return int(getattr(self, f"{trigger}_cooldown"))

    def cooldowns(self) -> dict[str, int]:
        """``{trigger: cooldown_ms}`` for every trigger."""
        return {trigger: self.cooldown_ms(trigger) for trigger in TRIGGERS}

    def replace(self, **changes: Any) -> TriggerRules:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_settings(cls, triggers: Any, default_currency: str = "EUR") -> TriggerRules:
        """Build from the ``triggers`` section of ``config.settings.Settings`` (duck-typed).

        The section's ``abandon_cooldown_ms`` applies to all three abandonment triggers;
        ``browse_max_products`` keeps its default unless the section has it.
        """
        abandon = triggers.abandon_cooldown_ms
        return cls(
            cart_abandon_after=triggers.cart_abandon_after_ms,
            checkout_abandon_after=triggers.checkout_abandon_after_ms,
            session_gap=triggers.session_gap_ms,
            browse_min_views=triggers.browse_min_views,
            browse_max_products=getattr(triggers, "browse_max_products", 10),
            high_intent_within=triggers.high_intent_within_ms,
            cart_abandoned_cooldown=abandon,
            checkout_abandoned_cooldown=abandon,
            browse_abandoned_cooldown=abandon,
            high_intent_cooldown=triggers.high_intent_cooldown_ms,
            default_marketing_consent=triggers.default_marketing_consent,
            default_personalization_consent=triggers.default_personalization_consent,
            default_currency=default_currency,
        )
