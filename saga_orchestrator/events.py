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


def _saga_event(item: FeedItem) -> events.SagaEvent | None:
    """The catalogue event a stored saga event becomes, without its order (None: one only the orchestrator needs)."""
    state: dict[str, Any] = item.state
    saga = item.originator_id
    match item.type:
        case "SagaStarted":
            return events.SagaStarted(saga_id=saga, customer_id=state["customer_id"],
                                      definition_version=state["definition_version"])
        case "StepSucceeded":
            return events.SagaStepSucceeded(saga_id=saga, step=state["step"], attempts=state.get("attempts", 0))
        case "StepFailed":
            return events.SagaStepFailed(saga_id=saga, step=state["step"], error=str(state["error"])[:500],
                                         final=state["final"])
        case "CompensationStarted":
            return events.SagaCompensating(saga_id=saga, reason=str(state["reason"])[:500], plan=list(state["plan"]))
        case "SagaCompleted":
            return events.SagaCompleted(saga_id=saga)
        case "SagaCompensated":
            return events.SagaFailed(saga_id=saga, status="COMPENSATED")
        case "SagaCompensationFailed":
            return events.SagaFailed(saga_id=saga, status="COMPENSATION_FAILED")
    return None


# The stored events the bus hears of, and those that teach the relay a saga's order id (decoded, not published).
PUBLISHED = frozenset({"SagaStarted", "StepSucceeded", "StepFailed", "CompensationStarted", "SagaCompleted",
                       "SagaCompensated", "SagaCompensationFailed"})
_TEACHING = frozenset({"CompensationSucceeded", "ReplayFinished"})


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
        items, last = await self.store.notifications(after, limit, PUBLISHED | _TEACHING)
        if last is None:
            return [], None, False
        orders: dict[str, str] = {}
        if items:
            orders = {row["saga_id"]: row["order_id"] for row in await tx.fetch(
                _ORDERS, {"p_ids": sorted({item.originator_id for item in items})}) if row["order_id"]}
        outgoing = []
        for item in items:
            learned = _learned_order(item)
            if learned:
                orders[item.originator_id] = learned
            data = _saga_event(item)
            if data is None or item.timestamp is None:
                continue
            order_id = orders.get(item.originator_id)
            event_id = uuid.uuid5(_NAMESPACE, f"{item.originator_id}:{item.originator_version}")
            event = events.envelope(data.model_copy(update={"order_id": order_id}), item.originator_id,
                                    time=item.timestamp, order_id=order_id, event_id=str(event_id))
            outgoing.append(Outgoing(event.id, event.nats_subject, event.model_dump_json().encode()))
        return outgoing, last, last - after >= limit

    async def sent(self, tx: Tx, marker: int) -> None:
        await tx.execute(_MOVE, {"p_position": marker})

    async def backlog(self, tx: Tx) -> int:
        after = int(await tx.fetchval(_POSITION) or 0)
        return max(0, await self.store.max_notification_id() - after)
