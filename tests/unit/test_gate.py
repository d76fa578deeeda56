"""The per-user gate (udfs.gate): marketing consent and the frequency cap.

Timelines are in hours after T0; ``f`` is a firing offered to the gate, ``E`` emitted,
``C`` suppressed by the cap, ``N`` suppressed for lack of consent, ``m-``/``m+`` a
marketing consent update (revoked / granted).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence

from udfs.gate import Decision, GateState, decide, on_consent, prune
from udfs.notifications import Firing
from udfs.rules import TriggerRules

T0 = 1_764_380_400_000
RULES = TriggerRules()
CART = "cart_abandoned"
CHECKOUT = "checkout_abandoned"
HI = "high_intent"
E, C, N = Decision.EMIT, Decision.SUPPRESSED_CAP, Decision.SUPPRESSED_CONSENT


def at(hours: float) -> int:
    return T0 + round(hours * 3_600_000)


def firing(trigger: str, hours: float, user: str = "u1") -> Firing:
    return Firing(trigger, user, at(hours), {})


def gate(steps: Sequence[tuple[str, float]], rules: TriggerRules = RULES) -> list[Decision]:
    """Run ``(trigger, hours)`` firings and ``("m-" | "m+", hours)`` consent updates."""
    state = GateState()
    decisions = []
    for kind, hours in steps:
        if kind in ("m-", "m+"):
            state = on_consent(state, at(hours), kind == "m+", None)
        else:
            state, decision = decide(state, firing(kind, hours), rules)
            decisions.append(decision)
    return decisions


def test_a_user_never_seen_with_consent_gets_the_default() -> None:
    assert gate([(CART, 0)]) == [E]
    assert gate([(CART, 0)], RULES.replace(default_marketing_consent=False)) == [N]
    state = GateState()
    assert state.marketing_granted(RULES) and state.personalization_granted(RULES)
    no_profiles = RULES.replace(default_personalization_consent=False)
    assert not state.personalization_granted(no_profiles)


# f E      f C (23:59)        f E (exactly 24 h)
# 0 ------ 23.99 ------------ 24
def test_cap_within_and_exactly_at_the_cooldown() -> None:
    just_before = 24 - 1 / 3_600_000
    assert gate([(CART, 0), (CART, just_before), (CART, 24)]) == [E, C, E]


# f E    f C    f C    f E (24 h after the last *emitted*, not after 20 h)
# 0 ---- 10 --- 20 --- 24
def test_suppressed_firings_do_not_extend_the_cap() -> None:
    assert gate([(CART, 0), (CART, 10), (CART, 20), (CART, 24)]) == [E, C, C, E]


# cart E   checkout E   cart C   checkout C   (each trigger has its own cap)
# 0        1            2        3
def test_caps_are_per_trigger() -> None:
    assert gate([(CART, 0), (CHECKOUT, 1), (CART, 2), (CHECKOUT, 3)]) == [E, E, C, C]


# hi E   hi C (0:59)   hi E (1:00)   hi C (1:30)   hi E (2:00)
# 0 ---- 0.98 -------- 1 ----------- 1.5 --------- 2
def test_high_intent_cooldown_is_one_hour() -> None:
    assert gate([(HI, 0), (HI, 59 / 60), (HI, 1), (HI, 1.5), (HI, 2)]) == [E, C, E, C, E]


def test_caps_are_per_user() -> None:
    state, first = decide(GateState(), firing(CART, 0, "u1"), RULES)
    state, other = decide(GateState(), firing(CART, 0, "u2"), RULES)
    assert (first, other) == (E, E)


# f E   m-   f N   f N   m+   f E (1 day after the first: cap over)   f C
# 0     1    2     25    26   27                                     28
def test_consent_flips() -> None:
    steps = [(CART, 0), ("m-", 1), (CART, 2), (CART, 25), ("m+", 26), (CART, 27), (CART, 28)]
    assert gate(steps) == [E, N, N, E, C]


# m-   f N   m+   f E (the consent-suppressed firing at 1 set no cap)
# 0    1     2    3
def test_consent_suppressed_firings_set_no_cap() -> None:
    assert gate([("m-", 0), (CART, 1), ("m+", 2), (CART, 3)]) == [N, E]


def test_consent_is_checked_before_the_cap() -> None:
    assert gate([(CART, 0), ("m-", 1), (CART, 2)]) == [E, N]


def test_stale_consent_updates_are_ignored_and_none_keeps_a_field() -> None:
    state = on_consent(GateState(), at(5), False, True)
    assert on_consent(state, at(4), True, True) == state
    state = on_consent(state, at(6), None, False)
    assert (state.marketing, state.personalization, state.consent_ts) == (False, False, at(6))
    state = on_consent(state, at(6), True, None)  # equal ts: the later one applies
    assert (state.marketing, state.personalization) == (True, False)


def test_personalization_does_not_gate_notifications() -> None:
    state = on_consent(GateState(), at(0), True, False)
    assert decide(state, firing(CART, 1), RULES)[1] == E


def test_prune_forgets_caps_that_cannot_suppress_any_more() -> None:
    state = GateState()
    state, _ = decide(state, firing(CART, 0), RULES)
    state, _ = decide(state, firing(HI, 0), RULES)
    assert prune(state, at(0.5), RULES) == state
    assert prune(state, at(1), RULES).last_emitted == {CART: at(0)}
    assert prune(state, at(24), RULES).is_clearable


def test_state_round_trips() -> None:
    state = on_consent(GateState(), at(0), False, True)
    state = GateState(state.marketing, state.personalization, state.consent_ts, {CART: at(1)})
    assert GateState.from_state(pickle.loads(pickle.dumps(state.to_state()))) == state
    assert Decision.SUPPRESSED_CAP == "suppressed_cap"
