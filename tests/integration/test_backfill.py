"""`make backfill` on the real stack: the scripted trace of test_triggers_kafka, run live
through the triggers job, and the same events as a JSON-lines file through `make
backfill` (bounded, on a local minicluster). The backfill gives exactly the live run's
notifications (same ids, so the same counts per trigger), read back from its own
notifications topic; its report says so too; nothing is `late`; its dead letters are the
live run's.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
from pathlib import Path

from tests.integration.kafka_io import consume, send_events
from tests.integration.test_triggers_kafka import (  # noqa: F401 (fixtures)
    EXPECTED,
    T0,
    ev,
    job_topics,
    produce,
    scripted_trace,
    triggers_job,
)

ROOT = Path(__file__).resolve().parents[2]
JUNK = [b"{not json", b'{"event_id": "x", "event_type": "page_view"}']  # as produce() sends


def reasons(records: list) -> list[str]:
    return sorted(dict(r.headers)["error"].decode() for r in records)


def test_a_backfill_gives_exactly_the_notifications_of_a_live_run(
        stack: dict[str, str], job_topics: dict[str, str],  # noqa: F811
        triggers_job: subprocess.Popen, topic_factory, test_environ: dict[str, str],  # noqa: F811
        tmp_path: Path) -> None:
    bootstrap = stack["bootstrap"]
    produce(bootstrap, job_topics["events"], scripted_trace(), partitions=2)
    live = [json.loads(r.value) for r in consume(
        bootstrap, job_topics["notifications"], len(EXPECTED), timeout_s=240, settle_s=10,
        job=triggers_job, isolation_level="read_committed")]
    assert {(n["trigger"], n["user_id"], n["fired_at"]) for n in live} == EXPECTED
    live_dead = consume(bootstrap, job_topics["dlq"], len(JUNK), timeout_s=60, settle_s=3)

    trace = tmp_path / "trace.jsonl"
    movers = [ev(f"zz-clock-{p}", 300, "page_view", 1) for p in range(2)]
    trace.write_bytes(b"\n".join([*(json.dumps(e).encode() for e in scripted_trace()),
                                  *JUNK, *(json.dumps(e).encode() for e in movers)]) + b"\n")
    out = {"notifications": topic_factory("bf-notif", 2), "dlq": topic_factory("bf-dlq", 1)}
    report_path = tmp_path / "report.json"
    env = {**test_environ, "NUDGE_TOPICS__EVENTS": job_topics["events"],
           "NUDGE_TOPICS__NOTIFICATIONS": out["notifications"],
           "NUDGE_TOPICS__DLQ": out["dlq"], "NUDGE_KAFKA__GROUP_ID": f"bf-{out['dlq']}"}
    env.pop("MAKEFLAGS", None)
    proc = subprocess.run(["make", "--no-print-directory", "backfill", f"FILE={trace}",
                           "PROGRESS=2", f"REPORT={report_path}"],
                          cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # progress while it runs: records read, as the job's checkpoints commit them
    total = len(scripted_trace()) + len(JUNK) + len(movers)
    assert re.search(rf"^triggers: \d+ of {total} records read and checkpointed", proc.stdout,
                     re.M), proc.stdout

    backfilled = [json.loads(r.value) for r in consume(
        bootstrap, out["notifications"], len(live), timeout_s=30, settle_s=3,
        isolation_level="read_committed")]
    ids = sorted(n["notification_id"] for n in backfilled)
    assert ids == sorted(n["notification_id"] for n in live)
    by_trigger = collections.Counter(n["trigger"] for n in backfilled)
    assert by_trigger == collections.Counter(n["trigger"] for n in live)
    dead = consume(bootstrap, out["dlq"], len(JUNK), timeout_s=30, settle_s=3)
    assert reasons(dead) == reasons(live_dead)
    assert "late" not in reasons(dead)

    report = json.loads(report_path.read_text())
    assert report["records"] == total
    assert report["notification_ids"] == ids
    assert report["notifications"] == dict(by_trigger)
    assert report["dead_letters"] == dict(collections.Counter(reasons(dead)))
    assert f"notifications:  {len(ids)}" in proc.stdout


def test_a_backfill_of_a_time_range_of_a_topic_reads_only_that_range(
        stack: dict[str, str], topic_factory, test_environ: dict[str, str],  # noqa: F811
        tmp_path: Path) -> None:
    """`FROM_TOPIC=… SINCE=…`: the records whose Kafka timestamps are in the range (here
    each record's Kafka timestamp is its ts); a cart a day before it is not read."""
    source = topic_factory("bf-src", 2)
    before = ev("u-before", -24 * 60, "add_to_cart", 1, product_id="p1")
    movers = [ev(f"zz-clock-{p}", 300, "page_view", 1) for p in range(2)]
    send_events(stack["bootstrap"], source, [before, *scripted_trace(), *movers])
    notifications = topic_factory("bf-range-notif", 2)
    report_path = tmp_path / "report.json"
    env = {**test_environ, "NUDGE_TOPICS__NOTIFICATIONS": notifications,
           "NUDGE_TOPICS__DLQ": topic_factory("bf-range-dlq", 1),
           "NUDGE_KAFKA__GROUP_ID": f"bf-{notifications}"}
    proc = subprocess.run(["make", "--no-print-directory", "backfill", f"FROM_TOPIC={source}",
                           f"SINCE={T0}", f"REPORT={report_path}"],
                          cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["records"] == len(scripted_trace()) + len(movers)
    got = sorted(json.loads(r.value)["notification_id"] for r in consume(
        stack["bootstrap"], notifications, len(EXPECTED), timeout_s=30, settle_s=3,
        isolation_level="read_committed"))
    assert got == sorted(f"{trigger}:{user}:{at}" for trigger, user, at in EXPECTED)
    assert report["notification_ids"] == got
