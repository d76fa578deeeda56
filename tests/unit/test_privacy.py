"""udfs.privacy: the privacy topic's two request shapes, every rejection reason, the
erasure tombstone rule, clean-up timers, query minimization and the audit record.

    .venv/bin/python -m pytest tests/unit/test_privacy.py -q
"""

from __future__ import annotations

import json

import pytest

from udfs.events import EventRules, Rejection
from udfs.privacy import (
    IDLE_TIMER_GRANULARITY_MS,
    PrivacyRequest,
    audit_record,
    decode_request,
    from_erased_past,
    idle_timer,
    minimize_query,
)

TS = 1_764_380_400_000
HOUR = 3_600_000


def raw(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_the_contract_examples_decode() -> None:
    consent = raw(type="consent", user_id="u42", ts=TS, personalization=False, marketing=True)
    assert decode_request(consent, TS) == PrivacyRequest("consent", "u42", TS, False, True)
    assert decode_request(raw(type="erasure", user_id="u42", ts=TS), TS) == \
        PrivacyRequest("erasure", "u42", TS)


def test_a_consent_request_may_state_one_flag() -> None:
    got = decode_request(raw(type="consent", user_id="u", ts=TS, marketing=False), TS)
    assert got == PrivacyRequest("consent", "u", TS, None, False)


def test_iso_timestamps_are_normalized() -> None:
    got = decode_request(raw(type="erasure", user_id="u", ts="2025-11-29T01:40:00Z"), None)
    assert isinstance(got, PrivacyRequest) and got.ts == TS


@pytest.mark.parametrize(("value", "reason"), [
    (b"", "empty_value"),
    (None, "empty_value"),
    (b"{not json", "invalid_json"),
    (b"\xff\xfe", "invalid_utf8"),
    (b"[1, 2]", "not_an_object"),
    (raw(user_id="u", ts=TS), "missing:type"),
    (raw(type=1, user_id="u", ts=TS), "bad_type:type"),
    (raw(type="forget", user_id="u", ts=TS), "unknown_privacy_type"),
    (raw(type="erasure", ts=TS), "missing:user_id"),
    (raw(type="erasure", user_id=42, ts=TS), "bad_type:user_id"),
    (raw(type="erasure", user_id="", ts=TS), "empty:user_id"),
    (raw(type="erasure", user_id="u" * 129, ts=TS), "too_long:user_id"),
    (raw(type="erasure", user_id="u"), "missing:ts"),
    (raw(type="erasure", user_id="u", ts="yesterday"), "bad_ts"),
    (raw(type="erasure", user_id="u", ts=TS + 2 * 86_400_000), "future_ts"),
    (raw(type="consent", user_id="u", ts=TS, marketing="no"), "bad_type:marketing"),
    (raw(type="consent", user_id="u", ts=TS, personalization=0), "bad_type:personalization"),
    (raw(type="consent", user_id="u", ts=TS), "missing:consent"),
])
def test_malformed_requests_are_rejected_with_their_reason(value: bytes | None,
                                                           reason: str) -> None:
    assert decode_request(value, TS) == Rejection(reason)


def test_the_future_limit_is_the_events_setting() -> None:
    request = raw(type="erasure", user_id="u", ts=TS + 10_000)
    assert decode_request(request, TS, EventRules(max_future_ms=5_000)) == \
        Rejection("future_ts")
    assert isinstance(decode_request(request, TS, EventRules(max_future_ms=20_000)),
                      PrivacyRequest)


def test_rows_from_before_an_erasure_are_from_the_erased_past() -> None:
    assert from_erased_past(TS, TS - 1)
    assert not from_erased_past(TS, TS)  # from the request on: a new user
    assert not from_erased_past(None, TS - 1)  # never erased
    assert not from_erased_past(TS, None)


def test_idle_timers_are_at_least_the_idle_time_later_and_hour_aligned() -> None:
    for last in (TS, TS + 1, TS + HOUR - 1, 0):
        due = idle_timer(last, 30 * 86_400_000)
        assert due % IDLE_TIMER_GRANULARITY_MS == 0
        assert last + 30 * 86_400_000 <= due < last + 30 * 86_400_000 + HOUR
    # a busy user shares one timer per hour
    assert idle_timer(TS + 5, HOUR) == idle_timer(TS + 60_000, HOUR)


def test_queries_are_cut_to_the_configured_length() -> None:
    assert minimize_query("red running shoes size 44", 9) == "red runni"
    assert minimize_query("short", 100) == "short"
    assert minimize_query(None, 10) is None


def test_the_audit_record_has_the_contract_fields() -> None:
    record = json.loads(audit_record("u42", TS, TS + 1500, ["profile:u42"]))
    assert record == {"user_id": "u42", "requested_at": TS, "completed_at": TS + 1500,
                      "redis_keys_deleted": ["profile:u42"]}
