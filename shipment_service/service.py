"""shipment_service domain rules: one live shipment per order, forward-only statuses, cancel before dispatch."""

from __future__ import annotations

import base64
import secrets

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import Identity
from shared.errors import Conflict, NotFound, ServiceUnavailable
from shipment_service.models import Shipment, ShipmentStatus, ShipmentStatusChange
from shipment_service.schemas import ShipmentCreate

TRACKING_PREFIX = "CS"
_TRACKING_ATTEMPTS = 5


def new_tracking_number() -> str:
    """"CS" and 12 base32 characters: 60 random bits, unambiguous to read out on a phone."""
    return TRACKING_PREFIX + base64.b32encode(secrets.token_bytes(8)).decode()[:12]


async def _live_shipment(session: AsyncSession, order_id: str, for_update: bool = False) -> Shipment | None:
    query = select(Shipment).where(Shipment.order_id == order_id, Shipment.status != ShipmentStatus.CANCELLED)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


def _already_shipped(order_id: str, shipment_id: str | None = None) -> Conflict:
    return Conflict(f"Order {order_id} already has a live shipment.", code="already_shipped",
                    shipment_id=shipment_id)


def _record(shipment: Shipment, status: str, note: str | None) -> None:
    shipment.status = status
    shipment.history.append(ShipmentStatusChange(position=len(shipment.history) + 1, status=status, note=note))


async def create_shipment(session: AsyncSession, data: ShipmentCreate) -> Shipment:
    existing = await _live_shipment(session, data.order_id)
    if existing is not None:
        raise _already_shipped(data.order_id, existing.id)
    for _ in range(_TRACKING_ATTEMPTS):
        shipment = Shipment(
            order_id=data.order_id,
            customer_id=data.customer_id,
            carrier_code=data.carrier_code,
            address=data.address.model_dump(),
            tracking_number=new_tracking_number(),
            history=[],
        )
        _record(shipment, ShipmentStatus.CREATED, None)
        try:
            # Added inside the savepoint: begin_nested() flushes what is pending before the savepoint starts.
            async with session.begin_nested():
                session.add(shipment)
                await session.flush()
            return shipment
        except IntegrityError:
            # Either a concurrent create for the same order won, or (astronomically rarely) the tracking
            # number is taken: the savepoint keeps the transaction usable to tell which.
            raced = await _live_shipment(session, data.order_id)
            if raced is not None:
                raise _already_shipped(data.order_id, raced.id) from None
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


def _cancel(shipment: Shipment, reason: str) -> Shipment:
    if shipment.status == ShipmentStatus.CANCELLED:
        return shipment
    if shipment.status != ShipmentStatus.CREATED:
        raise Conflict(f"Shipment {shipment.id} is {shipment.status}: it can only be cancelled before dispatch.",
                       shipment_status=shipment.status)
    return _move(shipment, ShipmentStatus.CANCELLED, reason)


async def cancel_shipment(session: AsyncSession, identity: Identity, shipment_id: str, reason: str) -> Shipment:
    shipment = _cancel(await get_shipment(session, identity, shipment_id, for_update=True), reason)
    await session.flush()
    return shipment


async def cancel_order_shipment(session: AsyncSession, order_id: str, reason: str) -> Shipment | None:
    """The saga's compensation: cancel the order's live shipment; None when it has none."""
    shipment = await _live_shipment(session, order_id, for_update=True)
    if shipment is None:
        return None
    _cancel(shipment, reason)
    await session.flush()
    return shipment


async def change_status(
    session: AsyncSession, identity: Identity, shipment_id: str, status: str, note: str | None
) -> Shipment:
    shipment = _move(await get_shipment(session, identity, shipment_id, for_update=True), status, note)
    await session.flush()
    return shipment
