"""The local stack's Kafka cluster id must never look like a command-line option."""

from __future__ import annotations

import uuid

import pytest

from scripts import stack


def test_cluster_id_starting_with_a_dash_is_drawn_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xF8 encodes to "-" first in URL-safe base64; the second draw does not
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=bytes(16))])
    monkeypatch.setattr(stack.uuid, "uuid4", lambda: next(draws))
    cluster_id = stack.kafka_cluster_id()
    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAA"
    assert next(draws, None) is None  # both draws were used


def test_cluster_ids_are_22_url_safe_characters() -> None:
    ids = {stack.kafka_cluster_id() for _ in range(500)}
    assert len(ids) == 500
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
