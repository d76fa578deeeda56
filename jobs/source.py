"""The source stage both jobs share: Kafka bytes in, valid, de-duplicated, event-time
events out; everything else to the dead-letter topic with a reason.

    events topic (raw bytes + topic/partition/offset/timestamp metadata)
      │ JSON decoded and validated in SQL (jobs/json_decode.py); Confluent Avro and the
      │   rare JSON SQL leaves alone by parse_event, a Python table function → one
      │   table of normalized columns (decode_events)
      │ event time: per partition, from the validated ts of accepted records only
      │   (dev.nudge.flink.PartitionWatermarks); watermark = lowest of the partitions'
      │   highest ts − (watermark delay + allowed lateness)
      ├─ error IS NOT NULL ─────────────────────────────► events.dlq  (original bytes,
      │                                                    headers error, source.*)
      │ de-duplicate (user_id, event_id), keep first, state TTL = events.dedup_horizon_ms
      │ rowtime = ts
      ├─ ts behind the watermark ───────────── late ────► events.dlq
      ▼
    view `events` (append-only, rowtime attribute)

`udfs.events` defines validity and every rejection's reason, for JSON and Avro alike;
jobs/json_decode.py is the same rules in SQL for JSON, so that the volume never crosses
into Python (tests/pipeline/test_json_decode.py holds the two to the same answers).

Event time is the normalized `ts` of each accepted record, whatever its format (JSON
integer ms, JSON ISO-8601 string, Avro): the watermarks are made right after the decode,
per Kafka partition, as the Kafka source would make them per split, so that a rejected
record (bad JSON, missing or out-of-range `ts`, unknown schema, ...) never moves event
time and never keeps a partition from going idle (docs/guarantees.md).

Lateness: the contract counts an event as late when it is more than the allowed
lateness (60 s) behind a watermark that trails the highest ts by 10 s. A job chooses how
its watermark treats the events in between (``hold_lateness``):

- held (the triggers job): we emit the combined watermark (highest ts − 70 s)
  downstream, so "late" is simply "behind the watermark" and every operator after this
  stage sees on-time events in event-time order. A firing cannot be taken back, so it
  waits until no event that could cancel it can still come; firings carry their
  event-time ``fired_at`` and do not depend on this choice (see docs/design.md).
- not held (the profiles job): the contract's watermark itself (highest ts − 10 s), and
  the view keeps events up to the allowed lateness behind it; the job must handle those
  itself. A Redis profile can be corrected, so it follows the contract's watermark.
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings

# The normalized event columns handed downstream, in order. Fields the triggers and
# profiles never read (device, country, referrer, page_url) are dropped here: data
# minimization starts at the source.
EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "STRING"),
    ("event_type", "STRING"),
    ("user_id", "STRING"),
    ("ts", "BIGINT"),
    ("session_id", "STRING"),
    ("product_id", "STRING"),
    ("category", "STRING"),
    ("price", "DOUBLE"),
    ("quantity", "INT"),
    ("order_id", "STRING"),
    ("order_total", "DOUBLE"),
    ("currency", "STRING"),
    ("query", "STRING"),
    ("consent_personalization", "BOOLEAN"),
    ("consent_marketing", "BOOLEAN"),
)
EVENT_FIELDS = tuple(name for name, _ in EVENT_COLUMNS)
# Source coordinates carried along so that late events reach the DLQ unchanged.
SOURCE_COLUMNS = ("k", "v", "src_topic", "src_partition", "src_offset")


def q(name: str) -> str:
    """Quote an identifier for Flink SQL."""
    return f"`{name}`"


def event_rules(settings: Settings) -> Any:
    """The validation settings of udfs.events (both decoders use the same)."""
    from udfs.events import EventRules

    return EventRules(max_future_ms=settings.events.max_future_ms,
                      default_currency=settings.events.default_currency)


def _parse_event_function(settings: Settings) -> Any:
    """The `parse_event(value, kafka_ts)` table function: one row per record, either the
    normalized event with `error` NULL, or all NULL but `error`."""
    from pyflink.table import DataTypes
    from pyflink.table.udf import TableFunction, udtf

    types = {"STRING": DataTypes.STRING(), "BIGINT": DataTypes.BIGINT(),
             "DOUBLE": DataTypes.DOUBLE(), "INT": DataTypes.INT(),
             "BOOLEAN": DataTypes.BOOLEAN()}
    result_types = [types[t] for _, t in EVENT_COLUMNS] + [DataTypes.STRING()]
    registry_url = settings.kafka.schema_registry_url
    rules = event_rules(settings)

    class ParseEvent(TableFunction):  # type: ignore[misc]
        def open(self, function_context: Any) -> None:
            from schemas import SCHEMA_DIR
            from udfs.codecs import LocalSchemas, RegistrySchemas

            self.resolver = (RegistrySchemas(registry_url) if registry_url
                             else LocalSchemas(SCHEMA_DIR))
            self.rules = rules
            group = function_context.get_metric_group().add_group("nudge")
            # what this Python stage decided (Avro, and the JSON SQL leaves to it); the
            # whole stage's counts are events_parsed / events_rejected (with_event_time)
            self.parsed = group.counter("python_parsed")
            self.rejected = group.counter("python_rejected")

        def eval(self, value: bytes | None, kafka_ts: int | None) -> Any:
            from udfs.events import Rejection, decode_and_validate

            result = decode_and_validate(value, kafka_ts, self.resolver, self.rules)
            if isinstance(result, Rejection):
                self.rejected.inc()
                yield (None,) * len(EVENT_COLUMNS) + (result.reason,)
                return
            self.parsed.inc()
            consent = result.consent
            yield (result.event_id, result.event_type, result.user_id, result.ts,
                   result.session_id, result.product_id, result.category, result.price,
                   result.quantity, result.order_id, result.order_total, result.currency,
                   result.query,
                   None if consent is None else consent.personalization,
                   None if consent is None else consent.marketing,
                   None)

    return udtf(ParseEvent(), result_types=result_types)


def kafka_options(settings: Settings, topic: str) -> str:
    return (f"'connector' = 'kafka', 'topic' = '{topic}', "
            f"'properties.bootstrap.servers' = '{settings.kafka.bootstrap}'")


KAFKA_MS = "(EXTRACT(EPOCH FROM kafka_ts) * 1000 + EXTRACT(MILLISECOND FROM kafka_ts))"
WATERMARKS = "dev.nudge.flink.PartitionWatermarks"  # jobs/java/, in nudge's operator jar
OFFSET_ORDER = "dev.nudge.flink.OffsetOrderMerge"


def watermark_lag_ms(settings: Settings, hold_lateness: bool = True) -> int:
    """How far the watermark trails the highest event time: the watermark delay, plus the
    allowed lateness when the job holds its watermark back for late events (see the
    module docstring)."""
    events = settings.events
    return events.watermark_delay_ms + (events.allowed_lateness_ms if hold_lateness else 0)


def create_raw_source(t_env: Any, settings: Settings, name: str, topic: str,
                      group_id: str, bounded: bool = False,
                      startup: str = "group-offsets") -> None:
    """A table of the topic's records as raw bytes with their Kafka coordinates and
    timestamp (`kafka_ms`). It has no event time: that comes from the decoded records
    (with_event_time).

    With `startup` group-offsets, a consumer group without committed offsets starts at
    `kafka.starting_offsets`; after a restart from a checkpoint the offsets come from
    the checkpoint — except for a partition that had no record yet when the checkpoint
    was taken: the connector then stores "the committed offset" itself, and a restore
    from an older checkpoint resumes at whatever was committed later. `earliest-offset`
    stores "the earliest" instead, so such a restore reads the partition from its start.
    """
    # Bounded: stop at the offsets that are the latest at start-up (tests, benchmarks).
    bounded_option = "\n          'scan.bounded.mode' = 'latest-offset'," if bounded else ""
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE {q(name)} (
          `k` BYTES,
          `v` BYTES,
          `src_topic` STRING METADATA FROM 'topic' VIRTUAL,
          `src_partition` INT METADATA FROM 'partition' VIRTUAL,
          `src_offset` BIGINT METADATA FROM 'offset' VIRTUAL,
          `kafka_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
          `kafka_ms` AS {KAFKA_MS}
        ) WITH (
          {kafka_options(settings, topic)},
          'properties.group.id' = '{group_id}',
          'properties.auto.offset.reset' = '{settings.kafka.starting_offsets}',
          'properties.partition.discovery.interval.ms' = '60000',
          'scan.startup.mode' = '{startup}',{bounded_option}
          'key.format' = 'raw', 'key.fields' = 'k',
          'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY'
        )""")


def est_time_sql(ts: str, error: str) -> str:
    """The decoded record's time for with_event_time: its validated `ts` when accepted,
    the epoch when rejected (a time attribute cannot be NULL; 0 never raises a maximum,
    and with_event_time ignores rejected records anyway)."""
    return f"TO_TIMESTAMP_LTZ(CASE WHEN {error} IS NULL THEN {ts} ELSE 0 END, 3)"


def _parsed_by_python(source_view: str, prefix: str, where: str = "",
                      laned: bool = False) -> str:
    """The query of `source_view`'s records decoded by `parse_event`: SOURCE_COLUMNS,
    EVENT_FIELDS, `error` and `est_time`; `laned`: with `kafka_ms` and `lane` too, the
    row type of decode_events."""
    source = (*SOURCE_COLUMNS, "kafka_ms") if laned else SOURCE_COLUMNS
    lane = " r.`lane`," if laned else ""
    return f"""
        SELECT {', '.join(f'r.{q(c)}' for c in source)},
               {', '.join(f'e.{q(f)}' for f in EVENT_FIELDS)}, e.`error`,{lane}
               {est_time_sql('e.`ts`', 'e.`error`')} AS est_time
        FROM {q(source_view)} AS r,
        LATERAL TABLE({prefix}parse_event(r.`v`, r.`kafka_ms`))
          AS e({', '.join(q(f) for f in (*EVENT_FIELDS, 'error'))})
        {where}"""


def decode_in_python(t_env: Any, settings: Settings, raw: str, prefix: str = "") -> Any:
    """`raw`'s records decoded and validated by the Python table function `parse_event`
    (udfs.events), all of them (`events.json_decode: python`), in topic order."""
    t_env.create_temporary_function(f"{prefix}parse_event", _parse_event_function(settings))
    return t_env.sql_query(_parsed_by_python(raw, prefix))


def decode_events(t_env: Any, settings: Settings, raw: str, prefix: str = "") -> Any:
    """`raw`'s records (SOURCE_COLUMNS and `kafka_ms`) decoded and validated, as a Java
    DataStream of rows in Kafka offset order per partition, and its column names:
    SOURCE_COLUMNS, `kafka_ms`, EVENT_FIELDS, `error`, `lane` and `est_time`.

    JSON is decoded in SQL (jobs/json_decode.py); Avro and the few JSON records SQL leaves
    alone (`lane` 'python') by the Python table function `parse_event` (udfs.events).
    dev.nudge.flink.OffsetOrderMerge puts Python's results back in their places, so that
    what follows sees the topic's order whatever decoded each record."""
    from pyflink.datastream import DataStream

    from jobs.json_decode import DEFER, decode_sql
    from jobs.runtime import nudge_java_class

    rules = event_rules(settings)
    t_env.create_temporary_function(f"{prefix}parse_event", _parse_event_function(settings))
    source = (*SOURCE_COLUMNS, "kafka_ms")
    columns = ", ".join(q(c) for c in (*source, *EVENT_FIELDS))
    # every record: decoded, or a placeholder for Python (`lane` not NULL)
    in_sql = t_env.sql_query(f"""
        SELECT {columns}, CAST(`error` AS STRING) AS `error`, CAST(`lane` AS STRING) AS `lane`,
               {est_time_sql('`ts`', '`error`')} AS est_time
        FROM ({decode_sql(raw, source, rules)})""")
    names = in_sql.get_schema().get_field_names()
    merge = nudge_java_class(OFFSET_ORDER)
    j_all = t_env.to_data_stream(in_sql)._j_data_stream
    j_placeholders = (j_all.filter(merge.placeholders(names.index("lane")))
                      .name(f"{prefix}events: to Python (Avro, rare JSON)"))
    to_python = f"{prefix}events_to_python"
    t_env.create_temporary_view(to_python, t_env.from_data_stream(DataStream(j_placeholders)))
    decided = t_env.sql_query(_parsed_by_python(to_python, prefix,
                                                 f"WHERE r.`lane` = '{DEFER}'", laned=True))
    j_decided = t_env.to_data_stream(decided)._j_data_stream
    if str(j_decided.getType()) != str(j_all.getType()):
        raise AssertionError(f"row types differ: {j_all.getType()} / {j_decided.getType()}")
    merged = (j_all.connect(j_decided)
              .transform(f"{prefix}events: in offset order", j_all.getType(),
                         merge(names.index("src_partition"), names.index("src_offset"),
                               names.index("lane")))
              .uid(f"{prefix}events-offset-order"))
    return merged, names


def with_event_time(t_env: Any, settings: Settings, decoded: Any, name: str,
                    hold_lateness: bool, schema: Any, counters: str | None = None,
                    names: list[str] | None = None) -> Any:
    """`decoded` (columns src_partition, error and est_time among others) as a new table
    with `schema`, its watermarks made per Kafka partition from est_time by
    dev.nudge.flink.PartitionWatermarks: the lowest, over the partitions not idle, of the
    highest est_time of an accepted record (`error` NULL), minus watermark_lag_ms. A
    partition with no accepted record for events.idle_timeout_ms (wall clock, paused while
    backpressured) stops holding it. `schema` declares the watermark on est_time as
    SOURCE_WATERMARK().

    The conversion to a DataStream and back is also a boundary: what is planned before it
    runs once however many queries read the result (the DLQ insert and the pipeline)."""
    from pyflink.datastream import DataStream

    from jobs.runtime import nudge_java_class

    if names is None:  # a Table; else a Java DataStream of rows with these columns
        names = decoded.get_schema().get_field_names()
        decoded = t_env.to_data_stream(decoded)._j_data_stream
    strategy = nudge_java_class(WATERMARKS)(
        names.index("est_time"), names.index("src_partition"), names.index("error"),
        watermark_lag_ms(settings, hold_lateness), settings.events.idle_timeout_ms, counters)
    j_stream = (decoded.assignTimestampsAndWatermarks(strategy)
                .name(f"{name}: event time per partition").uid(f"{name}-event-time"))
    return t_env.from_data_stream(DataStream(j_stream), schema)


def create_transactional_sink(t_env: Any, settings: Settings, name: str, topic: str,
                              value: str, transactional_id_prefix: str) -> None:
    """A sink of (user_id → key, `value` bytes) rows to `topic`, written with Kafka
    transactions (exactly once; visible to read_committed readers at checkpoints)."""
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE {q(name)} (
          `user_id` STRING,
          {q(value)} BYTES
        ) WITH (
          {kafka_options(settings, topic)},
          'key.format' = 'raw', 'key.fields' = 'user_id',
          'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY',
          'sink.delivery-guarantee' = 'exactly-once',
          'sink.transactional-id-prefix' = '{transactional_id_prefix}',
          'properties.transaction.timeout.ms' = '{settings.kafka.transaction_timeout_ms}'
        )""")


def create_dlq_sink(t_env: Any, settings: Settings, name: str = "dlq") -> None:
    """The dead-letter topic: original key and value, reason and source in headers."""
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE {q(name)} (
          `k` BYTES,
          `v` BYTES,
          `headers` MAP<STRING, BYTES> METADATA
        ) WITH (
          {kafka_options(settings, settings.topics.dlq)},
          'key.format' = 'raw', 'key.fields' = 'k',
          'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY',
          'sink.delivery-guarantee' = 'at-least-once'
        )""")


def _dlq_select(view: str, error_sql: str) -> str:
    def b(expr: str) -> str:
        return f"CAST({expr} AS BYTES)"

    return f"""
        SELECT `k`, `v`, MAP[
          'error', {b(error_sql)},
          'source.topic', {b('src_topic')},
          'source.partition', {b('CAST(src_partition AS STRING)')},
          'source.offset', {b('CAST(src_offset AS STRING)')}] AS `headers`
        FROM {q(view)}"""


def read_events(t_env: Any, settings: Settings, statements: Any, group_id: str,
                topic: str | None = None, prefix: str = "", bounded: bool = False,
                dead_letters: bool = True, hold_lateness: bool = True) -> Any:
    """Build the source stage; return the table of valid, on-time, unique events.

    `statements` is the job's StatementSet: the two DLQ inserts are added to it. Both
    jobs read the same topic; only one of them (the triggers job) should dead-letter
    what it rejects, or every bad record would land on the DLQ twice: the other passes
    `dead_letters=False` and only counts its rejections.
    `hold_lateness`: see the module docstring; either way, events more than the allowed
    lateness behind the contract's watermark are `late` and never reach the view.
    The result is also registered as the view `<prefix>events`.
    """
    from pyflink.table import Schema

    topic = topic or settings.topics.events
    raw, parsed, unique = f"{prefix}events_raw", f"{prefix}events_parsed", f"{prefix}unique"
    dlq = f"{prefix}dlq"
    create_raw_source(t_env, settings, raw, topic, group_id, bounded)
    if dead_letters:
        create_dlq_sink(t_env, settings, dlq)
        # Late events go to the same topic through a sink of their own, so that its
        # numRecordsOut on the dashboard is the count of late events.
        create_dlq_sink(t_env, settings, f"{dlq}_late")
    if settings.events.json_decode == "sql":
        decoded, names = decode_events(t_env, settings, raw, prefix)
    else:  # every record through Python, in topic order already
        decoded, names = decode_in_python(t_env, settings, raw, prefix), None
    # Event time, and a boundary: the DLQ insert and the main pipeline are planned
    # separately, and without it each would read the topic and run the Python parser again.
    t_env.create_temporary_view(parsed, with_event_time(
        t_env, settings, decoded, parsed, hold_lateness,
        Schema.new_builder()
        .watermark("est_time", "SOURCE_WATERMARK()")
        .column_by_expression("proc", "PROCTIME()").build(), counters="events", names=names))
    if dead_letters:
        statements.add_insert_sql(
            f"INSERT INTO {q(dlq)} {_dlq_select(parsed, 'error')} WHERE `error` IS NOT NULL")

    # Keep the first record of each (user_id, event_id); the state expires after the
    # de-duplication horizon (table.exec.state.ttl), which bounds it in time and memory.
    t_env.get_config().set("table.exec.state.ttl", f"{settings.events.dedup_horizon_ms} ms")
    keep = ", ".join(q(c) for c in (*SOURCE_COLUMNS, *EVENT_FIELDS))
    first = t_env.sql_query(f"""
        SELECT {keep} FROM (
          SELECT *, ROW_NUMBER() OVER (
            PARTITION BY user_id, event_id ORDER BY proc ASC) AS rn
          FROM {q(parsed)} WHERE `error` IS NULL)
        WHERE rn = 1""")

    # The event's own ts becomes its time attribute; the watermarks are the source's.
    timed = t_env.from_data_stream(
        t_env.to_data_stream(first),
        Schema.new_builder()
        .column_by_expression("rowtime", "TO_TIMESTAMP_LTZ(ts, 3)")
        .watermark("rowtime", "SOURCE_WATERMARK()")
        .build())
    t_env.create_temporary_view(unique, timed)
    late = "rowtime < CURRENT_WATERMARK(rowtime)"
    if not hold_lateness:
        late += f" - {sql_interval(settings.events.allowed_lateness_ms)}"
    if dead_letters:
        statements.add_insert_sql(
            f"INSERT INTO {q(dlq + '_late')} {_dlq_select(unique, quote_literal('late'))} "
            f"WHERE {late}")
    events = t_env.sql_query(f"""
        SELECT {', '.join(q(f) for f in EVENT_FIELDS)}, rowtime FROM {q(unique)}
        WHERE CURRENT_WATERMARK(rowtime) IS NULL OR NOT ({late})""")
    t_env.create_temporary_view(f"{prefix}events", events)
    return events


PRIVACY_COLUMNS = ("type STRING", "user_id STRING", "ts BIGINT", "personalization BOOLEAN",
                   "marketing BOOLEAN")


def _parse_privacy_function(settings: Settings) -> Any:
    """The `parse_privacy(value, kafka_ts)` table function (udfs/privacy.py): the request's
    columns with `error` NULL, or all NULL but `error`. Privacy requests are few; this
    Python stage costs nothing measurable next to the events'."""
    from pyflink.table import DataTypes
    from pyflink.table.udf import TableFunction, udtf

    max_future_ms = settings.events.max_future_ms

    class ParsePrivacy(TableFunction):  # type: ignore[misc]
        def open(self, function_context: Any) -> None:
            from udfs.events import EventRules

            self.rules = EventRules(max_future_ms=max_future_ms)
            group = function_context.get_metric_group().add_group("nudge")
            self.requests = group.counter("privacy_requests")
            self.rejected = group.counter("privacy_rejected")

        def eval(self, value: bytes | None, kafka_ts: int | None) -> Any:
            from udfs.events import Rejection
            from udfs.privacy import decode_request

            result = decode_request(value, kafka_ts, self.rules)
            if isinstance(result, Rejection):
                self.rejected.inc()
                yield (None,) * len(PRIVACY_COLUMNS) + (result.reason,)
                return
            self.requests.inc()
            yield (result.type, result.user_id, result.ts, result.personalization,
                   result.marketing, None)

    types = {"STRING": DataTypes.STRING(), "BIGINT": DataTypes.BIGINT(),
             "BOOLEAN": DataTypes.BOOLEAN()}
    return udtf(ParsePrivacy(), result_types=[types[c.split(" ")[1]] for c in PRIVACY_COLUMNS]
                + [DataTypes.STRING()])


def read_privacy(t_env: Any, settings: Settings, statements: Any, group_id: str,
                 topic: str | None = None, bounded: bool = False,
                 dead_letters: bool = True, hold_lateness: bool = True) -> Any:
    """The privacy topic's consent changes and erasure requests: valid requests as the
    view `privacy` (columns PRIVACY_COLUMNS), malformed ones to the DLQ (`dead_letters`,
    as for events). Watermarks come from the requests' ts like the events', so requests
    and events meet in event time; no request is ever dropped as late — an erasure or a
    withdrawal is applied however late it comes.

    The topic is read from its beginning whenever the job has no position of its own (a
    start without state, or a partition that was empty at the restored checkpoint): the
    privacy topic is the record of every user's consent and erasures, and a restore from
    a checkpoint older than an erasure must see that erasure again (docs/privacy.md)."""
    from pyflink.table import Schema

    topic = topic or settings.topics.privacy
    create_raw_source(t_env, settings, "privacy_raw", topic, group_id, bounded,
                      startup="earliest-offset")
    t_env.create_temporary_function("parse_privacy", _parse_privacy_function(settings))
    names = [c.split(" ")[0] for c in PRIVACY_COLUMNS]
    decoded = t_env.sql_query(f"""
        SELECT r.`k`, r.`v`, r.src_topic, r.src_partition, r.src_offset,
               {', '.join(f'p.{q(n)}' for n in names)}, p.`error`,
               {est_time_sql('p.`ts`', 'p.`error`')} AS est_time
        FROM privacy_raw AS r,
        LATERAL TABLE(parse_privacy(r.`v`, r.kafka_ms))
          AS p({', '.join(q(n) for n in (*names, 'error'))})""")
    # Event time as for events, and a boundary, so that the DLQ and the jobs share one
    # parse (see read_events).
    t_env.create_temporary_view("privacy_parsed", with_event_time(
        t_env, settings, decoded, "privacy_parsed", hold_lateness,
        Schema.new_builder().watermark("est_time", "SOURCE_WATERMARK()").build()))
    if dead_letters:
        create_dlq_sink(t_env, settings, "privacy_dlq")
        statements.add_insert_sql(f"INSERT INTO privacy_dlq "
                                  f"{_dlq_select('privacy_parsed', 'error')} "
                                  f"WHERE `error` IS NOT NULL")
    requests = t_env.sql_query(f"SELECT {', '.join(q(n) for n in names)} "
                               f"FROM privacy_parsed WHERE `error` IS NULL")
    t_env.create_temporary_view("privacy", requests)
    return requests


def select_as(columns: tuple[str, ...], **given: str) -> str:
    """A SELECT list producing `columns` ("name TYPE" each) in order: the expressions
    given by name, typed NULLs for the rest. Lets several queries share one row type,
    so that their results can be unioned into one stream for a keyed Python function."""
    parts = []
    for column in columns:
        name, sql_type = column.split(" ")
        parts.append(f"{given[name]} AS {q(name)}" if name in given
                     else f"CAST(NULL AS {sql_type}) AS {q(name)}")
    return ", ".join(parts)


def positions(columns: tuple[str, ...], *names: str) -> tuple[int, ...]:
    """Field positions of `names` in rows of `columns` ("name TYPE" each), for the Python
    functions that read those rows by index."""
    index = {column.split(" ")[0]: i for i, column in enumerate(columns)}
    return tuple(index[name] for name in names)


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def sql_interval(ms: int) -> str:
    """A Flink SQL interval literal of `ms` milliseconds (below 100 days)."""
    if not 0 <= ms < 100 * 86_400_000:
        raise ValueError(f"interval of {ms} ms is outside what Flink SQL literals take")
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    text = f"{days} {hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"
    return f"INTERVAL '{text}' DAY TO SECOND(3)"
