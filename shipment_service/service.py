"""shipment_service domain rules: one live shipment per order, forward-only statuses, cancel before dispatch."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Row, Table, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import Identity
from shared.db import conflict_insert
from shared.errors import Conflict, NotFound, ServiceUnavailable
from shared.fence import compensate, enter_step
from shipment_service.models import Shipment, ShipmentStatus, ShipmentStatusChange
from shipment_service.schemas import ShipmentCreate

TRACKING_PREFIX = "CS"
_TRACKING_ATTEMPTS = 5


def new_tracking_number() -> str:
    """"CS" and 12 base32 characters: 60 random bits, unambiguous to read out on a phone."""
    return TRACKING_PREFIX + base64.b32encode(secrets.token_bytes(8)).decode()[:12]


# The saga's step and its compensation run on every order: Core statements on the tables, no ORM unit of work.
shipments = cast(Table, Shipment.__table__)
history = cast(Table, ShipmentStatusChange.__table__)
_CHANGE_COLUMNS = (history.c.status, history.c.at, history.c.note)
# A result row of any columns, read by name.
AnyRow = Row[*tuple[Any, ...]]


def _insert_unless_taken(session: AsyncSession, table: Table) -> postgresql.Insert | sqlite.Insert:
    """INSERT ... ON CONFLICT DO NOTHING: a taken unique key inserts no row and leaves the transaction usable."""
    return conflict_insert(session, table).on_conflict_do_nothing()


def _shipment_view(shipment: AnyRow, changes: Sequence[AnyRow]) -> dict[str, Any]:
    """The shipment row with its status history, as the response schema reads it."""
    return {**shipment._mapping, "history": [change._mapping for change in changes]}


def _already_shipped(order_id: str, shipment_id: str) -> Conflict:
    return Conflict(f"Order {order_id} already has a live shipment.", code="already_shipped",
                    shipment_id=shipment_id)


def _record(shipment: Shipment, status: str, note: str | None) -> None:
    shipment.status = status
    shipment.history.append(ShipmentStatusChange(position=len(shipment.history) + 1, status=status, note=note))


# Built once and executed with parameters: compiled once, no bind parameters built per call.
_INSERT_CHANGE = insert(history).returning(*_CHANGE_COLUMNS)

async def _add_change(session: AsyncSession, shipment_id: str, position: int, status: str,
                      note: str | None) -> AnyRow:
    return (await session.execute(_INSERT_CHANGE, {
        "shipment_id": shipment_id, "position": position, "status": status, "note": note})).one()


async def create_shipment(session: AsyncSession, data: ShipmentCreate) -> dict[str, Any]:
    """One live shipment per order, never one for an order whose shipment was compensated (shared/fence.py)."""
    await enter_step(session, data.order_id)
    for _ in range(_TRACKING_ATTEMPTS):
        shipment = (await session.execute(_insert_unless_taken(session, shipments).returning(*shipments.c), {
            "order_id": data.order_id,
            "customer_id": data.customer_id,
            "carrier_code": data.carrier_code,
            "address": data.address.model_dump(),
            "tracking_number": new_tracking_number(),
            "status": ShipmentStatus.CREATED,
        })).one_or_none()
        if shipment is not None:
            created = await _add_change(session, shipment.id, 1, ShipmentStatus.CREATED, None)
            return _shipment_view(shipment, [created])
        # The order has a live shipment (a concurrent create waits for it to commit first), or
        # (astronomically rarely) the tracking number is taken: then try another.
        live = (await session.execute(select(shipments.c.id).where(
            shipments.c.order_id == data.order_id, shipments.c.status != ShipmentStatus.CANCELLED))).scalar()
        if live is not None:
            raise _already_shipped(data.order_id, live)
    raise ServiceUnavailable("Could not allocate a unique tracking number; retry the request.")


def _visible(shipment: Shipment | None, identity: Identity, what: str) -> Shipment:
    # Another customer's shipment is reported as missing, so ids and tracking numbers cannot be probed.
    if shipment is None or not identity.may_access(shipment.customer_id):
        raise NotFound(f"Shipment {what} does not exist.")
    return shipment


async def get_shipment(
    session: AsyncSession, identity: Identity, shipment_id: str, for_update: bool = False
) -> Shipment:
    query = select(Shipment).where(Shipment.id == shipment_id)
    if for_update:
        query = query.with_for_update()
    return _visible((await session.execute(query)).scalar_one_or_none(), identity, shipment_id)


async def get_by_tracking_number(session: AsyncSession, identity: Identity, tracking_number: str) -> Shipment:
    query = select(Shipment).where(Shipment.tracking_number == tracking_number)
    return _visible((await session.execute(query)).scalar_one_or_none(), identity, tracking_number)


async def list_shipments(
    session: AsyncSession,
    identity: Identity,
    order_id: str | None,
    customer_id: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Shipment], int]:
    query = select(Shipment)
    if not identity.is_privileged:
        customer_id = identity.subject
    if customer_id:
        query = query.where(Shipment.customer_id == customer_id)
    if order_id:
        query = query.where(Shipment.order_id == order_id)
    if status:
        query = query.where(Shipment.status == status)
    total = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
    rows = await session.execute(query.order_by(Shipment.created_at.desc(), Shipment.id).limit(limit).offset(offset))
    return list(rows.scalars()), int(total)


def _move(shipment: Shipment, status: str, note: str | None) -> Shipment:
    if status not in ShipmentStatus.NEXT[shipment.status]:
        raise Conflict(f"Shipment {shipment.id} cannot go from {shipment.status} to {status}.",
                       shipment_status=shipment.status)
    _record(shipment, status, note)
    return shipment


def _not_cancellable(shipment_id: str, status: str) -> Conflict:
    return Conflict(f"Shipment {shipment_id} is {status}: it can only be cancelled before dispatch.",
                    shipment_status=status)


def _cancel(shipment: Shipment, reason: str) -> Shipment:
    if shipment.status == ShipmentStatus.CANCELLED:
        return shipment
    if shipment.status != ShipmentStatus.CREATED:
        raise _not_cancellable(shipment.id, shipment.status)
    return _move(shipment, ShipmentStatus.CANCELLED, reason)


async def cancel_shipment(session: AsyncSession, identity: Identity, shipment_id: str, reason: str) -> Shipment:
    shipment = _cancel(await get_shipment(session, identity, shipment_id, for_update=True), reason)
    await session.flush()
    return shipment


@dataclass(frozen=True)
class OrderShipmentCancel:
    """What the compensation did: CANCELLED with the shipment it cancelled, or NONE when the order had none."""

    order_id: str
    status: str
    shipment: dict[str, Any] | None = None


async def cancel_order_shipment(session: AsyncSession, order_id: str, reason: str) -> OrderShipmentCancel:
    """The saga's compensation: cancel the order's live shipment; NONE when it has none.

    One conditional UPDATE: a concurrent dispatch holds the row, and this waits and re-checks the status. The
    order's fence is closed first (shared/fence.py): a shipment created later for the order is refused, one in
    flight is waited for and cancelled.
    """
    await compensate(session, order_id)
    shipment = (await session.execute(
        update(shipments)
        .where(shipments.c.order_id == order_id, shipments.c.status == ShipmentStatus.CREATED)
        .values(status=ShipmentStatus.CANCELLED)
        .returning(*shipments.c)
    )).one_or_none()
    if shipment is None:
        gone = (await session.execute(select(shipments.c.id, shipments.c.status).where(
            shipments.c.order_id == order_id,
            shipments.c.status.not_in((ShipmentStatus.CREATED, ShipmentStatus.CANCELLED)),
        ))).one_or_none()
        if gone is not None:
            raise _not_cancellable(gone.id, gone.status)
        return OrderShipmentCancel(order_id, "NONE")
    # The row lock taken by the UPDATE keeps the history still while it is read and extended.
    changes = (await session.execute(
        select(*_CHANGE_COLUMNS).where(history.c.shipment_id == shipment.id).order_by(history.c.position))).all()
    cancelled = await _add_change(session, shipment.id, len(changes) + 1, ShipmentStatus.CANCELLED, reason)
    return OrderShipmentCancel(order_id, "CANCELLED", _shipment_view(shipment, [*changes, cancelled]))


async def change_status(
    session: AsyncSession, identity: Identity, shipment_id: str, status: str, note: str | None
) -> Shipment:
    shipment = _move(await get_shipment(session, identity, shipment_id, for_update=True), status, note)
    await session.flush()
    return shipment
