"""The local stack of `make up`: each service answers where the README says."""

from __future__ import annotations

import json
import urllib.request

from scripts import stack as stack_mod


def test_services_answer_on_their_ports(stack, kafka_admin, redis_client) -> None:  # type: ignore[no-untyped-def]
    topics = set(kafka_admin.list_topics())
    assert set(stack_mod.contract_topics()) <= topics
    assert redis_client.ping() is True
    with urllib.request.urlopen(f"{stack['flink_rest']}/overview", timeout=5) as resp:
        overview = json.load(resp)
    assert overview["slots-total"] >= 4
    assert overview["flink-version"] == "2.2.1"


def test_events_topic_has_at_least_two_partitions(kafka_admin) -> None:  # type: ignore[no-untyped-def]
    from config.settings import load_settings

    (described,) = kafka_admin.describe_topics([load_settings("local", {}).topics.events])
    assert len(described["partitions"]) >= 2
