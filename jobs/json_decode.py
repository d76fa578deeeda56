"""JSON events decoded and validated in Flink SQL: the JVM does what `udfs.events` does
for the common case, and hands the rest to the Python decoder.

`udfs.events` stays the definition of a valid event and of every rejection's reason; this
module is the same rules written as SQL, for JSON records, so that they need not cross
into Python. `decode_sql` gives, per raw record, the event's columns (EVENT_COLUMNS), its
`error` and its `lane`:

    lane NULL       decided here: accepted (`error` NULL) or rejected with the reason
                    `udfs.events` gives it
    lane 'python'   not decided here; the Python decoder (jobs/source.py) decides:
                    - Avro records (first byte 0x00)
                    - values the JVM's JSON parser (Jackson) and the Python one (orjson)
                      may read differently, so that only Python can say which reason
                      applies: not valid UTF-8, not one JSON object (invalid_json,
                      invalid_utf8, not_an_object, and trailing content after the object,
                      which Jackson ignores), escapes of surrogates or of braces,
                      numbers with an exponent of three digits or more or 309 digits
                      (orjson refuses what overflows a double), duplicate keys
                    - a `ts` given as an ISO-8601 string or as a non-integral number
                    - a `quantity` given as a non-integral number
                    - an object among the fields other than `consent` with both flags
                      as booleans (and no other key), a `{` inside a string, a string
                      with an escaped quote (see "How fields are read")

A deferred record is decided by Python as a whole, with every rule, so the reason is
always the one `udfs.events` gives. tests/pipeline/test_json_decode.py holds both decoders
to the same answers, and each case to the lane this docstring gives it.

How fields are read: the document is parsed twice, by `JSON_QUERY(doc, '$')` (Jackson's
compact re-serialization, only to find trailing content: it has as many `}` as the text
unless something follows the object) and by `JSON_QUERY(doc, '$[''event_id'', ...]')`,
the document's own fields of _FIELDS as compact, key-sorted JSON (`projection`). In it
`"name":` can only be a key, so each field is cut out with string functions and written
as wrapped JSON text (`["u42"]`, `[5]`, `[true]`, `[{]` for an object): its first
character says string, number, boolean, object or array — `JSON_VALUE` alone cannot tell
"5" from 5. (One `JSON_QUERY` per field, wrapped, costs a parse each: ~2 µs per field.)

Status (2026-12-07): correct, but slower here than the Python decoder it would replace
(docs/performance.md, issue 31), so `events.json_decode` defaults to `python`.
"""

from __future__ import annotations

from collections.abc import Iterable

from udfs.events import EVENT_TYPES, MAX_QUANTITY, MAX_TS_MS, NEEDS_PRODUCT, EventRules

__all__ = ["DEFER", "decode_sql"]

# Flink expands every reference to a column of a merged projection into its expression
# (no common subexpressions in generated code): each of a field's dozen uses would parse
# the document again, and the generated class grows past what compiles in minutes. A
# non-deterministic term keeps each projection that depends on it from being merged into
# the one above, so each field is parsed once per record.
_ONCE = "RAND() < 2"
DEFER = "python"  # the lane of what only the Python decoder decides
_STRING_FIELDS = ("event_id", "event_type", "user_id", "product_id", "order_id", "currency",
                  "session_id", "category", "query")
_OPTIONAL_STRINGS = ("session_id", "category", "query", "device", "country", "referrer",
                     "page_url")
# Every field the rules read, in the document (consent's flags are read from consent).
_FIELDS = ("event_id", "event_type", "user_id", "ts", "product_id", "order_id",
           "order_total", *_OPTIONAL_STRINGS, "quantity", "currency", "price", "consent")
# Text the two JSON parsers may read differently (see the module docstring).
_UNSAFE = (r"\\u007[bBdD]|\\u[dD][89a-fA-F]|[0-9][eE][+-]?[0-9]{3}|[0-9]{309}")


def _lit(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))


def _w(name: str) -> str:
    return f"`w_{name.replace('.', '_')}`"


def _is_str(w: str) -> str:
    return f"{w} LIKE '[\"%'"


def _str(w: str) -> str:
    """A string field's value: the text between the quotes, or JSON_VALUE's unescaping
    when there is a backslash."""
    return (f"CASE WHEN {_is_str(w)} THEN CASE WHEN POSITION('\\' IN {w}) = 0 "
            f"THEN SUBSTRING({w}, 3, CHAR_LENGTH({w}) - 4) "
            f"ELSE JSON_VALUE({w}, '$[0]') END END")


def _is_num(w: str) -> str:
    return f"SUBSTRING({w}, 2, 1) IN ('-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9')"


def _num(w: str) -> str:
    return f"SUBSTRING({w}, 2, CHAR_LENGTH({w}) - 2)"


def _is_int(w: str) -> str:
    """Jackson writes integers as digits, every other number with '.' or 'E'."""
    return f"({_is_num(w)} AND POSITION('.' IN {w}) = 0 AND POSITION('E' IN {w}) = 0)"


def _count(text: str, char: str) -> str:
    return f"(CHAR_LENGTH({text}) - CHAR_LENGTH(REPLACE({text}, '{char}', '')))"


def _required_str(name: str) -> list[tuple[str, str]]:
    w = _w(name)
    return [(f"{w} IS NULL", f"missing:{name}"), (f"NOT ({_is_str(w)})", f"bad_type:{name}"),
            (f"{w} = '[\"\"]'", f"empty:{name}")]


def _optional_str(name: str) -> list[tuple[str, str]]:
    w = _w(name)
    return [(f"{w} IS NOT NULL AND NOT ({_is_str(w)})", f"bad_type:{name}")]


def _amount(name: str) -> list[tuple[str, str]]:
    """A finite number >= 0 (infinite ones were deferred by _UNSAFE)."""
    w = _w(name)
    return [(f"{w} IS NOT NULL AND NOT ({_is_num(w)})", f"bad_type:{name}"),
            (f"{w} IS NOT NULL AND TRY_CAST({_num(w)} AS DOUBLE) < 0", f"negative:{name}")]


def _flag(name: str) -> list[tuple[str, str]]:
    w = _w(f"consent.{name}")
    return [(f"{w} IS NULL", f"missing:consent.{name}"),
            (f"{w} NOT IN ('[true]', '[false]')", f"bad_type:consent.{name}")]


def _rules(rules: EventRules) -> list[tuple[str, str]]:
    """(condition, reason) in the order of udfs.events._validate: the first that holds is
    the record's reason; DEFER hands the record to Python. Each condition may assume that
    none before it held."""
    event_type, user_id, ts = _s("event_type"), _s("user_id"), _w("ts")
    product = _required_str("product_id")
    purchase = [*_required_str("order_id"),
                (f"{_w('order_total')} IS NULL", "missing:order_total")]
    quantity, consent = _w("quantity"), _w("consent")
    currency = _s("currency")
    return [
        *_required_str("event_id"),
        (f"{_w('event_type')} IS NULL", "missing:event_type"),
        (f"NOT ({_is_str(_w('event_type'))})", "bad_type:event_type"),
        *_required_str("user_id"),
        (f"{event_type} NOT IN ({_lit(EVENT_TYPES)})", "unknown_event_type"),
        # Flink's CHAR_LENGTH counts code points, as Python's len does
        (f"CHAR_LENGTH({user_id}) > {rules.max_user_id_len}", "too_long:user_id"),
        (f"{ts} IS NULL", "missing:ts"),
        (_is_str(ts), DEFER),
        (f"NOT ({_is_num(ts)})", "bad_ts"),
        (f"NOT {_is_int(ts)}", DEFER),
        (f"LEFT({_num(ts)}, 1) = '-' OR CHAR_LENGTH({_num(ts)}) > 15 "
         f"OR TRY_CAST({_num(ts)} AS BIGINT) > {MAX_TS_MS}", "bad_ts"),
        (f"kafka_ms IS NOT NULL AND kafka_ms >= 0 "
         f"AND TRY_CAST({_num(ts)} AS BIGINT) > kafka_ms + {rules.max_future_ms}", "future_ts"),
        *[(f"{event_type} IN ({_lit(NEEDS_PRODUCT)}) AND {c}", r) for c, r in product],
        *[(f"{event_type} NOT IN ({_lit(NEEDS_PRODUCT)}) AND {c}", r)
          for c, r in _optional_str("product_id")],
        *[(f"{event_type} = 'purchase' AND {c}", r) for c, r in purchase],
        *[(f"{event_type} <> 'purchase' AND {c}", r) for c, r in _optional_str("order_id")],
        *_amount("order_total"),
        *[rule for name in _OPTIONAL_STRINGS for rule in _optional_str(name)],
        (f"{quantity} IS NOT NULL AND NOT ({_is_num(quantity)})", "bad_type:quantity"),
        (f"{quantity} IS NOT NULL AND NOT {_is_int(quantity)}", DEFER),
        (f"{quantity} IS NOT NULL AND (CHAR_LENGTH({_num(quantity)}) > 11 "
         f"OR TRY_CAST({_num(quantity)} AS BIGINT) NOT BETWEEN 1 AND {MAX_QUANTITY})",
         "bad_value:quantity"),
        (f"{_w('currency')} IS NOT NULL AND NOT ({_is_str(_w('currency'))})",
         "bad_type:currency"),
        (f"{_w('currency')} IS NOT NULL AND NOT REGEXP({currency}, '^[A-Z]{{3}}$')",
         "bad_value:currency"),
        *_amount("price"),
        (f"{consent} IS NOT NULL AND {consent} NOT LIKE '[{{%'", "bad_type:consent"),
        *[(f"{consent} IS NOT NULL AND {c}", r)
          for c, r in (*_flag("personalization"), *_flag("marketing"))],
    ]


def _once(expr: str) -> str:
    return f"CASE WHEN {_ONCE} THEN {expr} END"


def _s(name: str) -> str:
    """The column of a string field's value (NULL unless a string)."""
    return f"`s_{name}`"


_P = "`projection`"
_CONSENT_FORMS = tuple(f'{{"marketing":{m},"personalization":{p}}}'
                       for m in ("true", "false") for p in ("true", "false"))


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _cut_out(step: str) -> str:
    """The steps that cut each field out of `projection` — Jackson's compact, key-sorted
    text of the document's own fields of _FIELDS, in which `"name":` can only be a key —
    as its wrapped JSON text (see the module docstring; only the type of an array or
    object is kept), after `step` (a query with `projection`). Every position is found
    once, in a step of its own: generated code evaluates a term again at each use, and
    LOCATE and SUBSTRING scan the text."""
    def start(f: str) -> str:
        return f"(`a_{f}` + {len(f) + 3})"  # after "f":

    keys = {f: f'"{f}":' for f in _FIELDS}
    at = [f"{_once(f'LOCATE({_q(keys[f])}, {_P})')} AS `a_{f}`" for f in _FIELDS]
    first = [f"{_once(f'CASE WHEN `a_{f}` > 0 THEN SUBSTRING({_P}, {start(f)}, 1) END')} "
             f"AS `c_{f}`" for f in _FIELDS]
    comma = "LOCATE(',', {p}, {s})"
    ends = []
    for f in _FIELDS:
        c = comma.format(p=_P, s=start(f))
        brace = f"LOCATE('}}', {_P}, {start(f)})"
        ends.append(_once(
            f"CASE WHEN `c_{f}` = '\"' THEN LOCATE('\"', {_P}, {start(f)} + 1) "
            f"WHEN `c_{f}` IN ('-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 't', "
            f"'f') THEN CASE WHEN {c} > 0 AND {c} < {brace} THEN {c} ELSE {brace} END "
            f"END") + f" AS `e_{f}`")
    wrapped = [_once(
        f"CASE WHEN `a_{f}` = 0 OR `c_{f}` = 'n' THEN NULL "
        f"WHEN `c_{f}` = '\"' THEN CONCAT('[', SUBSTRING({_P}, {start(f)}, "
        f"`e_{f}` - {start(f)} + 1), ']') "
        f"WHEN `c_{f}` IN ('[', '{{') THEN CONCAT('[', `c_{f}`, ']') "
        f"ELSE CONCAT('[', SUBSTRING({_P}, {start(f)}, `e_{f}` - {start(f)}), ']') END")
        + f" AS {_w(f)}" for f in _FIELDS]
    consent = (f"CASE WHEN `a_consent` > 0 AND `c_consent` = '{{' THEN SUBSTRING({_P}, "
               f"{start('consent')}, LOCATE('}}', {_P}, `a_consent`) - {start('consent')} + 1) "
               f"END")
    for columns in (at, first, ends, [*wrapped, f"{_once(consent)} AS `consent_text`"]):
        step = f"SELECT *, {', '.join(columns)} FROM ({step})"
    return step


def _read_fields() -> str:
    """consent's flags (from its text, in one of _CONSENT_FORMS), and the values of the
    string fields."""
    flags = [f"CASE WHEN `consent_text` IS NULL THEN NULL "
             f"WHEN `consent_text` LIKE '{pattern}' THEN '[true]' ELSE '[false]' END "
             f"AS {_w('consent.' + flag)}"
             for flag, pattern in (("marketing", '{"marketing":true,%'),
                                   ("personalization", '%"personalization":true}'))]
    strings = [f"{_once(_str(_w(name)))} AS {_s(name)}" for name in _STRING_FIELDS]
    return ",\n               ".join(flags + strings)


def decode_sql(source: str, columns: tuple[str, ...], rules: EventRules) -> str:
    """A query over `source` (columns `v` BYTES and `kafka_ms` BIGINT among `columns`,
    which it passes on) giving `columns`, the event's EVENT_COLUMNS, `error` and `lane`.

    The document is parsed only when it may be JSON that both parsers read alike: `doc`
    is NULL otherwise, so that no JSON function runs on Avro or on what Python decides.
    Each step is a projection of its own (see _ONCE): 1. the text, and which records may
    be parsed here at all; 2. the document parsed whole (canonical, to find trailing
    content) and each field; 3. the fields' values; 4. the reason; 5. the columns.
    """
    from jobs.source import EVENT_COLUMNS, q

    keep = ", ".join(q(c) for c in columns)
    checked = f"""
        SELECT {keep},
               {_once("CASE WHEN `pre` IS NULL THEN `s` END")} AS `doc`, `pre`
        FROM (
          SELECT *,
                 CASE WHEN `v` IS NULL OR CHAR_LENGTH(`s`) = 0 THEN 'empty_value'
                      WHEN LEFT(`s`, 1) = CHR(0) THEN '{DEFER}'
                      WHEN POSITION(U&'\\FFFD' IN `s`) > 0 THEN '{DEFER}'
                      WHEN REGEXP(`s`, '{_UNSAFE}') THEN '{DEFER}'
                 END AS `pre`
          FROM (SELECT *, {_once("CAST(`v` AS STRING)")} AS `s` FROM {q(source)}))"""
    fields = ", ".join(f"''{f}''" for f in _FIELDS)
    parsed = f"""
        SELECT *, {_once("JSON_QUERY(`doc`, '$')")} AS `canonical`,
               {_once(f"JSON_QUERY(`doc`, '$[{fields}]')")} AS {_P}
        FROM ({checked})"""
    parsed = _cut_out(parsed)
    parsed = f"SELECT *, {_read_fields()} FROM ({parsed})"
    doc_rules = [
        ("`pre` IS NOT NULL", "`pre`"),
        ("`canonical` IS NULL OR `canonical` NOT LIKE '{%'", f"'{DEFER}'"),
        ("RIGHT(`doc`, 1) <> '}' AND NOT REGEXP(`doc`, '\\}[ \\t\\r\\n]*$')",
         f"'{DEFER}'"),
        (f"{_count('`doc`', '}')} <> {_count('`canonical`', '}')}", f"'{DEFER}'"),
        # objects among the fields other than consent in one of its usual forms, and
        # strings whose closing quote follows a backslash: cut out of the text, they
        # could be misread
        (f"{_count(_P, '{')} <> CASE WHEN {_w('consent')} = '[{{]' THEN 2 ELSE 1 END",
         f"'{DEFER}'"),
        (f"{_w('consent')} = '[{{]' AND `consent_text` NOT IN ({_lit(_CONSENT_FORMS)})",
         f"'{DEFER}'"),
        *((f"RIGHT({_w(name)}, 3) = '\\\"]'", f"'{DEFER}'") for name in _STRING_FIELDS),
    ]
    cases = "\n                    ".join(
        [f"WHEN {c} THEN {r}" for c, r in doc_rules]
        + [f"WHEN {c} THEN '{r}'" for c, r in _rules(rules)])
    values = {
        "ts": f"TRY_CAST({_num(_w('ts'))} AS BIGINT)",
        "price": f"TRY_CAST({_num(_w('price'))} AS DOUBLE)",
        "quantity": f"COALESCE(TRY_CAST({_num(_w('quantity'))} AS INT), 1)",
        "order_total": f"TRY_CAST({_num(_w('order_total'))} AS DOUBLE)",
        "currency": f"COALESCE({_s('currency')}, '{rules.default_currency}')",
        "consent_personalization": f"{_w('consent.personalization')} = '[true]'",
        "consent_marketing": f"{_w('consent.marketing')} = '[true]'",
    }
    event = ",\n               ".join(
        f"CASE WHEN `reason` IS NULL THEN "
        f"CAST({values.get(name, _s(name))} AS {sql_type}) END AS {q(name)}"
        for name, sql_type in EVENT_COLUMNS)
    return f"""
        SELECT {keep},
               {event},
               CASE WHEN `reason` = '{DEFER}' THEN NULL ELSE `reason` END AS `error`,
               CASE WHEN `reason` = '{DEFER}' THEN '{DEFER}' END AS `lane`
        FROM (SELECT *, {_once(f"CASE {cases} END")} AS `reason` FROM ({parsed}))"""
