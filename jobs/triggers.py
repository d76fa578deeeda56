"""The triggers job: cart, checkout and browse abandonment and high intent, per user in
event time, each firing written exactly once to the notifications topic.

    events ─► source stage (jobs/source.py: decode, validate, DLQ, de-duplicate, event time)
       │
       ├─ SESSION windows over cart activity ──► cart sessions, cart deadlines ────┐
       ├─ filter ──────────────────────────────► consent stated on events ──────────┤
       ├─ SESSION window per user ─────────────► sessions with ≥ N views, no cart ──┤
       ├─ OVER (session starts) → MATCH_RECOGNIZE ► search → view → add_to_cart ────┤
       ▼                                                                     signals ▼
                        TriggerFunction (Python, keyed by user in the JVM: jobs/key_by.py):
                        the cart, its deadlines, browse evaluation, once-per-session,
                        frequency cap, consent
                                               │
                                               ▼
                        notifications (Kafka transactions, exactly once, key = user_id)

Flink SQL carries the volume — every event passes the JVM operators only — and hands
Python the few rows that need logic: sessions of cart activity, cart deadlines with
nothing before them, consent changes and candidate firings (see docs/design.md for the
measurements behind this split). The rules themselves live in ``udfs/`` (cart.py,
browse.py, high_intent.py, gate.py).

    python -m jobs.triggers              # local minicluster, until Ctrl-C
    make submit JOB=triggers             # a Flink cluster (scripts/ops.py, docs/operations.md)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `flink run -py jobs/triggers.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.settings import Settings  # noqa: E402
from jobs.runtime import run_job  # noqa: E402
from jobs.source import (  # noqa: E402
    create_transactional_sink,
    read_events,
    read_privacy,
    select_as,
    sql_interval,
)

JOB_NAME = "nudge-triggers"
CART_TYPES = ("add_to_cart", "remove_from_cart", "checkout_started", "purchase")

# One row type for everything the trigger function receives ("signals"):
#   kind      'cart'        a finished session of cart activity: its events in `items`
#                           (JSON arrays [ts, event_type, product_id, quantity, price,
#                           currency]); `ts` its last event
#             'deadline'    a cart deadline at `aux` with no cart activity before it
#                           since `ts` (the session's last cart event)
#             'browse'      a finished session that may fire browse_abandoned: `ts` its
#                           start, `aux` its last event, `items` the categorised views
#             'high_intent' a matched search → view → add_to_cart: `ts` the add, `aux`
#                           the search, `session_start` the session's first event
#             'consent'     stated consent (an event's or the privacy topic's)
#             'erasure'     an erasure request (privacy topic)
SIGNAL_COLUMNS = (
    "user_id STRING", "kind STRING", "ts BIGINT", "aux BIGINT", "session_start BIGINT",
    "product_id STRING", "query STRING", "consent_marketing BOOLEAN",
    "consent_personalization BOOLEAN", "items STRING",
)


def session_window(table: str, gap_ms: int) -> str:
    """SQL's SESSION window over `table`'s events per user, cut where the contract cuts:
    at a gap of *at least* `gap_ms`. Flink merges two events exactly the gap apart into
    one session (measured), so the window's own gap is one millisecond less."""
    return (f"TABLE(SESSION(TABLE {table} PARTITION BY user_id, DESCRIPTOR(rowtime), "
            f"{sql_interval(gap_ms - 1)}))")


def cart_signals(t_env: Any, settings: Settings) -> Any:
    """Each user's cart activity as sessions, not events (udfs/cart.py, "Cart activity in
    sessions"): one 'cart' row per session of the shorter timeout's gap, carrying its
    events, and, when the timeouts differ, one 'deadline' row per session of the longer
    one's gap that ends with that trigger's event."""
    from udfs.cart import deadline_window, fold_gap
    from udfs.rules import TriggerRules

    rules = TriggerRules.from_settings(settings.triggers)
    cart = ", ".join(f"'{t}'" for t in CART_TYPES)
    t_env.create_temporary_view("cart_activity", t_env.sql_query(
        f"SELECT user_id, ts, event_type, product_id, quantity, price, currency, rowtime "
        f"FROM events WHERE event_type IN ({cart})"))
    signals = t_env.sql_query(f"""
        SELECT {select_as(SIGNAL_COLUMNS, user_id='user_id', kind="'cart'", ts='last_ts',
                          items="CONCAT('[', `items`, ']')")}
        FROM (
          SELECT user_id, MAX(ts) AS last_ts,
                 LISTAGG(JSON_ARRAY(ts, event_type, product_id, quantity, price, currency
                                    NULL ON NULL)) AS `items`
          FROM {session_window('cart_activity', fold_gap(rules))}
          GROUP BY user_id, window_start, window_end)""")
    window = deadline_window(rules)
    if window is None:
        return signals
    timeout, types = window
    armed = ", ".join(f"'{t}'" for t in types)
    return signals.union_all(t_env.sql_query(f"""
        SELECT {select_as(SIGNAL_COLUMNS, user_id='user_id', kind="'deadline'", ts='last_ts',
                          aux=f'last_ts + {timeout}')}
        FROM (
          SELECT user_id, MAX(ts) AS last_ts
          FROM {session_window('cart_activity', timeout)}
          GROUP BY user_id, window_start, window_end
          HAVING MAX(CASE WHEN event_type IN ({armed}) THEN ts END) = MAX(ts))"""))


def consent_signals(t_env: Any) -> Any:
    """Consent stated on events (the contract's `consent` field)."""
    return t_env.sql_query(f"""
        SELECT {select_as(
            SIGNAL_COLUMNS, user_id='user_id', kind="'consent'", ts='ts',
            consent_marketing='consent_marketing',
            consent_personalization='consent_personalization')}
        FROM events
        WHERE consent_marketing IS NOT NULL OR consent_personalization IS NOT NULL""")


def browse_candidates(t_env: Any, settings: Settings) -> Any:
    """One row per finished session with enough categorised product views and no
    add_to_cart; Python picks the category and builds the payload (udfs/browse.py)."""
    tr = settings.triggers
    viewed = "event_type = 'product_view' AND category IS NOT NULL AND category <> ''"
    return t_env.sql_query(f"""
        SELECT {select_as(
            SIGNAL_COLUMNS, user_id='user_id', kind="'browse'", ts='session_start',
            aux='last_ts', items="CONCAT('[', `views`, ']')")}
        FROM (
          SELECT user_id, MIN(ts) AS session_start, MAX(ts) AS last_ts,
                 LISTAGG(CASE WHEN {viewed}
                              THEN JSON_ARRAY(ts, category, product_id NULL ON NULL) END)
                   FILTER (WHERE {viewed}) AS `views`
          FROM {session_window('events', tr.session_gap_ms)}
          GROUP BY user_id, window_start, window_end
          HAVING COUNT(*) FILTER (WHERE event_type = 'add_to_cart') = 0
             AND COUNT(*) FILTER (WHERE {viewed}) >= {tr.browse_min_views})""")


# The event types MATCH_RECOGNIZE's pattern names; every other event is always absorbed
# by its Z steps (Z1: neither search nor view, Z2: not an add), so leaving those out
# changes no match and spares the operator a quarter of the events.
SEQUENCE_TYPES = ("search", "product_view", "add_to_cart")


def sessioned_events(t_env: Any, settings: Settings) -> str:
    """The view `sessioned`: the events MATCH_RECOGNIZE needs (SEQUENCE_TYPES), each with
    the ts of its session's first event, in each user's ts order. Two OVER windows: the
    gap to the previous event (over every event), then the latest event that began a
    session (over the sequence's events and the events that begin a session, which are
    all it needs). Returns the view's name.

    Both windows keep the row types of the builds before the filters (2026-12-07), so
    that a savepoint of those builds restores: a narrower row in an OVER window's state
    fails the restore (docs/operations.md, "Upgrade without losing state")."""
    begins = f"n = 1 OR ts - prev_ts >= {settings.triggers.session_gap_ms}"
    types = ", ".join(f"'{t}'" for t in SEQUENCE_TYPES)
    t_env.create_temporary_view("sessioned", t_env.sql_query(f"""
        SELECT user_id, ts, event_type, product_id, query, rowtime, session_start
        FROM (
          SELECT user_id, ts, event_type, product_id, query, rowtime,
                 MAX(CASE WHEN {begins} THEN ts END) OVER (
                   PARTITION BY user_id ORDER BY rowtime
                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session_start
          FROM (
            SELECT *, MIN(ts) OVER w AS prev_ts, COUNT(*) OVER w AS n FROM events
            WINDOW w AS (PARTITION BY user_id ORDER BY rowtime
                         ROWS BETWEEN 1 PRECEDING AND CURRENT ROW))
          WHERE event_type IN ({types}) OR {begins})
        WHERE event_type IN ({types})"""))
    return "sessioned"


def high_intent_candidates(t_env: Any, settings: Settings) -> Any:
    """search → product_view → add_to_cart within the window, found by MATCH_RECOGNIZE.

    Greedy, mutually exclusive steps keep the pattern deterministic (no branching):
    S is a search with no later search before the first view P after it; A is the first
    add_to_cart after P. Each match carries the start of A's session, so that Python can
    keep it to once per session (udfs/high_intent.py) without seeing session starts.
    """
    within = settings.triggers.high_intent_within_ms
    return t_env.sql_query(f"""
        SELECT {select_as(
            SIGNAL_COLUMNS, user_id='user_id', kind="'high_intent'", ts='add_ts',
            aux='search_ts', session_start='session_start', query='search_query',
            product_id='add_product')}
        FROM {sessioned_events(t_env, settings)} MATCH_RECOGNIZE (
          PARTITION BY user_id ORDER BY rowtime
          MEASURES S.ts AS search_ts, S.query AS search_query,
                   A.ts AS add_ts, A.product_id AS add_product,
                   A.session_start AS session_start
          ONE ROW PER MATCH
          AFTER MATCH SKIP TO NEXT ROW
          PATTERN (S Z1* P Z2* A) WITHIN {sql_interval(within + 1)}
          DEFINE S AS S.event_type = 'search',
                 Z1 AS Z1.event_type NOT IN ('search', 'product_view'),
                 P AS P.event_type = 'product_view',
                 Z2 AS Z2.event_type <> 'add_to_cart',
                 A AS A.event_type = 'add_to_cart' AND A.ts - S.ts <= {within})""")


def privacy_signals(t_env: Any) -> Any:
    """Consent changes and erasure requests from the privacy topic (jobs/source.py)."""
    return t_env.sql_query(f"""
        SELECT {select_as(
            SIGNAL_COLUMNS, user_id='user_id', kind='`type`', ts='ts',
            consent_marketing='marketing', consent_personalization='personalization')}
        FROM privacy""")


def create_notifications_sink(t_env: Any, settings: Settings, name: str = JOB_NAME) -> None:
    """The notifications topic, written with Kafka transactions (exactly once); `name`
    makes the transactional ids, which no two running jobs may share."""
    topic = settings.topics.notifications
    create_transactional_sink(t_env, settings, "notifications_sink", topic, "notification",
                              f"{name}-{topic}")


def signals(t_env: Any, settings: Settings) -> Any:
    """Everything the trigger function receives, one table of SIGNAL_COLUMNS."""
    return (cart_signals(t_env, settings)
            .union_all(consent_signals(t_env))
            .union_all(browse_candidates(t_env, settings))
            .union_all(high_intent_candidates(t_env, settings))
            .union_all(privacy_signals(t_env)))


def detect_triggers(t_env: Any, settings: Settings) -> Any:
    """All signals → the keyed trigger function → (user_id, notification bytes)."""
    from pyflink.common import Types

    from jobs.functions import USER_ID, TriggerFunction
    from jobs.key_by import key_by_field

    stream = t_env.to_data_stream(signals(t_env, settings))
    return (key_by_field(stream, USER_ID, Types.STRING(), "signals: key by user_id",
                         "signals-key-by")
            .process(TriggerFunction(settings),
                     output_type=Types.ROW_NAMED(["user_id", "notification"],
                                                 [Types.STRING(),
                                                  Types.PRIMITIVE_ARRAY(Types.BYTE())]))
            .name("triggers: cart, checkout, browse, high intent → cap, consent, erasure")
            .uid("trigger-function"))


def write_notifications(t_env: Any, settings: Settings, statements: Any, stream: Any,
                        name: str = JOB_NAME) -> None:
    create_notifications_sink(t_env, settings, name)
    statements.add_insert("notifications_sink", t_env.from_data_stream(stream))


def build_sources(t_env: Any, settings: Settings, topic: str | None = None,
                  bounded: bool = False, privacy_topic: str | None = None) -> Any:
    """The `events` and `privacy` tables; returns the statement set with their
    dead-letter inserts."""
    statements = t_env.create_statement_set()
    read_events(t_env, settings, statements, group_id=f"{settings.kafka.group_id}-triggers",
                topic=topic, bounded=bounded)
    read_privacy(t_env, settings, statements, group_id=f"{settings.kafka.group_id}-triggers",
                 topic=privacy_topic, bounded=bounded)
    return statements


def build(env: Any, t_env: Any, settings: Settings, topic: str | None = None,
          bounded: bool = False, privacy_topic: str | None = None,
          name: str = JOB_NAME) -> None:
    """The job's pipeline; `topic`, `privacy_topic` and `bounded` (stop at the offsets
    current at start-up) are for tests, benchmarks and backfills (scripts/backfill.py),
    `name` (of the sink's transactions) for a run beside the live job."""
    statements = build_sources(t_env, settings, topic, bounded, privacy_topic)
    notifications = detect_triggers(t_env, settings)
    write_notifications(t_env, settings, statements, notifications, name)
    statements.attach_as_datastream()


def main(argv: Sequence[str] | None = None) -> None:
    run_job(JOB_NAME, build, argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main(sys.argv[1:])
