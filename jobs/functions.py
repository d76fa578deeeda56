"""The Flink functions of the triggers job: thin adapters around the rules in ``udfs/``.

``TriggerFunction`` is keyed by user and receives the "signals" of ``jobs.triggers``:

* ``event`` rows — the user's cart activity, stated consent and session starts, already
  in ts order (the SQL OVER window sorts them). Cart activity drives the cart state
  (``udfs.cart``) at once, with an event-time timer at its deadline.
* ``browse`` rows — finished sessions (``udfs.browse.evaluate_browse``).
* ``high_intent`` rows — matched search → view → add_to_cart (``udfs.high_intent``).

Everything that decides whether a notification goes out — consent changes, session
starts, candidate firings — is queued by its event time and applied in ts order when the
watermark passes it (consent first, then session starts, then firings at equal ts). So
the cap and consent decisions do not depend on which upstream operator was faster, and
a replay gives the same notifications with the same ids.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pyflink.datastream import KeyedProcessFunction

from config.settings import Settings
from jobs.source import positions
from jobs.triggers import SIGNAL_COLUMNS

USER_ID, KIND, TS, EVENT_TYPE, PRODUCT_ID, QUANTITY, PRICE, CURRENCY, NEW_SESSION, \
    MARKETING, PERSONALIZATION, AUX, QUERY, VIEWS = positions(
        SIGNAL_COLUMNS, "user_id", "kind", "ts", "event_type", "product_id", "quantity",
        "price", "currency", "new_session", "consent_marketing",
        "consent_personalization", "aux", "query", "views")

# Queued items, applied in this order at equal ts: (rank, ts, tiebreak, item)
CONSENT, SESSION_START, FIRING, HIGH_INTENT_MATCH = 0, 1, 2, 3


class TriggerFunction(KeyedProcessFunction):  # type: ignore[misc]
    """Cart and checkout timers, browse and high-intent evaluation, cap and consent."""

    def __init__(self, settings: Settings) -> None:
        from udfs.rules import TriggerRules

        self.rules = TriggerRules.from_settings(settings.triggers,
                                                settings.events.default_currency)
        self.avro = settings.formats.notifications == "avro"

    def open(self, runtime_context: Any) -> None:
        from pyflink.common import Types
        from pyflink.datastream.state import ValueStateDescriptor

        from udfs.rules import TRIGGERS

        self.cart_state = runtime_context.get_state(
            ValueStateDescriptor("cart", Types.PICKLED_BYTE_ARRAY()))
        self.gate_state = runtime_context.get_state(
            ValueStateDescriptor("gate", Types.PICKLED_BYTE_ARRAY()))
        # {ts: [items]}: one ValueState, so that it is served by the Python state cache
        # (a MapState miss costs a round trip to the JVM per access).
        self.pending = runtime_context.get_state(
            ValueStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY()))
        group = runtime_context.get_metrics_group().add_group("nudge")
        self.signals_in = group.counter("signals_in")
        self.candidates = {t: group.counter(f"candidates_{t}") for t in TRIGGERS}
        self.emitted = {t: group.counter(f"emitted_{t}") for t in TRIGGERS}
        self.suppressed_cap = group.counter("suppressed_cap")
        self.suppressed_consent = group.counter("suppressed_consent")
        self.latency = group.distribution("emit_latency_ms")
        self.last_latency = 0
        group.gauge("last_emit_latency_ms", lambda: self.last_latency)
        self.resolver = None
        if self.avro:
            from schemas import SCHEMA_DIR
            from udfs.codecs import LocalSchemas

            self.resolver = LocalSchemas(SCHEMA_DIR)

    # --- input -------------------------------------------------------------------------

    def process_element(self, row: Any, ctx: Any) -> Any:
        self.signals_in.inc()
        kind, ts = row[KIND], row[TS]
        if kind == "event":
            self._on_event(row, ctx)
        elif kind == "browse":
            self._on_browse(row, ctx)
        elif kind == "high_intent":
            self._queue(ctx, ts, (HIGH_INTENT_MATCH, -row[AUX],
                                  (row[AUX], row[QUERY], row[PRODUCT_ID])))
        return iter(())

    def _on_event(self, row: Any, ctx: Any) -> None:
        from udfs.cart import CartState, on_cart_event

        ts = row[TS]
        raw = self.cart_state.value()
        cart = CartState.from_state(raw) if raw is not None else CartState(row[USER_ID])
        cart, fired, deadline = on_cart_event(
            cart, row[EVENT_TYPE], ts, row[PRODUCT_ID], row[QUANTITY], row[PRICE],
            row[CURRENCY], self.rules)
        for firing in fired:
            self._queue_firing(ctx, firing)
        if cart.is_clearable:
            self.cart_state.clear()
        else:
            self.cart_state.update(cart.to_state())
        if deadline is not None:
            ctx.timer_service().register_event_time_timer(deadline)
        if row[MARKETING] is not None or row[PERSONALIZATION] is not None:
            self._queue(ctx, ts, (CONSENT, 0, (row[MARKETING], row[PERSONALIZATION])))
        if row[NEW_SESSION]:
            self._queue(ctx, ts, (SESSION_START, 0, None))

    def _on_browse(self, row: Any, ctx: Any) -> None:
        from udfs.browse import SessionSummary, evaluate_browse

        views = [(int(v[0]), v[1], v[2]) for v in json.loads(row[VIEWS] or "[]")]
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
        from udfs.cart import CartState, on_timer

        pending = self.pending.value() or {}
        items = pending.pop(timestamp, [])
        raw = self.cart_state.value()
        if raw is not None:
            cart, fired = on_timer(CartState.from_state(raw), timestamp, self.rules)
            if fired:
                items = [*items, *((FIRING, 0, f.to_state()) for f in fired)]
                if cart.is_clearable:
                    self.cart_state.clear()
                else:
                    self.cart_state.update(cart.to_state())
        if not items:
            return
        if pending:
            self.pending.update(pending)
        else:
            self.pending.clear()
        yield from self._apply(ctx.get_current_key(), timestamp,
                               sorted(items, key=lambda i: i[:2]))

    def _apply(self, user_id: str, ts: int, items: list[tuple[int, int, Any]]) -> Any:
        """Apply the items queued at event time `ts`, in order; yield notifications."""
        from udfs import gate, high_intent
        from udfs.notifications import Firing

        raw = self.gate_state.value()
        if raw is None:
            gate_state, hi_state = gate.GateState(), high_intent.HighIntentState(user_id)
        else:
            gate_state = gate.GateState.from_state(raw[0])
            hi_state = high_intent.HighIntentState.from_state(raw[1])
        for rank, _, payload in items:
            firing = None
            if rank == CONSENT:
                marketing, personalization = payload
                gate_state = gate.on_consent(gate_state, ts, marketing, personalization)
            elif rank == SESSION_START:
                hi_state = high_intent.on_session_start(hi_state, ts)
            elif rank == HIGH_INTENT_MATCH:
                search_ts, query, product_id = payload
                hi_state, firing = high_intent.on_candidate(
                    hi_state, search_ts, ts, query, product_id, self.rules)
            else:
                firing = Firing.from_state(payload)
            if firing is None:
                continue
            self.candidates[firing.trigger].inc()
            gate_state, decision = gate.decide(gate_state, firing, self.rules)
            if decision == gate.Decision.EMIT:
                self.emitted[firing.trigger].inc()
                yield self._notification(firing)
            elif decision == gate.Decision.SUPPRESSED_CAP:
                self.suppressed_cap.inc()
            else:
                self.suppressed_consent.inc()
        gate_state = gate.prune(gate_state, ts, self.rules)
        if gate_state.is_clearable and not hi_state.fired:
            self.gate_state.clear()
        else:
            self.gate_state.update((gate_state.to_state(), hi_state.to_state()))

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
