"""The profiles job: per-user sliding-window activity, lifetime figures and segments in
the Redis hash ``profile:<user_id>``.

    events ─► source stage (jobs/source.py) ─► TUMBLE 1 min per user (JVM) ─► slices ─┐
           └─ events stating consent ─────────────────────────────────────► consent ──┤
    notifications (read_committed) ─ cart_abandoned ──────────────────────────────────┤
                                                                                       ▼
           ProfileFunction (Python, keyed by user; rules in udfs/profile.py)
             windows 10m/1m and 1h/5m as sums of slices, 0s once a window is empty,
             lifetime figures, segments ─► Redis (guarded, idempotent, TTL refreshed)

Flink SQL reduces the events to one row per user and minute with activity; Python sees
those rows and writes each window as the watermark passes its end.

    python -m jobs.profiles              # local minicluster, until Ctrl-C
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `flink run -py jobs/profiles.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyflink.datastream import KeyedProcessFunction  # noqa: E402

from config.settings import Settings  # noqa: E402
from jobs.runtime import run_job  # noqa: E402
from jobs.source import (  # noqa: E402
    kafka_options,
    positions,
    read_events,
    select_as,
    sql_interval,
)

JOB_NAME = "nudge-profiles"

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
    """One row per user and slice (1 min) with events: the counts every window sums."""
    slice_ms = profile_rules(settings).slice_ms
    viewed = "event_type = 'product_view' AND category IS NOT NULL AND category <> ''"
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
          FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(rowtime), {sql_interval(slice_ms)}))
          GROUP BY user_id, window_start, window_end)""")


def consent_changes(t_env: Any) -> Any:
    return t_env.sql_query(f"""
        SELECT {select_as(
            SIGNAL_COLUMNS, kind="'consent'", user_id='user_id', ts='ts',
            personalization='consent_personalization')}
        FROM events WHERE consent_personalization IS NOT NULL""")


def cart_abandonments(t_env: Any, settings: Settings, bounded: bool = False) -> Any:
    """cart_abandoned notifications, for the cart_abandoner segment (read_committed)."""
    delay = settings.events.watermark_delay_ms + settings.events.allowed_lateness_ms
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
          'format' = 'raw'
        )""")
    return t_env.sql_query(f"""
        SELECT {select_as(
            SIGNAL_COLUMNS, kind="'cart_abandoned'", user_id='user_id', ts='fired_at')}
        FROM notifications_in
        WHERE `trigger` = 'cart_abandoned' AND user_id IS NOT NULL AND fired_at IS NOT NULL""")


def build_profiles(t_env: Any, settings: Settings, bounded: bool = False) -> Any:
    """slices + consent + cart abandonments → the keyed profile function (→ Redis)."""
    from pyflink.common import Types

    signals = (slices(t_env, settings)
               .union_all(consent_changes(t_env))
               .union_all(cart_abandonments(t_env, settings, bounded)))
    return (t_env.to_data_stream(signals)
            .key_by(lambda row: row[USER_ID], key_type=Types.STRING())
            .process(ProfileFunction(settings), output_type=Types.STRING())
            .name("profiles: windows, lifetime, segments → Redis")
            .uid("profile-function"))


def build(env: Any, t_env: Any, settings: Settings, topic: str | None = None,
          bounded: bool = False) -> None:
    """The job's pipeline; `topic` and `bounded` (stop at the offsets current at
    start-up) are for tests and benchmarks."""
    statements = t_env.create_statement_set()
    # The triggers job dead-letters what the source stage rejects; this one only counts.
    read_events(t_env, settings, statements, group_id=f"{settings.kafka.group_id}-profiles",
                topic=topic, bounded=bounded, dead_letters=False)
    written = build_profiles(t_env, settings, bounded)
    # The function writes to Redis itself; its output (one line per write) is discarded.
    written.sink_to(_discard()).name("discard").uid("profile-writes-discard")
    statements.attach_as_datastream()


def _discard() -> Any:
    """Flink's DiscardingSink (Sink V2): the profile writes happen inside the function."""
    from pyflink.datastream.connectors import Sink

    return Sink("org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink")


class ProfileFunction(KeyedProcessFunction):  # type: ignore[misc]
    """Thin adapter: keyed state ↔ udfs.profile, event-time timers at window ends,
    writes through udfs.profile_store."""

    def __init__(self, settings: Settings) -> None:
        self.rules = profile_rules(settings)
        self.redis_url = settings.redis.url
        self.key_prefix = settings.redis.key_prefix
        self.ttl_ms = settings.redis.profile_ttl_ms
        self.max_wait_s = settings.profiles.redis_max_wait_ms / 1000
        self.default_consent = settings.triggers.default_personalization_consent

    def open(self, runtime_context: Any) -> None:
        import redis
        from pyflink.common import Types
        from pyflink.datastream.state import ValueStateDescriptor

        from udfs.profile_store import ProfileStore

        self.state = runtime_context.get_state(
            ValueStateDescriptor("profile", Types.PICKLED_BYTE_ARRAY()))
        self.consent = runtime_context.get_state(
            ValueStateDescriptor("consent", Types.PICKLED_BYTE_ARRAY()))
        group = runtime_context.get_metrics_group().add_group("nudge")
        self.slices_in = group.counter("slices_in")
        self.writes = group.counter("profile_writes")
        self.zeroed = group.counter("windows_zeroed")
        self.deletes = group.counter("profile_deletes")
        self.retries = group.counter("redis_retries")
        self.failures = group.counter("redis_failures")
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5,
                                      socket_connect_timeout=5)
        self.store = ProfileStore(client, self.key_prefix, self.ttl_ms,
                                  max_wait_s=self.max_wait_s, on_retry=self.retries.inc)

    def _profile(self) -> Any:
        from udfs.profile import ProfileState

        raw = self.state.value()
        return ProfileState() if raw is None else ProfileState.from_state(raw)

    def _granted(self) -> bool:
        consent = self.consent.value()
        return self.default_consent if consent is None else consent[1]

    def process_element(self, row: Any, ctx: Any) -> Any:
        from udfs import profile

        kind = row[KIND]
        if kind == "slice":
            if not self._granted():
                return
            self.slices_in.inc()
            first_ts = row[FIRST_TS]
            start = first_ts - first_ts % self.rules.slice_ms
            # NULL when the slice has no categorised product view
            views = tuple((int(ts), str(cat)) for ts, cat in json.loads(row[VIEWS] or "[]"))
            piece = profile.Slice(start, row[EVENTS], row[PRODUCT_VIEWS], row[CARTS],
                                  row[PURCHASES], row[REVENUE], first_ts, row[LAST_TS], views)
            state = profile.add_slice(self._profile(), piece, self.rules)
            self.state.update(state.to_state())
            timer = profile.next_timer(state, self.rules, after=start)
            if timer is not None:
                ctx.timer_service().register_event_time_timer(timer)
        elif kind == "consent":
            self._on_consent(row[TS], bool(row[PERSONALIZATION]), ctx.get_current_key())
        elif kind == "cart_abandoned":
            state = profile.on_cart_abandoned(self._profile(), row[TS])
            self.state.update(state.to_state())

    def _on_consent(self, ts: int, granted: bool, user_id: str) -> None:
        consent = self.consent.value()
        if consent is not None and consent[0] > ts:
            return  # an older statement than the one in force
        self.consent.update((ts, granted))
        if not granted:
            self.state.clear()
            try:
                self.store.delete(user_id)
                self.deletes.inc()
            except Exception:
                self.failures.inc()
                raise

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        from udfs import profile

        if not self._granted():
            return
        state, write = profile.on_window_end(self._profile(), self.rules, timestamp)
        if write is not None:
            user_id = ctx.get_current_key()
            try:
                self.store.write(user_id, write)
            except Exception:
                self.failures.inc()
                raise
            self.writes.inc()
            self.zeroed.inc(sum(1 for _, figures in write.windows if figures.empty))
            yield f"{user_id}@{timestamp}"
        self.state.update(state.to_state())
        following = profile.next_timer(state, self.rules, after=timestamp)
        if following is not None:
            ctx.timer_service().register_event_time_timer(following)


def main(argv: Sequence[str] | None = None) -> None:
    run_job(JOB_NAME, build, argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main(sys.argv[1:])
