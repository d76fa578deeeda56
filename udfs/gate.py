"""The per-user gate every trigger firing passes before it becomes a notification:
marketing consent, then the frequency cap.

The Flink side keys firings and consent updates by user, keeps one ``GateState``
(``to_state()`` in a ``ValueState``), calls ``on_consent`` for consent updates (from the
``privacy`` topic or an event's ``consent`` field) and ``decide`` for firings, applied
together in event-time order (a consent update before a firing of equal ts), and emits
the firings ``decide`` answers ``EMIT`` for. The others are counted by their decision.

Rules (contract, "Frequency cap" and "Consent"):

* Consent: a firing is emitted only while marketing consent is granted. A user never
  seen with consent has ``rules.default_marketing_consent`` (granted). Personalization
  consent is kept here for the profile writers; it does not gate notifications. A
  consent update older than the one applied last (by ``ts``) is ignored; a field given
  as ``None`` is left as it was.
* Cap: a firing is suppressed when ``fired_at < last_emitted + cooldown(trigger)``, with
  ``last_emitted`` the ``fired_at`` of the user's last *emitted* firing of the same
  trigger. A firing exactly ``cooldown`` after it is emitted. Suppressed firings (for
  either reason) do not move the cap.
* When both apply, consent is checked first: the firing counts as
  ``SUPPRESSED_CONSENT``.

    .venv/bin/python -m pytest tests/unit/test_gate.py -q
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from udfs.notifications import Firing
from udfs.rules import TriggerRules


class Decision(enum.StrEnum):
    """What the gate does with a firing; the value doubles as a metric name."""

    EMIT = "emit"
    SUPPRESSED_CAP = "suppressed_cap"
    SUPPRESSED_CONSENT = "suppressed_consent"


@dataclass(frozen=True)
class GateState:
    """One user's consent and the ``fired_at`` of the last emitted firing per trigger.

    ``None`` consent means "never seen": the rules' default applies. ``last_emitted`` is
    never changed in place; every update builds a new dict.
    """

    marketing: bool | None = None
    personalization: bool | None = None
    consent_ts: int | None = None
    last_emitted: dict[str, int] = field(default_factory=dict)

    def marketing_granted(self, rules: TriggerRules) -> bool:
        """Marketing consent in force (the default when never seen)."""
        return rules.default_marketing_consent if self.marketing is None else self.marketing

    def personalization_granted(self, rules: TriggerRules) -> bool:
        """Personalization consent in force (the default when never seen)."""
        if self.personalization is None:
            return rules.default_personalization_consent
        return self.personalization

    @property
    def is_clearable(self) -> bool:
        """True when the state says nothing beyond the defaults (safe to drop)."""
        return self.marketing is None and self.personalization is None and not self.last_emitted

    def to_state(self) -> dict[str, Any]:
        """Primitives only, for a PyFlink ``ValueState``."""
        return {"marketing": self.marketing, "personalization": self.personalization,
                "consent_ts": self.consent_ts, "last_emitted": dict(self.last_emitted)}

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> GateState:
        """Inverse of ``to_state``."""
        return cls(marketing=data.get("marketing"), personalization=data.get("personalization"),
                   consent_ts=data.get("consent_ts"),
                   last_emitted={str(k): int(v) for k, v in data.get("last_emitted", {}).items()})


def on_consent(state: GateState, ts: int, marketing: bool | None,
               personalization: bool | None) -> GateState:
    """Apply a consent update made at ``ts``; older than the last applied one: ignored."""
    if state.consent_ts is not None and ts < state.consent_ts:
        return state
    return replace(
        state,
        marketing=state.marketing if marketing is None else bool(marketing),
        personalization=(state.personalization if personalization is None
                         else bool(personalization)),
        consent_ts=ts,
    )


def decide(state: GateState, firing: Firing, rules: TriggerRules) -> tuple[GateState, Decision]:
    """Emit or suppress ``firing``; only an emitted firing updates the state."""
    if not state.marketing_granted(rules):
        return state, Decision.SUPPRESSED_CONSENT
    last = state.last_emitted.get(firing.trigger)
    if last is not None and firing.fired_at < last + rules.cooldown_ms(firing.trigger):
        return state, Decision.SUPPRESSED_CAP
    emitted = {**state.last_emitted, firing.trigger: firing.fired_at}
    return replace(state, last_emitted=emitted), Decision.EMIT


def prune(state: GateState, ts: int, rules: TriggerRules) -> GateState:
    """Forget caps that can no longer suppress a firing at or after ``ts``."""
    kept = {t: at for t, at in state.last_emitted.items() if ts < at + rules.cooldown_ms(t)}
    return state if kept == state.last_emitted else replace(state, last_emitted=kept)
