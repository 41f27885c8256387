"""What the saga says on the bus: its event store's notification log, relayed as the catalogue's saga events.

The saga's own events are its truth (the event store), so they are not written twice into an outbox: the relay
reads the notification log after the position it last published (kept in `bus_relay_position`, in the same
database), maps the events others care about to shared.events' saga models, publishes them in log order and
moves the position in the transaction that holds the relay's lock. The events' ids derive from the saga and the
event's version, so a relay killed after a publish and before it moved the position publishes the same ids again,
which JetStream drops as duplicates.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, select

from saga_orchestrator.event_store import FeedItem, SagaStore
from saga_orchestrator.models import SagaIndex, relay_positions
from shared import events
from shared.bus import Outgoing
from shared.db import Tx, conflict_insert, table_of

RELAY = "sagas"
_NAMESPACE = uuid.UUID("6f0b5c4e-2a52-4d3f-9a57-5f0e3c1f7a10")  # the saga events' ids on the bus (uuid5)

positions = relay_positions
_index = table_of(SagaIndex)
_POSITION = select(positions.c.position).where(positions.c.relay == RELAY)
_MOVE = conflict_insert(positions).values(relay=RELAY, position=bindparam("p_position"))
_MOVE = _MOVE.on_conflict_do_update(index_elements=[positions.c.relay], set_={"position": _MOVE.excluded.position})
_ORDERS = select(_index.c.saga_id, _index.c.order_id).where(_index.c.saga_id.in_(bindparam("p_ids", expanding=True)))


def _saga_event(item: FeedItem) -> Callable[[str, str | None], events.SagaEvent] | None:
    """The catalogue event a stored saga event becomes (None: an event only the orchestrator needs)."""
    state: dict[str, Any] = item.state
    mapping: dict[str, Callable[[str, str | None], events.SagaEvent]] = {
        "SagaStarted": lambda saga, order: events.SagaStarted(
            saga_id=saga, order_id=order, customer_id=state["customer_id"],
            definition_version=state["definition_version"]),
        "StepSucceeded": lambda saga, order: events.SagaStepSucceeded(
            saga_id=saga, order_id=order, step=state["step"], attempts=state.get("attempts", 0)),
        "StepFailed": lambda saga, order: events.SagaStepFailed(
            saga_id=saga, order_id=order, step=state["step"], error=str(state["error"])[:500], final=state["final"]),
        "CompensationStarted": lambda saga, order: events.SagaCompensating(
            saga_id=saga, order_id=order, reason=str(state["reason"])[:500], plan=list(state["plan"])),
        "SagaCompleted": lambda saga, order: events.SagaCompleted(saga_id=saga, order_id=order),
        "SagaCompensated": lambda saga, order: events.SagaFailed(saga_id=saga, order_id=order, status="COMPENSATED"),
        "SagaCompensationFailed": lambda saga, order: events.SagaFailed(
            saga_id=saga, order_id=order, status="COMPENSATION_FAILED"),
    }
    return mapping.get(item.type)


def _learned_order(item: FeedItem) -> str | None:
    """The order id an event itself brings (the create-order step's result, a replay's or compensation's learning)."""
    for key in ("result", "learned"):
        value = item.state.get(key)
        if isinstance(value, dict) and value.get("order_id"):
            return str(value["order_id"])
    return None


class SagaEventSource:
    """The relay's source (shared.bus.OutboxRelay) for the orchestrator: the event store's notification log."""

    def __init__(self, store: SagaStore) -> None:
        self.store = store

    async def pending(self, tx: Tx, limit: int) -> tuple[list[Outgoing], int | None, bool]:
        after = int(await tx.fetchval(_POSITION) or 0)
        items = await self.store.feed(after, limit)
        if not items:
            return [], None, False
        orders = {row["saga_id"]: row["order_id"] for row in await tx.fetch(
            _ORDERS, {"p_ids": sorted({item.originator_id for item in items})}) if row["order_id"]}
        outgoing = []
        for item in items:
            learned = _learned_order(item)
            if learned:
                orders[item.originator_id] = learned
            make = _saga_event(item)
            if make is None or item.timestamp is None:
                continue
            order_id = orders.get(item.originator_id)
            event = events.envelope(
                make(item.originator_id, order_id), item.originator_id, time=item.timestamp, order_id=order_id,
                event_id=str(uuid.uuid5(_NAMESPACE, f"{item.originator_id}:{item.originator_version}")))
            outgoing.append(Outgoing(event.id, event.nats_subject, event.model_dump_json().encode()))
        return outgoing, items[-1].id, len(items) == limit

    async def sent(self, tx: Tx, marker: int) -> None:
        await tx.execute(_MOVE, {"p_position": marker})

    async def backlog(self, tx: Tx) -> int:
        after = int(await tx.fetchval(_POSITION) or 0)
        return max(0, await self.store.max_notification_id() - after)
