"""shipment_service domain rules: one live shipment per order, forward-only statuses, cancel before dispatch."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, bindparam, insert, select, update

from shared import events
from shared.auth import Identity
from shared.bus import emit
from shared.db import Row, Tx, conflict_insert, table_of
from shared.errors import Conflict, ServiceUnavailable
from shared.fence import compensate, enter_step
from shared.paging import children_of, matching, visible_page, visible_row
from shipment_service.models import (
    NEXT_STATUSES,
    OrderCancelStatus,
    OrderShipmentCancel,
    Parcel,
    Shipment,
    ShipmentStatus,
    ShipmentStatusChange,
    StatusEntry,
)
from shipment_service.schemas import ShipmentCreate

TRACKING_PREFIX = "CS"
_TRACKING_ATTEMPTS = 5


def new_tracking_number() -> str:
    """"CS" and 12 base32 characters: 60 random bits, unambiguous to read out on a phone."""
    return TRACKING_PREFIX + base64.b32encode(secrets.token_bytes(8)).decode()[:12]


shipments = table_of(Shipment)
history = table_of(ShipmentStatusChange)
_CHANGE_COLUMNS = (history.c.status.label("change_status"), history.c.at, history.c.note)


def _entry(row: Row) -> StatusEntry:
    return StatusEntry(status=ShipmentStatus(row["change_status"]), at=row["at"], note=row["note"])


def _parcel(shipment: Row, changes: Sequence[Row]) -> Parcel:
    return Parcel(
        id=shipment["id"], order_id=shipment["order_id"], customer_id=shipment["customer_id"],
        carrier_code=shipment["carrier_code"], address=shipment["address"],
        tracking_number=shipment["tracking_number"], status=ShipmentStatus(shipment["status"]),
        created_at=shipment["created_at"], updated_at=shipment["updated_at"],
        history=tuple(_entry(change) for change in changes if change["change_status"] is not None))


# The event that says a shipment reached each status: beside every row of its history, in the same transaction.
_STATUS_EVENTS: dict[ShipmentStatus, type[events.ShipmentEvent]] = {
    ShipmentStatus.CREATED: events.ShipmentCreated,
    ShipmentStatus.DISPATCHED: events.ShipmentDispatched,
    ShipmentStatus.IN_TRANSIT: events.ShipmentInTransit,
    ShipmentStatus.DELIVERED: events.ShipmentDelivered,
    ShipmentStatus.CANCELLED: events.ShipmentCancelled,
}


async def _announce(tx: Tx, shipment: Row, status: ShipmentStatus, note: str | None) -> None:
    """The shipment's new status on the bus, about its order (the order follows its parcel)."""
    data = _STATUS_EVENTS[status](order_id=shipment["order_id"], shipment_id=shipment["id"],
                                  tracking_number=shipment["tracking_number"], note=note)
    await emit(tx, data, subject=shipment["id"], order_id=shipment["order_id"])


def _already_shipped(order_id: str, shipment_id: str) -> Conflict:
    return Conflict(f"Order {order_id} already has a live shipment.", code="already_shipped",
                    shipment_id=shipment_id)


def _with_history(where: ColumnElement[bool]) -> Any:
    """A shipment and its history in one statement: one row per status change."""
    return (select(shipments, *_CHANGE_COLUMNS)
            .select_from(shipments.outerjoin(history, history.c.shipment_id == shipments.c.id))
            .where(where).order_by(history.c.position))


# Built once and executed with parameters: compiled once, prepared once per connection.
# INSERT ... ON CONFLICT DO NOTHING: a taken unique key inserts no row and leaves the transaction usable.
_CREATE = conflict_insert(shipments).on_conflict_do_nothing().returning(*shipments.c)
_LIVE = select(shipments.c.id).where(shipments.c.order_id == bindparam("w_order_id"),
                                     shipments.c.status != ShipmentStatus.CANCELLED)
_ADD_CHANGE = insert(history).returning(*_CHANGE_COLUMNS)
_BY_ID = _with_history(shipments.c.id == bindparam("w_id"))
_BY_TRACKING_NUMBER = _with_history(shipments.c.tracking_number == bindparam("w_tracking_number"))
_LOCK = select(shipments).where(shipments.c.id == bindparam("w_id")).with_for_update()
_SET_STATUS = (update(shipments).where(shipments.c.id == bindparam("w_id"))
               .values(status=bindparam("w_status")).returning(*shipments.c))
_HISTORY = select(*_CHANGE_COLUMNS).where(history.c.shipment_id == bindparam("w_id")).order_by(history.c.position)
# The saga's compensation: one conditional UPDATE; a concurrent dispatch holds the row, and this waits and
# re-checks the status.
_CANCEL_ORDERS = (update(shipments)
                  .where(shipments.c.order_id == bindparam("w_order_id"), shipments.c.status == ShipmentStatus.CREATED)
                  .values(status=ShipmentStatus.CANCELLED).returning(*shipments.c))
_GONE = select(shipments.c.id, shipments.c.status).where(
    shipments.c.order_id == bindparam("w_order_id"),
    shipments.c.status.not_in((ShipmentStatus.CREATED, ShipmentStatus.CANCELLED)))


async def _add_change(tx: Tx, shipment_id: str, position: int, status: ShipmentStatus, note: str | None) -> Row:
    change = await tx.fetchrow(_ADD_CHANGE, {"shipment_id": shipment_id, "position": position, "status": status,
                                             "note": note})
    assert change is not None  # an INSERT ... RETURNING returns its row
    return change


async def create_shipment(tx: Tx, data: ShipmentCreate) -> Parcel:
    """One live shipment per order, never one for an order whose shipment was compensated (shared/fence.py)."""
    await enter_step(tx, data.order_id)
    for _ in range(_TRACKING_ATTEMPTS):
        shipment = await tx.fetchrow(_CREATE, {
            "order_id": data.order_id,
            "customer_id": data.customer_id,
            "carrier_code": data.carrier_code,
            "address": data.address.model_dump(),
            "tracking_number": new_tracking_number(),
            "status": ShipmentStatus.CREATED,
        })
        if shipment is not None:
            created = await _add_change(tx, shipment["id"], 1, ShipmentStatus.CREATED, None)
            await _announce(tx, shipment, ShipmentStatus.CREATED, None)
            return _parcel(shipment, [created])
        # The order has a live shipment (a concurrent create waits for it to commit first), or
        # (astronomically rarely) the tracking number is taken: then try another.
        live = await tx.fetchval(_LIVE, {"w_order_id": data.order_id})
        if live is not None:
            raise _already_shipped(data.order_id, live)
    raise ServiceUnavailable("Could not allocate a unique tracking number; retry the request.")


def _visible(shipment: Row | None, identity: Identity, what: str) -> Row:
    """By id or by tracking number: another customer's shipment is missing, so neither can be probed."""
    return visible_row(shipment, identity, f"Shipment {what} does not exist.")


async def get_shipment(tx: Tx, identity: Identity, shipment_id: str) -> Parcel:
    rows = await tx.fetch(_BY_ID, {"w_id": shipment_id})
    return _parcel(_visible(rows[0] if rows else None, identity, shipment_id), rows)


async def get_by_tracking_number(tx: Tx, identity: Identity, tracking_number: str) -> Parcel:
    rows = await tx.fetch(_BY_TRACKING_NUMBER, {"w_tracking_number": tracking_number})
    return _parcel(_visible(rows[0] if rows else None, identity, tracking_number), rows)


async def list_shipments(
    tx: Tx,
    identity: Identity,
    order_id: str | None,
    customer_id: str | None,
    status: ShipmentStatus | None,
    limit: int,
    offset: int,
) -> tuple[list[Parcel], int]:
    match = matching(shipments, customer_id=identity.customer_scope(customer_id), order_id=order_id, status=status)
    page, total = await visible_page(tx, shipments, match, (shipments.c.created_at.desc(), shipments.c.id), limit,
                                     offset)
    history_of = await children_of(tx, page, history.c.shipment_id, _CHANGE_COLUMNS, history.c.position)
    return [_parcel(shipment, history_of[shipment["id"]]) for shipment in page], total


def _not_cancellable(shipment_id: str, status: str) -> Conflict:
    return Conflict(f"Shipment {shipment_id} is {status}: it can only be cancelled before dispatch.",
                    shipment_status=status)


async def _move(tx: Tx, shipment: Row, status: ShipmentStatus, note: str | None) -> Parcel:
    """Record the shipment's next status (its row locked by the caller)."""
    if status not in NEXT_STATUSES[ShipmentStatus(shipment["status"])]:
        raise Conflict(f"Shipment {shipment['id']} cannot go from {shipment['status']} to {status}.",
                       shipment_status=shipment["status"])
    moved = await tx.fetchrow(_SET_STATUS, {"w_id": shipment["id"], "w_status": status})
    assert moved is not None  # the row is locked
    changes = await tx.fetch(_HISTORY, {"w_id": shipment["id"]})
    change = await _add_change(tx, shipment["id"], len(changes) + 1, status, note)
    await _announce(tx, moved, status, note)
    return _parcel(moved, [*changes, change])


async def _locked(tx: Tx, identity: Identity, shipment_id: str) -> Row:
    return _visible(await tx.fetchrow(_LOCK, {"w_id": shipment_id}), identity, shipment_id)


async def cancel_shipment(tx: Tx, identity: Identity, shipment_id: str, reason: str) -> Parcel:
    """The fleet's services and admins only: a customer's shipment is part of a paid order with reserved stock and
    an assigned carrier, and cancelling it alone would leave those standing (the books would disagree)."""
    shipment = await _locked(tx, identity, shipment_id)
    if not identity.is_privileged:
        raise Conflict(f"Shipment {shipment_id} belongs to order {shipment['order_id']}: it is cancelled only with "
                       "its order (payment refunded, stock released), not on its own.",
                       shipment_status=shipment["status"])
    if shipment["status"] == ShipmentStatus.CANCELLED:
        return _parcel(shipment, await tx.fetch(_HISTORY, {"w_id": shipment_id}))
    if shipment["status"] != ShipmentStatus.CREATED:
        raise _not_cancellable(shipment_id, shipment["status"])
    return await _move(tx, shipment, ShipmentStatus.CANCELLED, reason)


async def cancel_order_shipment(tx: Tx, order_id: str, reason: str) -> OrderShipmentCancel:
    """The saga's compensation: cancel the order's live shipment; NONE when it has none.

    The order's fence is closed first (shared/fence.py): a shipment created later for the order is refused, one
    in flight is waited for and cancelled.
    """
    await compensate(tx, order_id)
    shipment = await tx.fetchrow(_CANCEL_ORDERS, {"w_order_id": order_id})
    if shipment is None:
        gone = await tx.fetchrow(_GONE, {"w_order_id": order_id})
        if gone is not None:
            raise _not_cancellable(gone["id"], gone["status"])
        return OrderShipmentCancel(order_id, OrderCancelStatus.NONE)
    # The row lock taken by the UPDATE keeps the history still while it is read and extended.
    changes = await tx.fetch(_HISTORY, {"w_id": shipment["id"]})
    cancelled = await _add_change(tx, shipment["id"], len(changes) + 1, ShipmentStatus.CANCELLED, reason)
    await _announce(tx, shipment, ShipmentStatus.CANCELLED, reason)
    return OrderShipmentCancel(order_id, OrderCancelStatus.CANCELLED, _parcel(shipment, [*changes, cancelled]))


async def change_status(tx: Tx, identity: Identity, shipment_id: str, status: ShipmentStatus, note: str | None
                        ) -> Parcel:
    return await _move(tx, await _locked(tx, identity, shipment_id), status, note)
