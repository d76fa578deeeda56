"""Synthetic shop traffic for the `events` topic: realistic users, deterministic per seed.

What it produces. A pool of `users` shoppers, each with favourite categories, a device
and a country, visits a catalog of products in sessions. Within a session events are
seconds to minutes apart (always under 30 min); between two sessions of a user more
than 30 min pass, so sessions derived by the inactivity gap match `session_id`.
Session kinds: bounces, browse-only sessions (often 3+ product views in one category),
searches followed by views and sometimes a cart, carts left behind (some with removals),
checkouts left behind, and purchases whose `order_total` is the cart's value. Carts
persist across a user's sessions, and users return (gaps from half an hour to days).
Some users send `consent` objects, some with `marketing: false`. Events are merged
across users in time order; per user, `ts` strictly increases from `start_ms`.

Layers, all pure except the last:

* `generate(seed, users, start_ms)` yields event dicts (infinite; slice it);
* `generated_records(...)` encodes them as Kafka records (JSON, Avro in the Confluent
  wire format with local schema id 1, or a mix) and mixes in malformed records of the
  classes in MALFORMED_KINDS, each labelled; `records(...)` is its `(key, value)` view;
* `main()` paces the records and sends them with kafka-python, or prints them.

Each record's Kafka timestamp is its event's time (for a malformed record, the time of
the event it mangles), as a producer sending events as they happen would have it;
`future_ts` is checked against it (the jobs' event time comes from `ts` alone). Keep
event times within the broker's retention (7 days locally): the default `--start-ms` is
one day back and the default pool is count / 20 users, which spans about 8 hours of
event time.

    .venv/bin/python -m jobs.generate --count 20 --dry-run --format mixed --malformed 0.2
    .venv/bin/python -m jobs.generate --count 100000 --rate 0 --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import base64
import heapq
import itertools
import json
import os
import random
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

from schemas import SCHEMA_DIR as SCHEMAS_DIR
from udfs.codecs import LocalSchemas, SchemaResolver, encode_avro, encode_json

EVENT_SCHEMA_ID = 1  # event.v1.avsc in schemas/registry.json
UNKNOWN_SCHEMA_ID = 9_999  # never in schemas/registry.json

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
SESSION_GAP = 30 * MINUTE  # the contract's default session_gap

FORMATS = ("json", "avro", "mixed")
MALFORMED_KINDS = (
    "invalid_utf8",
    "not_an_object",
    "missing_user_id",
    "empty_user_id",
    "unknown_event_type",
    "negative_price",
    "bad_ts",
    "future_ts",
    "truncated_avro",
    "unknown_schema_id",
)

CATEGORIES: dict[str, tuple[str, ...]] = {
    "shoes": ("running shoes", "sneakers", "leather boots", "sandals"),
    "jackets": ("rain jacket", "down jacket", "denim jacket"),
    "bags": ("backpack", "tote bag", "travel bag"),
    "electronics": ("headphones", "usb-c charger", "smart watch", "e-reader"),
    "books": ("crime novel", "cookbook", "travel guide"),
    "home": ("desk lamp", "coffee grinder", "bed linen"),
    "beauty": ("sunscreen", "face cream", "shampoo"),
    "toys": ("building blocks", "puzzle", "board game"),
    "sports": ("yoga mat", "dumbbells", "tennis racket"),
    "garden": ("garden hose", "plant pots", "pruning shears"),
}
PRODUCTS_PER_CATEGORY = 40
DEVICES = (("mobile", 0.6), ("desktop", 0.3), ("tablet", 0.1))
COUNTRIES = (("DE", 0.3), ("FR", 0.2), ("NL", 0.15), ("ES", 0.15), ("IT", 0.1), ("AT", 0.1))
REFERRERS = ("https://www.google.com/", "https://www.instagram.com/", "newsletter",
             "https://www.bing.com/", "direct")
SESSION_KINDS = (
    ("bounce", 0.12),
    ("browse", 0.28),
    ("search", 0.15),
    ("cart", 0.20),
    ("checkout", 0.10),
    ("purchase", 0.15),
)


def _pick(rng: random.Random, weighted: Sequence[tuple[str, float]]) -> str:
    values = [v for v, _ in weighted]
    weights = [w for _, w in weighted]
    return rng.choices(values, weights)[0]


class _User:
    """One shopper's profile and the state that carries across sessions."""

    __slots__ = ("user_id", "device", "country", "favourites", "consent", "sessions", "cart")

    def __init__(self, user_id: str, rng: random.Random) -> None:
        self.user_id = user_id
        self.device = _pick(rng, DEVICES)
        self.country = _pick(rng, COUNTRIES)
        self.favourites = tuple(rng.sample(list(CATEGORIES), rng.randint(1, 3)))
        self.consent: dict[str, bool] | None = None
        if rng.random() < 0.25:  # a quarter of users state consent
            personalization = rng.random() >= 0.1
            marketing = personalization and rng.random() >= 0.35
            self.consent = {"personalization": personalization, "marketing": marketing}
        self.sessions = 0
        # product_id -> [quantity, unit price, category]
        self.cart: dict[str, list[Any]] = {}


class _Generator:
    """Keeps the catalog, the users and the clock-free scheduling of their sessions."""

    def __init__(self, seed: int, users: int, start_ms: int, ramp_ms: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.catalog: dict[str, list[tuple[str, float]]] = {
            category: [
                (f"sku-{category}-{n:03d}", self.price())
                for n in range(PRODUCTS_PER_CATEGORY)
            ]
            for category in CATEGORIES
        }
        self.users: dict[int, _User] = {}
        self.event_seq = itertools.count(1)
        self.session_seq = itertools.count(1)
        self.order_seq = itertools.count(1)
        # (next session start, user index): every user's first visit lies in the ramp
        self.starts = [(start_ms + self.rng.randrange(ramp_ms + 1), i) for i in range(users)]
        heapq.heapify(self.starts)

    def price(self) -> float:
        """A catalog price: whole euros minus a cent, mostly 10 to 100."""
        return round(round(self.rng.lognormvariate(3.4, 0.8)) + 0.99, 2)

    def events(self) -> Iterator[dict[str, Any]]:
        pending: list[tuple[int, int, dict[str, Any]]] = []  # (ts, tie-break, event)
        tie = itertools.count()
        while True:
            if self.starts and (not pending or self.starts[0][0] <= pending[0][0]):
                start, index = heapq.heappop(self.starts)
                session = self.session(index, start)
                for event in session:
                    heapq.heappush(pending, (event["ts"], next(tie), event))
                heapq.heappush(self.starts, (session[-1]["ts"] + self.return_gap(), index))
            else:
                yield heapq.heappop(pending)[2]

    # -- time ------------------------------------------------------------------

    def step(self) -> int:
        """Time to the next event of a session: seconds mostly, never 30 min."""
        r = self.rng.random()
        if r < 0.85:
            return self.rng.randint(3_000, 60_000)
        if r < 0.98:
            return self.rng.randint(60_000, 5 * MINUTE)
        return self.rng.randint(5 * MINUTE, 20 * MINUTE)

    def return_gap(self) -> int:
        """Time from a session's last event to the user's next session: over 30 min."""
        r = self.rng.random()
        if r < 0.5:
            return self.rng.randint(SESSION_GAP + MINUTE, 90 * MINUTE)
        if r < 0.9:
            return self.rng.randint(90 * MINUTE, 6 * HOUR)
        return self.rng.randint(12 * HOUR, 2 * DAY)

    # -- one session -------------------------------------------------------------

    def session(self, index: int, start: int) -> list[dict[str, Any]]:
        """All events of one session of user `index`, starting at `start`."""
        rng = self.rng
        user = self.users.get(index)
        if user is None:
            user = self.users[index] = _User(f"u{index}", rng)
        user.sessions += 1
        session_id = f"s-{self.seed}-{next(self.session_seq)}"
        events: list[dict[str, Any]] = []
        clock = [start]

        def emit(event_type: str, **fields: Any) -> dict[str, Any]:
            ts = clock[0] if not events else clock[0] + self.step()
            clock[0] = ts
            event: dict[str, Any] = {
                "event_id": f"ev-{self.seed}-{next(self.event_seq)}",
                "event_type": event_type,
                "user_id": user.user_id,
                "ts": ts,
                "session_id": session_id,
            }
            event.update(fields)
            event["device"] = user.device
            event["country"] = user.country
            events.append(event)
            return event

        category = rng.choice(user.favourites) if rng.random() < 0.8 else rng.choice(
            list(CATEGORIES))
        first = emit("page_view", page_url=rng.choice(("/", f"/c/{category}", "/deals")))
        if rng.random() < 0.4:
            first["referrer"] = rng.choice(REFERRERS)
        if user.consent is not None and (user.sessions == 1 or rng.random() < 0.15):
            if user.sessions > 1 and rng.random() < 0.1:  # changed their mind
                user.consent = {**user.consent, "marketing": not user.consent["marketing"]}
            first["consent"] = dict(user.consent)

        kind = _pick(rng, SESSION_KINDS)
        if kind == "bounce":
            if rng.random() < 0.5:
                emit("page_view", page_url=f"/c/{category}", category=category)
            return events
        if kind == "search":
            query = rng.choice(CATEGORIES[category])
            emit("search", query=query, page_url="/search")
            viewed = self.view(emit, category, rng.randint(1, 4))
            if rng.random() < 0.6:
                self.add(emit, user, rng.choice(viewed))
                if rng.random() < 0.4:
                    self.purchase(emit, user)
            return events
        if kind == "browse":
            self.view(emit, category, rng.randint(2, 8))
            if rng.random() < 0.3:
                other = rng.choice(list(CATEGORIES))
                self.view(emit, other, rng.randint(1, 3))
            return events

        # cart, checkout, purchase: views, then at least one add_to_cart
        viewed = self.view(emit, category, rng.randint(1, 5))
        for product in rng.sample(viewed, rng.randint(1, min(3, len(viewed)))):
            self.add(emit, user, product)
        if kind == "cart" and user.cart and rng.random() < 0.3:
            product_id = rng.choice(sorted(user.cart))
            self.remove(emit, user, product_id)
        if kind in ("checkout", "purchase") and user.cart:
            emit("checkout_started", page_url="/checkout")
            if kind == "purchase":
                self.purchase(emit, user)
        return events

    def view(self, emit: Callable[..., dict[str, Any]], category: str,
             count: int) -> list[tuple[str, str, float]]:
        """`count` product views in `category`; returns (product_id, category, price)s."""
        viewed = []
        for _ in range(count):
            product_id, price = self.rng.choice(self.catalog[category])
            emit("product_view", product_id=product_id, category=category, price=price,
                 page_url=f"/p/{product_id}")
            viewed.append((product_id, category, price))
        return viewed

    def add(self, emit: Callable[..., dict[str, Any]], user: _User,
            product: tuple[str, str, float]) -> None:
        product_id, category, price = product
        quantity = 1 if self.rng.random() < 0.8 else self.rng.randint(2, 3)
        fields: dict[str, Any] = {"product_id": product_id, "category": category,
                                  "price": price, "quantity": quantity}
        if self.rng.random() < 0.5:
            fields["currency"] = "EUR"
        emit("add_to_cart", **fields)
        line = user.cart.setdefault(product_id, [0, price, category])
        line[0] += quantity
        line[1] = price

    def remove(self, emit: Callable[..., dict[str, Any]], user: _User, product_id: str) -> None:
        line = user.cart[product_id]
        quantity = self.rng.randint(1, line[0])
        emit("remove_from_cart", product_id=product_id, category=line[2], quantity=quantity)
        line[0] -= quantity
        if line[0] == 0:
            del user.cart[product_id]

    def purchase(self, emit: Callable[..., dict[str, Any]], user: _User) -> None:
        total = round(sum(q * p for q, p, _ in user.cart.values()), 2)
        emit("purchase", order_id=f"o-{self.seed}-{next(self.order_seq)}", order_total=total,
             currency="EUR", page_url="/checkout/done")
        user.cart.clear()


def generate(
    seed: int, users: int, start_ms: int, *, ramp_ms: int = HOUR
) -> Iterator[dict[str, Any]]:
    """Yield synthetic events (contract schema v1, `ts` as integer ms) forever, in ts order.

    The same arguments give the same events. Each user's first session starts within
    `ramp_ms` after `start_ms`. Slice with `itertools.islice`.
    """
    if users < 1:
        raise ValueError("users must be at least 1")
    return _Generator(seed, users, start_ms, ramp_ms).events()


# -- Kafka records -----------------------------------------------------------------


class GeneratedRecord(NamedTuple):
    """One Kafka record to produce, with what the generator knows about it."""

    key: bytes | None
    value: bytes
    ts_ms: int  # the event's nominal time (for a malformed record: the event it mangles)
    malformed: str | None  # one of MALFORMED_KINDS, or None for a valid event


_ISO_OFFSETS = (0, 0, 60, 120, -300, 330)  # minutes east of UTC


def iso_ts(ts_ms: int, offset_minutes: int = 0) -> str:
    """`ts_ms` as an ISO-8601 string with millisecond precision and an explicit offset."""
    zone = timezone(timedelta(minutes=offset_minutes))
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts_ms)
    text = moment.astimezone(zone).isoformat(timespec="milliseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def malformed(
    kind: str, event: dict[str, Any], rng: random.Random, resolver: SchemaResolver
) -> tuple[bytes | None, bytes]:
    """A malformed `(key, value)` of class `kind` (see MALFORMED_KINDS), made from `event`.

    Apart from the defect the record is a valid event, with its own event_id.
    """
    bad = {**event, "event_id": event["event_id"] + "-bad"}
    key: bytes | None = event["user_id"].encode()
    if kind == "invalid_utf8":
        return key, encode_json(bad)[:-1] + b',"note":"caf\xe9 \xff"}'
    if kind == "not_an_object":
        return key, encode_json([bad])  # type: ignore[arg-type]
    if kind == "missing_user_id":
        del bad["user_id"]
        return None, encode_json(bad)
    if kind == "empty_user_id":
        bad["user_id"] = ""
        return b"", encode_json(bad)
    if kind == "unknown_event_type":
        bad["event_type"] = rng.choice(("wishlist_add", "page_vieww", "PURCHASE", ""))
    elif kind == "negative_price":
        bad["price"] = -round(rng.uniform(0.01, 200.0), 2)
    elif kind == "bad_ts":
        naive = iso_ts(event["ts"])[:-1]  # no offset: ambiguous
        bad["ts"] = rng.choice((naive, "yesterday", -1, 1.5e12 + 0.5, True))
    elif kind == "future_ts":
        bad["ts"] = event["ts"] + rng.randint(400, 800) * DAY
    elif kind == "truncated_avro":
        value = encode_avro(bad, EVENT_SCHEMA_ID, resolver)
        return key, value[: rng.randint(5, len(value) - 1)]
    elif kind == "unknown_schema_id":
        value = encode_avro(bad, EVENT_SCHEMA_ID, resolver)
        return key, value[:1] + struct.pack(">I", UNKNOWN_SCHEMA_ID) + value[5:]
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return key, encode_json(bad)


def generated_records(
    seed: int,
    users: int,
    start_ms: int,
    *,
    fmt: str = "json",
    malformed_ratio: float = 0.0,
    iso_ratio: float = 0.05,
    resolver: SchemaResolver | None = None,
    ramp_ms: int = HOUR,
) -> Iterator[GeneratedRecord]:
    """Yield Kafka records for `generate(seed, users, start_ms)`'s events, forever.

    `fmt` is json, avro (Confluent wire format, schema id 1) or mixed (each record
    either, at random). A JSON record states its ts as an ISO-8601 string with an
    offset with probability `iso_ratio`. Before an event, with probability
    `malformed_ratio`, a malformed record made from it is inserted (its class
    drawn uniformly from MALFORMED_KINDS). Key: the user_id in UTF-8.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}")
    if not 0.0 <= malformed_ratio <= 1.0:
        raise ValueError("malformed_ratio must be within [0, 1]")
    resolver = resolver if resolver is not None else LocalSchemas(SCHEMAS_DIR)
    rng = random.Random(f"records:{seed}")
    for event in generate(seed, users, start_ms, ramp_ms=ramp_ms):
        ts = event["ts"]
        if malformed_ratio and rng.random() < malformed_ratio:
            kind = rng.choice(MALFORMED_KINDS)
            key, value = malformed(kind, event, rng, resolver)
            yield GeneratedRecord(key, value, ts, kind)
        if fmt == "avro" or (fmt == "mixed" and rng.random() < 0.5):
            value = encode_avro(event, EVENT_SCHEMA_ID, resolver)
        else:
            if iso_ratio and rng.random() < iso_ratio:
                event = {**event, "ts": iso_ts(ts, rng.choice(_ISO_OFFSETS))}
            value = encode_json(event)
        yield GeneratedRecord(event["user_id"].encode(), value, ts, None)


def records(
    seed: int, users: int, start_ms: int, **options: Any
) -> Iterator[tuple[bytes | None, bytes]]:
    """`(key, value)` pairs of `generated_records(seed, users, start_ms, **options)`."""
    for record in generated_records(seed, users, start_ms, **options):
        yield record.key, record.value


# -- command line --------------------------------------------------------------------


def paced(items: Iterable[Any], rate: float, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[Any]:
    """Pass `items` through at no more than `rate` per second (0: as fast as possible)."""
    if rate <= 0:
        yield from items
        return
    began = clock()
    for n, item in enumerate(items):
        ahead = began + n / rate - clock()
        if ahead > 0.002:
            sleep(ahead)
        yield item


def _text_or_b64(data: bytes | None, name: str) -> dict[str, Any]:
    if data is None:
        return {name: None}
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_b64": base64.b64encode(data).decode("ascii")}


def dry_run_line(record: GeneratedRecord) -> str:
    """One JSON line describing `record` (key and value as text, or base64 when binary)."""
    line = _text_or_b64(record.key, "key")
    if record.value[:1] == b"\x00":  # Avro: binary even when it happens to be UTF-8
        line["value_b64"] = base64.b64encode(record.value).decode("ascii")
    else:
        line.update(_text_or_b64(record.value, "value"))
    line["ts"] = record.ts_ms
    if record.malformed:
        line["malformed"] = record.malformed
    return json.dumps(line, ensure_ascii=False)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.generate",
        description="Produce synthetic shop events to Kafka (or print them with --dry-run).")
    parser.add_argument("--count", type=int, default=10_000, help="records to produce")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="records per second; 0 for as fast as possible")
    parser.add_argument("--format", choices=FORMATS, default="json", dest="fmt")
    parser.add_argument("--malformed", type=float, default=0.0,
                        help="probability of a malformed record before each event")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--users", type=int, default=None,
                        help="size of the user pool (default: count / 20)")
    parser.add_argument("--start-ms", type=int, default=None,
                        help="time of the first session (default: one day ago)")
    parser.add_argument("--bootstrap", default=None,
                        help="Kafka bootstrap servers (default: setting kafka.bootstrap)")
    parser.add_argument("--topic", default=None,
                        help="topic to produce to (default: setting topics.events)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print records as JSON lines instead of producing")
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must not be negative")
    if not 0.0 <= args.malformed <= 1.0:
        parser.error("--malformed must be within [0, 1]")
    if args.users is not None and args.users < 1:
        parser.error("--users must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = parse_args(argv)
    if args.bootstrap is None or args.topic is None:
        from config.settings import SettingsError, load_settings

        try:
            settings = load_settings(environ=os.environ)
        except SettingsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        args.bootstrap = args.bootstrap or settings.kafka.bootstrap
        args.topic = args.topic or settings.topics.events
    now_ms = time.time_ns() // 1_000_000
    start_ms = args.start_ms if args.start_ms is not None else (now_ms - DAY) // MINUTE * MINUTE
    users = args.users if args.users is not None else max(1, args.count // 20)
    stream = itertools.islice(
        generated_records(args.seed, users, start_ms, fmt=args.fmt,
                          malformed_ratio=args.malformed),
        args.count)

    failures: list[BaseException] = []
    if args.dry_run:
        def send(record: GeneratedRecord) -> None:
            print(dry_run_line(record))

        def finish() -> None:
            sys.stdout.flush()
    else:
        from kafka import KafkaProducer  # only needed when producing

        producer = KafkaProducer(bootstrap_servers=args.bootstrap.split(","), acks="all",
                                 linger_ms=20, batch_size=256 * 1024)

        def send(record: GeneratedRecord) -> None:
            producer.send(args.topic, key=record.key, value=record.value,
                          timestamp_ms=record.ts_ms).add_errback(
                failures.append)

        def finish() -> None:
            producer.flush()
            producer.close()

    count = size = bad = 0
    last_ts = start_ms
    began = time.monotonic()
    for record in paced(stream, args.rate):
        send(record)
        count += 1
        size += len(record.value)
        bad += record.malformed is not None
        last_ts = max(last_ts, record.ts_ms)
    finish()
    seconds = time.monotonic() - began

    summary = (f"count={count} bytes={size} seconds={seconds:.2f} "
               f"events_per_s={count / seconds if seconds else 0:.0f} malformed={bad} "
               f"failed={len(failures)} first_ts={start_ms} last_ts={last_ts} "
               f"format={args.fmt} topic={'-' if args.dry_run else args.topic}")
    print(summary, file=sys.stderr if args.dry_run else sys.stdout)
    if last_ts > now_ms + HOUR:
        print("warning: some events are more than an hour ahead of the wall clock; a Kafka 4 "
              "broker refuses such record timestamps (log.message.timestamp.after.max.ms); "
              "use more --users or an earlier --start-ms", file=sys.stderr)
    if failures:
        print(f"error: {len(failures)} records failed, first: {failures[0]!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
