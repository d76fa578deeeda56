"""Privacy: requests from the ``privacy`` topic, erasure tombstones, idle clean-up and
the audit record — the pure rules both jobs share, with no Flink in sight.

Requests (contract, "Privacy topic"), JSON only:

    {"type": "consent", "user_id": "u42", "ts": …, "personalization": false, "marketing": true}
    {"type": "erasure", "user_id": "u42", "ts": …}

``decode_request`` turns a record value into a ``PrivacyRequest`` or a ``Rejection``
whose reason goes to the DLQ ``error`` header, checked in this order:

    invalid_utf8 invalid_json not_an_object     as for events (udfs/codecs.py)
    missing:type bad_type:type                  `type` absent / not a string
    unknown_privacy_type                        not "consent" nor "erasure"
    missing:/bad_type:/empty:/too_long:user_id  as for events
    missing:ts bad_ts future_ts                 as for events (integer ms or ISO-8601)
    bad_type:personalization bad_type:marketing consent flags: true, false or absent
    missing:consent                             a consent request stating neither flag

A consent request may state one flag only; the other stays as it was.

Erasure (docs/privacy.md): a keyed function that receives an erasure for ``ts`` clears
every piece of the user's state at once — it does not wait for the watermark — and keeps
only a *tombstone*: ``ts`` itself, for ``erasure_tombstone_ms``. Rows built from the
user's events before ``ts`` that are still on their way (held back by the watermark, or
a session that spans the request) are then dropped when they arrive
(``from_erased_past``). Rows from ``ts`` on belong to a new user.

Idle clean-up: a user's state is dropped ``state_idle_ms`` (event time) after their last
activity. Timers are rounded up to ``IDLE_TIMER_GRANULARITY_MS`` so that a busy user has
one clean-up timer per hour, not one per event (Flink keeps one timer per key and
timestamp). Stated consent outlives that (``consent_retention_ms``): a user who withdrew
consent and went quiet must not come back with the default.

    .venv/bin/python -m pytest tests/unit/test_privacy.py -q
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from udfs.codecs import decode_json
from udfs.events import (
    DEFAULT_RULES,
    EventRules,
    Invalid,
    Rejection,
    checked_ts,
    required_str,
)

CONSENT, ERASURE = "consent", "erasure"
REQUEST_TYPES = (CONSENT, ERASURE)
IDLE_TIMER_GRANULARITY_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class PrivacyRequest:
    """A valid request. For consent, a flag is None when the request leaves it as is."""

    type: str
    user_id: str
    ts: int
    personalization: bool | None = None
    marketing: bool | None = None


def validate_request(obj: Any, kafka_ts_ms: int | None,
                     rules: EventRules = DEFAULT_RULES) -> PrivacyRequest | Rejection:
    """Check a decoded JSON value against the contract's two request shapes."""
    try:
        return _validate_request(obj, kafka_ts_ms, rules)
    except Invalid as invalid:
        return Rejection(invalid.reason)


def _validate_request(obj: Any, kafka_ts_ms: int | None, rules: EventRules) -> PrivacyRequest:
    """`user_id` and `ts` follow the events' rules (udfs/events.py)."""
    if not isinstance(obj, dict):
        raise Invalid("not_an_object")
    kind = obj.get("type")
    if kind is None:
        raise Invalid("missing:type")
    if not isinstance(kind, str):
        raise Invalid("bad_type:type")
    if kind not in REQUEST_TYPES:
        raise Invalid("unknown_privacy_type")
    user_id = required_str(obj, "user_id")
    if len(user_id) > rules.max_user_id_len:
        raise Invalid("too_long:user_id")
    ts = checked_ts(obj, kafka_ts_ms, rules)
    if kind == ERASURE:
        return PrivacyRequest(ERASURE, user_id, ts)
    flags: dict[str, bool | None] = {}
    for name in ("personalization", "marketing"):
        flag = obj.get(name)
        if flag is not None and not isinstance(flag, bool):
            raise Invalid(f"bad_type:{name}")
        flags[name] = flag
    if flags["personalization"] is None and flags["marketing"] is None:
        raise Invalid("missing:consent")
    return PrivacyRequest(CONSENT, user_id, ts, flags["personalization"], flags["marketing"])


def decode_request(raw: bytes | None, kafka_ts_ms: int | None,
                   rules: EventRules = DEFAULT_RULES) -> PrivacyRequest | Rejection:
    """A record value of the privacy topic → a request, or why it is not one."""
    if not raw:
        return Rejection("empty_value")
    decoded = decode_json(raw)
    if isinstance(decoded, str):
        return Rejection(decoded)
    return validate_request(decoded, kafka_ts_ms, rules)


def from_erased_past(erased_at: int | None, ts: int | None) -> bool:
    """True when a row whose data starts at ``ts`` holds events from before the user's
    erasure at ``erased_at`` (so it must be dropped)."""
    return erased_at is not None and ts is not None and ts < erased_at


def idle_timer(last_activity: int, idle_ms: int) -> int:
    """When the state of a user last active at ``last_activity`` may be dropped: at least
    ``idle_ms`` later, rounded up to the clean-up timers' granularity."""
    due = last_activity + idle_ms
    return -(-due // IDLE_TIMER_GRANULARITY_MS) * IDLE_TIMER_GRANULARITY_MS


def minimize_query(query: str | None, max_chars: int) -> str | None:
    """A search query cut to ``max_chars`` characters (what a message template needs)."""
    if query is None:
        return None
    return query[:max_chars]


def audit_record(user_id: str, requested_at: int, completed_at: int,
                 redis_keys_deleted: list[str]) -> bytes:
    """The ``privacy.audit`` record of one erasure carried out (JSON, UTF-8)."""
    return json.dumps({"user_id": user_id, "requested_at": requested_at,
                       "completed_at": completed_at,
                       "redis_keys_deleted": sorted(redis_keys_deleted)},
                      separators=(",", ":")).encode()
