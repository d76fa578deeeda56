"""The profiles job: per-user sliding-window activity, lifetime figures and segments in
the Redis hash ``profile:<user_id>``.

    events ─► source stage (jobs/source.py) ─► TUMBLE 1 min per user (JVM) ─► slices ─┐
           ├─ late events (their slice already cut) ──────────────────────► late ─────┤
           └─ events stating consent ─────────────────────────────────────► consent ──┤
    privacy ─► consent changes, erasure requests (jobs/source.py) ────────────────────┤
    notifications (read_committed) ─ cart_abandoned ──────────────────────────────────┤
                                                                                       ▼
           ProfileFunction (Python, keyed by user; rules in udfs/profile.py)
             windows 10m/1m and 1h/5m as sums of slices, 0s once a window is empty,
             lifetime figures, segments ─► Redis operations; erasure: clear + tombstone
           RedisBatchWriter (pandas UDF) ─► one Redis pipeline per batch (guarded,
             idempotent, TTL refreshed) ─► one audit record per erasure carried out
                                            ─► privacy.audit (Kafka transactions)

Flink SQL reduces the events to one row per user and minute with activity; Python sees
those rows and writes each window as the watermark passes its end.

This job follows the contract's watermark (highest ts − 10 s), not the triggers job's
(− 70 s, which waits out the allowed lateness): a profile can be corrected, a
notification cannot. An event up to the allowed lateness behind the watermark whose
minute was already cut comes as a 'late' row of its own; it joins its slice, and every
window already written that holds it is written again at once (udfs.profile.add_late).

    python -m jobs.profiles              # local minicluster, until Ctrl-C
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `flink run -py jobs/profiles.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyflink.datastream import KeyedProcessFunction  # noqa: E402
from pyflink.table.udf import ScalarFunction  # noqa: E402

from config.settings import Settings  # noqa: E402
from jobs.keyed_record import KeyedRecord  # noqa: E402
from jobs.runtime import run_job  # noqa: E402
from jobs.source import (  # noqa: E402
    create_transactional_sink,
    kafka_options,
    positions,
    read_events,
    read_privacy,
    select_as,
    sql_interval,
)
from jobs.tombstone import Tombstone  # noqa: E402

JOB_NAME = "nudge-profiles"
# The notifications input goes idle after this long without records (cart_abandonments)
NOTIFICATIONS_IDLE_MS = 1000
# What the profile function emits: one Redis operation (udfs/profile_store.py) per row.
OP_FIELDS = ("op", "key", "args")

SIGNAL_COLUMNS = (
    "kind STRING", "user_id STRING", "ts BIGINT", "events BIGINT", "product_views BIGINT",
    "carts BIGINT", "purchases BIGINT", "revenue DOUBLE", "first_ts BIGINT", "last_ts BIGINT",
    "views STRING", "personalization BOOLEAN",
)
KIND, USER_ID, TS, EVENTS, PRODUCT_VIEWS, CARTS, PURCHASES, REVENUE, FIRST_TS, LAST_TS, \
    VIEWS, PERSONALIZATION = positions(
        SIGNAL_COLUMNS, "kind", "user_id", "ts", "events", "product_views", "carts",
        "purchases", "revenue", "first_ts", "last_ts", "views", "personalization")


def profile_rules(settings: Settings) -> Any:
    from udfs.profile import ProfileRules, WindowSpec

    p = settings.profiles
    return ProfileRules(
        short=WindowSpec("10m", p.short_window_ms, p.short_slide_ms),
        long=WindowSpec("1h", p.long_window_ms, p.long_slide_ms),
        new_visitor_ms=p.new_visitor_ms, high_value_revenue=p.high_value_revenue,
        cart_abandoner_ms=p.cart_abandoner_ms, engaged_views_1h=p.engaged_views_1h)


def slices(t_env: Any, settings: Settings) -> Any:
    """One row per user and slice (1 min) with events: the counts every window sums; and
    one 'late' row (a slice of one event) per event that comes after its slice was cut.

    The TUMBLE window drops an event whose window has fired (the watermark reached its
    end − 1 ms). Each event is routed by the same test against the watermark here, where
    it is never behind the window's own (the window sees watermarks after this filter
    has), so every event is counted exactly once: by the window or as a late row."""
    slice_ms = profile_rules(settings).slice_ms
    viewed = "event_type = 'product_view' AND category IS NOT NULL AND category <> ''"
    cut = ("CURRENT_WATERMARK(rowtime) IS NOT NULL AND TO_TIMESTAMP_LTZ("
           f"ts - MOD(ts, {slice_ms}) + {slice_ms - 1}, 3) <= CURRENT_WATERMARK(rowtime)")
    t_env.create_temporary_view("on_time_events", t_env.sql_query(
        f"SELECT * FROM events WHERE NOT ({cut})"))

    def per_type(event_type: str) -> str:
        return f"CAST(CASE WHEN event_type = '{event_type}' THEN 1 ELSE 0 END AS BIGINT)"

    late = t_env.sql_query(f"""
        SELECT {select_as(
            SIGNAL_COLUMNS, kind="'late'", user_id='user_id', ts='ts',
            events='CAST(1 AS BIGINT)', product_views=per_type('product_view'),
            carts=per_type('add_to_cart'), purchases=per_type('purchase'),
            revenue="CAST(CASE WHEN event_type = 'purchase' THEN COALESCE(order_total, 0) "
                    "ELSE 0 END AS DOUBLE)",
            first_ts='ts', last_ts='ts',
            views=f"CASE WHEN {viewed} THEN CONCAT('[', JSON_ARRAY(ts, category), ']') END")}
        FROM events WHERE {cut}""")
    return t_env.sql_query(f"""
        SELECT {select_as(
            SIGNAL_COLUMNS, kind="'slice'", user_id='user_id', ts='first_ts', events='n',
            product_views='pv', carts='carts', purchases='purchases',
            revenue='revenue', first_ts='first_ts', last_ts='last_ts',
            views="CONCAT('[', `views`, ']')")}
        FROM (
          SELECT user_id, COUNT(*) AS n,
                 COUNT(*) FILTER (WHERE event_type = 'product_view') AS pv,
                 COUNT(*) FILTER (WHERE event_type = 'add_to_cart') AS carts,
                 COUNT(*) FILTER (WHERE event_type = 'purchase') AS purchases,
                 COALESCE(SUM(order_total) FILTER (WHERE event_type = 'purchase'), 0)
                   AS revenue,
                 MIN(ts) AS first_ts, MAX(ts) AS last_ts,
                 LISTAGG(JSON_ARRAY(ts, category)) FILTER (WHERE {viewed}) AS `views`
          FROM TABLE(TUMBLE(TABLE on_time_events, DESCRIPTOR(rowtime),
                            {sql_interval(slice_ms)}))
          GROUP BY user_id, window_start, window_end)""").union_all(late)


def consent_changes(t_env: Any) -> Any:
    """Personalization consent stated with events (the privacy topic's: privacy_requests)."""
    return t_env.sql_query(f"""
        SELECT {select_as(
            SIGNAL_COLUMNS, kind="'consent'", user_id='user_id', ts='ts',
            personalization='consent_personalization')}
        FROM events WHERE consent_personalization IS NOT NULL""")


def privacy_requests(t_env: Any) -> Any:
    """The privacy topic: personalization consent changes and erasure requests."""
    return t_env.sql_query(f"""
        SELECT {select_as(
            SIGNAL_COLUMNS, kind='`type`', user_id='user_id', ts='ts',
            personalization='personalization')}
        FROM privacy WHERE `type` = 'erasure' OR personalization IS NOT NULL""")


def cart_abandonments(t_env: Any, settings: Settings, bounded: bool = False) -> Any:
    """cart_abandoned notifications, for the cart_abandoner segment (read_committed).

    A notification reaches this job a checkpoint or more after its `fired_at` passed the
    triggers job's watermark (70 s behind the newest event), far behind this job's own
    (10 s). It needs no event-time order — the segment is written when it arrives and at
    every later write, from `fired_at` — so this input must not hold the job's event time
    back: it goes idle after a second without records, and when it wakes up its
    watermark is behind the job's, so Flink ignores it until it catches up (which it
    does not). Its watermark is still `fired_at`-based, never ahead of the events: were
    it ahead, it would run the job's event time forward whenever the events idle."""
    delay = settings.events.watermark_delay_ms
    bounded_option = "\n          'scan.bounded.mode' = 'latest-offset'," if bounded else ""
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE notifications_in (
          `v` STRING,
          `trigger` AS JSON_VALUE(`v`, '$.trigger'),
          `user_id` AS JSON_VALUE(`v`, '$.user_id'),
          `fired_at` AS TRY_CAST(JSON_VALUE(`v`, '$.fired_at') AS BIGINT),
          `fired_time` AS TO_TIMESTAMP_LTZ(
             COALESCE(TRY_CAST(JSON_VALUE(`v`, '$.fired_at') AS BIGINT), 0), 3),
          WATERMARK FOR `fired_time` AS `fired_time` - {sql_interval(delay)}
        ) WITH (
          {kafka_options(settings, settings.topics.notifications)},
          'properties.group.id' = '{settings.kafka.group_id}-profiles-notifications',
          'properties.auto.offset.reset' = '{settings.kafka.starting_offsets}',
          'properties.isolation.level' = 'read_committed',
          'scan.startup.mode' = 'group-offsets',{bounded_option}
          'scan.watermark.idle-timeout' = '{NOTIFICATIONS_IDLE_MS} ms',
          'format' = 'raw'
        )""")
    return t_env.sql_query(f"""
        SELECT {select_as(
            SIGNAL_COLUMNS, kind="'cart_abandoned'", user_id='user_id', ts='fired_at')}
        FROM notifications_in
        WHERE `trigger` = 'cart_abandoned' AND user_id IS NOT NULL AND fired_at IS NOT NULL""")


def build_profiles(t_env: Any, settings: Settings, bounded: bool = False) -> Any:
    """slices + consent + cart abandonments → the keyed profile function → Redis ops."""
    from pyflink.common import Types

    signals = (slices(t_env, settings)
               .union_all(consent_changes(t_env))
               .union_all(privacy_requests(t_env))
               .union_all(cart_abandonments(t_env, settings, bounded)))
    return (t_env.to_data_stream(signals)
            .key_by(lambda row: row[USER_ID], key_type=Types.STRING())
            .process(ProfileFunction(settings),
                     output_type=Types.ROW_NAMED(list(OP_FIELDS), [Types.STRING()] * 3))
            .name("profiles: windows, lifetime, segments → Redis ops")
            .uid("profile-function"))


def create_audit_sink(t_env: Any, settings: Settings, name: str = JOB_NAME) -> None:
    """The audit topic, written with Kafka transactions (exactly once); `name` makes the
    transactional ids, which no two running jobs may share."""
    topic = settings.topics.audit
    create_transactional_sink(t_env, settings, "audit_sink", topic, "record",
                              f"{name}-{topic}")


def write_to_redis(t_env: Any, settings: Settings, statements: Any, ops: Any,
                   name: str = JOB_NAME) -> None:
    """The profile function's Redis operations, applied in pipelined batches by a
    vectorized (pandas) UDF: each call gets up to an Arrow batch of rows — all the writes
    of a bundle, e.g. every user whose window ended at one watermark — and sends them in
    one round trip. The call returns only when Redis has acknowledged them, and a bundle
    ends before a checkpoint barrier passes: at-least-once, and idempotent.

    The UDF answers each erasure with its audit record (NULL for every other operation),
    so an audit record exists only once Redis has deleted the keys; those records go to
    the audit topic. The UDF is declared non-deterministic, which keeps the planner from
    evaluating it twice (once for the filter, once for the value)."""
    from pyflink.table import DataTypes
    from pyflink.table.udf import udf

    t_env.create_temporary_view("profile_ops", t_env.from_data_stream(ops))
    t_env.create_temporary_function(
        "redis_apply", udf(RedisBatchWriter(settings), result_type=DataTypes.STRING(),
                           func_type="pandas"))
    create_audit_sink(t_env, settings, name)
    statements.add_insert_sql("""
        INSERT INTO audit_sink
        SELECT JSON_VALUE(audit, '$.user_id'), CAST(audit AS BYTES) FROM (
          SELECT redis_apply(op, `key`, args) AS audit FROM profile_ops)
        WHERE audit IS NOT NULL""")


def build(env: Any, t_env: Any, settings: Settings, topic: str | None = None,
          bounded: bool = False, privacy_topic: str | None = None,
          name: str = JOB_NAME) -> None:
    """The job's pipeline; `topic`, `privacy_topic` and `bounded` (stop at the offsets
    current at start-up) are for tests, benchmarks and backfills (scripts/backfill.py),
    `name` (of the audit sink's transactions) for a run beside the live job."""
    statements = t_env.create_statement_set()
    # The triggers job dead-letters what the source stage rejects; this one only counts.
    # The contract's watermark, not held back by the allowed lateness (module docstring).
    read_events(t_env, settings, statements, group_id=f"{settings.kafka.group_id}-profiles",
                topic=topic, bounded=bounded, dead_letters=False, hold_lateness=False)
    read_privacy(t_env, settings, statements, group_id=f"{settings.kafka.group_id}-profiles",
                 topic=privacy_topic, bounded=bounded, dead_letters=False,
                 hold_lateness=False)
    write_to_redis(t_env, settings, statements, build_profiles(t_env, settings, bounded),
                   name)
    statements.attach_as_datastream()


class RedisBatchWriter(ScalarFunction):  # type: ignore[misc]
    """pandas UDF: (op, key, args as JSON) batches → one Redis pipeline per batch; answers
    each erasure with its audit record (udfs/privacy.py), every other operation NULL."""

    def __init__(self, settings: Settings) -> None:
        self.redis_url = settings.redis.url
        self.ttl_ms = settings.redis.profile_ttl_ms
        self.max_wait_s = settings.profiles.redis_max_wait_ms / 1000

    def is_deterministic(self) -> bool:
        return False  # it writes to Redis: evaluate it exactly once per row

    def open(self, function_context: Any) -> None:
        import redis

        from udfs.profile_store import ProfileStore

        group = function_context.get_metric_group().add_group("nudge")
        self.writes = group.counter("profile_writes")
        self.deletes = group.counter("profile_deletes")
        self.batches = group.counter("redis_batches")
        self.retries = group.counter("redis_retries")
        self.failures = group.counter("redis_failures")
        self.erasures = group.counter("erasures_completed")
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5,
                                      socket_connect_timeout=5)
        self.store = ProfileStore(client, "", self.ttl_ms, max_wait_s=self.max_wait_s,
                                  on_retry=self.retries.inc)

    def eval(self, ops: Any, keys: Any, args: Any) -> Any:
        import pandas as pd

        from udfs.privacy import audit_record
        from udfs.profile_store import DELETE, ERASE

        batch = [(op, key, json.loads(a)) for op, key, a in zip(ops, keys, args, strict=True)]
        try:
            results = self.store.apply(batch)
        except Exception:
            self.failures.inc()
            raise
        completed_at = int(time.time() * 1000)
        answers: list[str | None] = []
        deletes = erasures = 0
        for (op, key, op_args), deleted in zip(batch, results, strict=True):
            answers.append(None)
            if op == DELETE:
                deletes += 1
            elif op == ERASE:
                erasures += 1
                user_id, requested_at, had_profile = op_args
                keys_deleted = [key] if deleted or had_profile == "1" else []
                answers[-1] = audit_record(user_id, int(requested_at), completed_at,
                                           keys_deleted).decode()
        self.deletes.inc(deletes + erasures)
        self.erasures.inc(erasures)
        self.writes.inc(len(batch) - deletes - erasures)
        self.batches.inc()
        return pd.Series(answers, dtype="object")


class ProfileFunction(KeyedProcessFunction):  # type: ignore[misc]
    """Thin adapter: keyed state ↔ udfs.profile, event-time timers at window ends; emits
    the Redis operations (op, key, args) that RedisBatchWriter applies.

    Privacy (udfs/privacy.py, docs/privacy.md): withdrawn personalization consent clears
    the state and deletes the key; an erasure request does the same at once and leaves a
    tombstone, so slices from before it that are still on their way are dropped. A quiet
    user's state goes when their Redis key would have expired (last activity + the long
    window + redis.profile_ttl_ms); stated consent after privacy.consent_retention_ms."""

    def __init__(self, settings: Settings) -> None:
        self.rules = profile_rules(settings)
        self.key_prefix = settings.redis.key_prefix
        self.ttl_ms = settings.redis.profile_ttl_ms
        self.default_consent = settings.triggers.default_personalization_consent
        self.privacy = settings.privacy
        self.idle_ms = settings.redis.profile_ttl_ms + settings.profiles.long_window_ms
        self.pipelined_commit = settings.flink.python_pipelined_state_commit

    def open(self, runtime_context: Any) -> None:
        from jobs import state_commit
        from udfs.profile_store import ProfileStore

        # All of a user's state in one ValueState: one cold read per slice, not three.
        self.record = KeyedRecord(runtime_context, "user", ("profile", "consent", "erased"))
        self.state, self.consent, erased = self.record.fields()
        self.tombstone = Tombstone(erased, self.privacy.erasure_tombstone_ms)
        group = runtime_context.get_metrics_group().add_group("nudge")
        self.slices_in = group.counter("slices_in")
        self.late_in = group.counter("late_events_in")
        self.zeroed = group.counter("windows_zeroed")
        self.erasures = group.counter("erasures")
        self.dropped_erased = group.counter("dropped_erased")
        self.cleared_idle = group.counter("cleared_idle")
        state_commit.use(self.pipelined_commit, group)
        self.ops = ProfileStore(None, self.key_prefix, self.ttl_ms)  # builds ops only

    def _profile(self) -> Any:
        from udfs.profile import ProfileState

        raw = self.state.value()
        return ProfileState() if raw is None else ProfileState.from_state(raw)

    def _granted(self) -> bool:
        consent = self.consent.value()
        return self.default_consent if consent is None else consent[1]

    @staticmethod
    def _row(op: tuple[str, str, list[str]]) -> Any:
        from pyflink.common import Row

        return Row(op[0], op[1], json.dumps(op[2]))

    def process_element(self, row: Any, ctx: Any) -> Any:
        return self.record.around(self._on_row(row, ctx))

    def _on_row(self, row: Any, ctx: Any) -> Any:
        from udfs import profile
        from udfs.privacy import idle_timer

        kind = row[KIND]
        if kind == "erasure":
            yield from self._erase(row[TS], ctx)
            return
        begins = row[FIRST_TS] if kind in ("slice", "late") else row[TS]
        if self.tombstone.covers(begins):
            self.dropped_erased.inc()
            return
        timers = ctx.timer_service()
        if kind in ("slice", "late"):
            if not self._granted():
                return
            first_ts = row[FIRST_TS]
            start = first_ts - first_ts % self.rules.slice_ms
            # NULL when the slice has no categorised product view
            views = tuple((int(ts), str(cat)) for ts, cat in json.loads(row[VIEWS] or "[]"))
            piece = profile.Slice(start, row[EVENTS], row[PRODUCT_VIEWS], row[CARTS],
                                  row[PURCHASES], row[REVENUE], first_ts, row[LAST_TS], views)
            (self.slices_in if kind == "slice" else self.late_in).inc()
            # A slice can come after a window that holds it was written, as a late event
            # does: after an idle spell, the watermark can reach this function through
            # the short paths (late events, consent) before the TUMBLE window's slices.
            state, write = profile.add_late(self._profile(), piece, self.rules)
            if write is not None:
                yield self._row(self.ops.write_op(ctx.get_current_key(), write))
            self.state.update(state.to_state())
            timer = profile.next_timer(state, self.rules, after=start)
            if timer is not None:
                timers.register_event_time_timer(timer)
            timers.register_event_time_timer(idle_timer(row[LAST_TS], self.idle_ms))
        elif kind == "consent":
            yield from self._on_consent(row[TS], bool(row[PERSONALIZATION]),
                                        ctx.get_current_key(), timers)
        elif kind == "cart_abandoned":
            state = profile.on_cart_abandoned(self._profile(), row[TS])
            self.state.update(state.to_state())
            timers.register_event_time_timer(idle_timer(row[TS], self.idle_ms))
            # The segment now, not only at the user's next window end (there may be none)
            write = profile.segments_write(state, self.rules, row[TS])
            if write is not None and self._granted():
                yield self._row(self.ops.write_op(ctx.get_current_key(), write))

    def _on_consent(self, ts: int, granted: bool, user_id: str, timers: Any) -> Any:
        from udfs.privacy import idle_timer

        consent = self.consent.value()
        if consent is not None and consent[0] > ts:
            return  # an older statement than the one in force
        self.consent.update((ts, granted))
        timers.register_event_time_timer(idle_timer(ts, self.privacy.consent_retention_ms))
        if not granted:
            self.state.clear()
            yield self._row(self.ops.delete_op(user_id))

    def _erase(self, ts: int, ctx: Any) -> Any:
        """An erasure request made at `ts`: clear everything now, keep a tombstone, and
        have the writer delete the key and answer with the audit record."""
        self.erasures.inc()
        had_profile = self.state.value() is not None
        self.state.clear()
        self.consent.clear()
        self.tombstone.set(ts, ctx.timer_service())
        yield self._row(self.ops.erase_op(ctx.get_current_key(), ts, had_profile))

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        return self.record.around(self._on_time(timestamp, ctx))

    def _on_time(self, timestamp: int, ctx: Any) -> Any:
        from udfs import profile
        from udfs.privacy import IDLE_TIMER_GRANULARITY_MS

        if self._granted() and self.state.value() is not None:
            # Every window end the watermark has passed, in one write (udfs.profile.catch_up)
            timers = ctx.timer_service()
            watermark = max(timestamp, timers.current_watermark() or timestamp)
            state, write, following = profile.catch_up(self._profile(), self.rules,
                                                       timestamp, watermark)
            if write is not None:
                self.zeroed.inc(sum(1 for _, figures in write.windows if figures.empty))
                yield self._row(self.ops.write_op(ctx.get_current_key(), write))
            self.state.update(state.to_state())
            if following is not None:
                timers.register_event_time_timer(following)
        if timestamp % IDLE_TIMER_GRANULARITY_MS == 0:
            self._clean_up(timestamp)

    def _clean_up(self, now: int) -> None:
        """Drop what a quiet user no longer needs (idempotent; see the class docstring)."""
        from udfs import profile

        self.tombstone.expire(now)
        consent = self.consent.value()
        if consent is not None and consent[0] + self.privacy.consent_retention_ms <= now:
            self.consent.clear()
        if self.state.value() is None:
            return
        state = self._profile()
        last = max(state.lifetime.last_seen or 0, state.last_cart_abandoned or 0)
        if last + self.idle_ms <= now and profile.next_timer(state, self.rules, now) is None:
            self.state.clear()
            self.cleared_idle.inc()


def main(argv: Sequence[str] | None = None) -> None:
    run_job(JOB_NAME, build, argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main(sys.argv[1:])
