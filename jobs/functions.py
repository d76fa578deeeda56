"""The Flink functions of the triggers job: thin adapters around the rules in ``udfs/``.

``TriggerFunction`` is keyed by user and receives the "signals" of ``jobs.triggers``:

* ``cart`` rows — a finished session of the user's cart activity with its events; folded
  into the cart on arrival (``udfs.cart.fold_session``).
* ``deadline`` rows — a cart deadline with no cart activity before it
  (``udfs.cart.on_deadline``). Python registers no timer per cart event: SQL's session
  windows say when nothing happened (udfs/cart.py, "Cart activity in sessions").
* ``browse`` rows — finished sessions (``udfs.browse.evaluate_browse``).
* ``high_intent`` rows — matched search → view → add_to_cart with the start of their
  session (``udfs.high_intent.on_match``).
* ``consent`` rows — consent stated on an event or on the privacy topic (``udfs.gate``).
* ``erasure`` rows — requests from the privacy topic (``udfs.privacy``). An erasure is
  applied the moment it arrives: all of the user's state goes, a tombstone keeps its ts
  so that rows from before it that are still on their way are dropped, and the user
  starts afresh.

State is cleaned up by timers (``udfs.privacy.idle_timer``): a user's cart, caps and
session flags go ``privacy.state_idle_ms`` after their last activity; stated consent
after ``privacy.consent_retention_ms``; a tombstone after ``privacy.erasure_tombstone_ms``.

Firings, consent changes and high-intent matches are queued by their event time and
applied in ts order when the watermark passes it (at equal ts: consent, late deadline
checks, firings, high-intent matches). So the cap and consent decisions do not depend on
which upstream operator was faster, and a replay gives the same notifications with the
same ids. The cart itself is order-proof without waiting (udfs/cart.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

from pyflink.datastream import KeyedProcessFunction

from config.settings import Settings
from jobs.keyed_record import KeyedRecord
from jobs.source import positions
from jobs.tombstone import Tombstone
from jobs.triggers import SIGNAL_COLUMNS

USER_ID, KIND, TS, AUX, SESSION_START, PRODUCT_ID, QUERY, MARKETING, PERSONALIZATION, \
    ITEMS = positions(SIGNAL_COLUMNS, "user_id", "kind", "ts", "aux", "session_start",
                      "product_id", "query", "consent_marketing", "consent_personalization",
                      "items")

# Queued items, applied in this order at equal ts: (rank, ts, tiebreak, item)
CONSENT, CART_DEADLINE, FIRING, HIGH_INTENT_MATCH = 0, 1, 2, 3


class TriggerFunction(KeyedProcessFunction):  # type: ignore[misc]
    """Cart and checkout timers, browse and high-intent evaluation, cap and consent."""

    def __init__(self, settings: Settings) -> None:
        from udfs.rules import TriggerRules

        self.rules = TriggerRules.from_settings(settings.triggers,
                                                settings.events.default_currency)
        self.avro = settings.formats.notifications == "avro"
        self.privacy = settings.privacy
        self.pipelined_commit = settings.flink.python_pipelined_state_commit

    def open(self, runtime_context: Any) -> None:
        from jobs import state_commit
        from udfs.rules import TRIGGERS

        # All of a user's state in one ValueState: one cold read per signal, not four.
        # pending is {ts: [items]} (a dict in the record, not a MapState, whose misses
        # cost a round trip to the JVM per access).
        # "triggers" since the cart moved to sessions: the queued items of the builds
        # before have another shape (docs/operations.md, state layout changes).
        self.record = KeyedRecord(runtime_context, "triggers",
                                  ("cart", "gate", "pending", "erased"))
        self.cart_state, self.gate_state, self.pending, erased = self.record.fields()
        self.tombstone = Tombstone(erased, self.privacy.erasure_tombstone_ms)
        group = runtime_context.get_metrics_group().add_group("nudge")
        self.signals_in = group.counter("signals_in")
        self.candidates = {t: group.counter(f"candidates_{t}") for t in TRIGGERS}
        self.emitted = {t: group.counter(f"emitted_{t}") for t in TRIGGERS}
        self.suppressed_cap = group.counter("suppressed_cap")
        self.suppressed_consent = group.counter("suppressed_consent")
        self.erasures = group.counter("erasures")
        self.dropped_erased = group.counter("dropped_erased")
        self.cleared_idle = group.counter("cleared_idle")
        self.overdue = group.counter("overdue_items")
        self.latency = group.distribution("emit_latency_ms")
        self.last_latency = 0
        group.gauge("last_emit_latency_ms", lambda: self.last_latency)
        state_commit.use(self.pipelined_commit, group)
        self.resolver = None
        if self.avro:
            from schemas import SCHEMA_DIR
            from udfs.codecs import LocalSchemas

            self.resolver = LocalSchemas(SCHEMA_DIR)

    # --- input -------------------------------------------------------------------------

    def process_element(self, row: Any, ctx: Any) -> Any:
        self.signals_in.inc()
        return self.record.around(self._on_signal(row, ctx))

    def _on_signal(self, row: Any, ctx: Any) -> Any:
        from udfs.privacy import minimize_query

        kind, ts = row[KIND], row[TS]
        if kind == "erasure":
            self._erase(ts, ctx)
            return
        if kind == "cart":
            self._on_cart_session(row, ctx)
            return
        # where the row's data begins: a session's start, a match's search
        begins = row[AUX] if kind == "high_intent" else ts
        if self.tombstone.covers(begins):
            self.dropped_erased.inc()
            return
        if kind == "deadline":
            self._on_deadline(row[TS], row[AUX], ctx)
        elif kind == "browse":
            self._on_browse(row, ctx)
        elif kind == "high_intent":
            query = minimize_query(row[QUERY], self.privacy.max_query_chars)
            self._queue(ctx, ts, (HIGH_INTENT_MATCH, -row[AUX],
                                  (row[SESSION_START], row[AUX], query, row[PRODUCT_ID])))
        elif kind == "consent":
            self._queue(ctx, ts, (CONSENT, 0, (row[MARKETING], row[PERSONALIZATION])))
        yield from ()  # a generator, for KeyedRecord.around; signals emit nothing

    def _erase(self, ts: int, ctx: Any) -> None:
        """An erasure request made at `ts`: clear everything now, keep a tombstone."""
        self.erasures.inc()
        self.cart_state.clear()
        self.gate_state.clear()
        # Only what the new user (from ts on) said may stay: consent, and cart deadline
        # checks (they find the cart empty). Queued firings and matches were built from
        # earlier events.
        pending = {at: kept for at, items in (self.pending.value() or {}).items() if at >= ts
                   if (kept := [i for i in items if i[0] in (CONSENT, CART_DEADLINE)])}
        if pending:
            self.pending.update(pending)
        else:
            self.pending.clear()
        self.tombstone.set(ts, ctx.timer_service())

    def _on_cart_session(self, row: Any, ctx: Any) -> None:
        """Fold a finished session's cart events (those after any erasure) into the cart
        now, whatever deadline rows are still to come (udfs/cart.py, "Cart activity in
        sessions"); its firings wait for event time to reach them, like every firing."""
        from udfs.cart import CartEvent, fold_session
        from udfs.privacy import idle_timer

        events = [CartEvent(kind, int(at), product, None if qty is None else int(qty),
                            None if price is None else float(price), currency)
                  for at, kind, product, qty, price, currency in json.loads(row[ITEMS])]
        kept = [e for e in events if not self.tombstone.covers(e.ts)]
        if len(kept) < len(events):
            self.dropped_erased.inc(len(events) - len(kept))
        if not kept:
            return
        cart, fired = fold_session(self._cart(row[USER_ID]), kept, self.rules)
        self._store_cart(cart)
        for firing in fired:
            self._queue_firing(ctx, firing)
        if not cart.is_clearable:
            ctx.timer_service().register_event_time_timer(
                idle_timer(row[TS], self.privacy.state_idle_ms))

    def _on_deadline(self, last_ts: int, deadline: int, ctx: Any) -> None:
        """No cart activity from `last_ts` until `deadline` (udfs.cart.on_deadline)."""
        from udfs.cart import on_deadline

        cart, fired, check_later = on_deadline(self._cart(ctx.get_current_key()), last_ts,
                                               deadline, self.rules)
        self._store_cart(cart)
        for firing in fired:
            self._queue_firing(ctx, firing)
        if check_later:
            self._queue(ctx, deadline, (CART_DEADLINE, 0, None))

    def _cart(self, user_id: str) -> Any:
        from udfs.cart import CartState

        raw = self.cart_state.value()
        return CartState.from_state(raw) if raw is not None else CartState(user_id)

    def _store_cart(self, cart: Any) -> None:
        if cart.is_clearable:
            self.cart_state.clear()
        else:
            self.cart_state.update(cart.to_state())

    def _on_browse(self, row: Any, ctx: Any) -> None:
        from udfs.browse import SessionSummary, evaluate_browse

        views = [(int(v[0]), v[1], v[2]) for v in json.loads(row[ITEMS] or "[]")]
        summary = SessionSummary(row[USER_ID], row[TS], row[AUX], False, views)
        firing = evaluate_browse(summary, self.rules)
        if firing is not None:
            self._queue_firing(ctx, firing)

    def _queue_firing(self, ctx: Any, firing: Any) -> None:
        self._queue(ctx, firing.fired_at, (FIRING, 0, firing.to_state()))

    def _queue(self, ctx: Any, ts: int, item: tuple[int, int, Any]) -> None:
        pending = self.pending.value() or {}
        pending.setdefault(ts, []).append(item)
        self.pending.update(pending)
        ctx.timer_service().register_event_time_timer(ts)

    # --- event time passes -------------------------------------------------------------

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        return self.record.around(self._on_time(timestamp, ctx))

    def _on_time(self, timestamp: int, ctx: Any) -> Any:
        from udfs.privacy import IDLE_TIMER_GRANULARITY_MS

        if timestamp % IDLE_TIMER_GRANULARITY_MS == 0:
            self._clean_up(timestamp, ctx)
        pending = self.pending.value() or {}
        # Everything due, not only what is queued at this timer: a restore can lose the
        # timers of the last bundle before a checkpoint while their items survive in
        # state (docs/guarantees.md). Items that overstayed their timer are applied, in
        # order, before this one, so that a lost consent change cannot let a later
        # firing through. Without lost timers nothing is ever overdue here.
        due = sorted(at for at in pending if at <= timestamp)
        if not due:
            return
        batches = [(at, pending.pop(at)) for at in due]
        if pending:
            self.pending.update(pending)
        else:
            self.pending.clear()
        for at, items in batches:
            if at < timestamp:
                self.overdue.inc(len(items))
            yield from self._apply(ctx.get_current_key(), at,
                                   sorted(items, key=lambda i: i[:2]), ctx)

    def _clean_up(self, now: int, ctx: Any) -> None:
        """Drop what a quiet user no longer needs (the clean-up timers are hour-aligned;
        dropping is idempotent, so a deadline that happens to fall on one is harmless)."""
        from udfs import gate, high_intent
        from udfs.cart import CartState
        from udfs.privacy import idle_timer

        privacy = self.privacy
        self.tombstone.expire(now)
        raw = self.cart_state.value()
        if raw is not None:
            cart = CartState.from_state(raw)
            if cart.deadline is None and (cart.last_activity_ts is None or
                                          cart.last_activity_ts + privacy.state_idle_ms <= now):
                self.cart_state.clear()
                self.cleared_idle.inc()
        raw = self.gate_state.value()
        if raw is None:
            return
        gate_state = gate.prune(gate.GateState.from_state(raw[0]), now, self.rules)
        hi_state = high_intent.HighIntentState.from_state(raw[1])
        if hi_state.fired and (hi_state.session_start or 0) + privacy.state_idle_ms <= now:
            hi_state = high_intent.HighIntentState(hi_state.user_id)
        if gate_state.consent_ts is not None and \
                gate_state.consent_ts + privacy.consent_retention_ms <= now:
            gate_state = gate.GateState(last_emitted=gate_state.last_emitted)
        if gate_state.is_clearable and not hi_state.fired:
            self.gate_state.clear()
            self.cleared_idle.inc()
            return
        self.gate_state.update((gate_state.to_state(), hi_state.to_state()))
        if gate_state.consent_ts is not None:  # kept for its retention: come back then
            ctx.timer_service().register_event_time_timer(
                idle_timer(gate_state.consent_ts, privacy.consent_retention_ms))

    def _apply(self, user_id: str, ts: int, items: list[tuple[int, int, Any]],
               ctx: Any) -> Any:
        """Apply the items queued at event time `ts`, in order; yield notifications."""
        from udfs import gate, high_intent
        from udfs.notifications import Firing
        from udfs.privacy import idle_timer

        raw = self.gate_state.value()
        if raw is None:
            gate_state, hi_state = gate.GateState(), high_intent.HighIntentState(user_id)
        else:
            gate_state = gate.GateState.from_state(raw[0])
            hi_state = high_intent.HighIntentState.from_state(raw[1])
        touched = False  # the gate and the high-intent flags: written back only if used
        for rank, _, payload in items:
            firings: list[Any] = []
            touched = touched or rank != CART_DEADLINE
            if rank == CONSENT:
                marketing, personalization = payload
                gate_state = gate.on_consent(gate_state, ts, marketing, personalization)
            elif rank == CART_DEADLINE:
                firings = self._on_cart_deadline(user_id, ts)
            elif rank == HIGH_INTENT_MATCH:
                session_start, search_ts, query, product_id = payload
                hi_state, firing = high_intent.on_match(
                    hi_state, session_start, search_ts, ts, query, product_id, self.rules)
                firings = [firing] if firing is not None else []
            else:
                firings = [Firing.from_state(payload)]
            for firing in firings:
                touched = True
                gate_state = yield from self._gate(gate_state, firing)
        if not touched:
            return
        gate_state = gate.prune(gate_state, ts, self.rules)
        if gate_state.is_clearable and not hi_state.fired:
            self.gate_state.clear()
        else:
            self.gate_state.update((gate_state.to_state(), hi_state.to_state()))
            ctx.timer_service().register_event_time_timer(
                idle_timer(ts, self.privacy.state_idle_ms))

    def _on_cart_deadline(self, user_id: str, ts: int) -> list[Any]:
        """Event time reached a deadline whose session was folded late; its firings."""
        from udfs.cart import advance_to

        cart, fired = advance_to(self._cart(user_id), ts, self.rules)
        self._store_cart(cart)
        return fired

    def _gate(self, gate_state: Any, firing: Any) -> Any:
        """Count `firing`, pass it through the gate; yield its notification if emitted and
        return the gate's new state."""
        from udfs import gate

        self.candidates[firing.trigger].inc()
        gate_state, decision = gate.decide(gate_state, firing, self.rules)
        if decision == gate.Decision.EMIT:
            self.emitted[firing.trigger].inc()
            yield self._notification(firing)
        elif decision == gate.Decision.SUPPRESSED_CAP:
            self.suppressed_cap.inc()
        else:
            self.suppressed_consent.inc()
        return gate_state

    def _notification(self, firing: Any) -> Any:
        from pyflink.common import Row

        from udfs.notifications import build_notification, to_avro_bytes, to_json_bytes

        emitted_at = int(time.time() * 1000)
        self.last_latency = emitted_at - firing.fired_at
        self.latency.update(max(0, self.last_latency))
        record = build_notification(firing, emitted_at)
        if self.resolver is not None:
            value = to_avro_bytes(record, self.resolver)
        else:
            value = to_json_bytes(record)
        return Row(firing.user_id, value)

