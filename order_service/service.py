"""order_service domain rules: an order is PENDING until confirmed or cancelled; lines only while PENDING.

A change to an order's lines first locks the order's row, and a status change updates that row, so the two
are serialised. The lines are read only after the lock is held: a statement that locks the order and reads its
lines at once would read them as they were before it waited for the lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, bindparam, delete, insert, select, update

from order_service.models import Line, Order, OrderLine, OrderStatus, PlacedOrder, TimelineEntry
from order_service.schemas import LineIn, OrderCreate
from shared import events
from shared.auth import Identity
from shared.bus import emit
from shared.db import Row, Tx, conflict_insert, new_id, table_of
from shared.errors import Conflict, Forbidden, InvalidRequest, NotFound
from shared.fence import compensate, enter_step
from shared.paging import children_of, matching, visible_page

orders = table_of(Order)
order_lines = table_of(OrderLine)
timeline = table_of(TimelineEntry)
# Where an order goes once confirmed, in order: its parcel's events move it forward (follow_parcel), never back.
_FULFILMENT = (OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.DELIVERED)
_LINE_COLUMNS = (order_lines.c.id, order_lines.c.sku, order_lines.c.quantity, order_lines.c.unit_price_minor)


def _order(order: Row, lines: Iterable[Row | Line]) -> PlacedOrder:
    held = tuple(line if isinstance(line, Line) else _line(line["id"], line) for line in lines)
    return PlacedOrder(
        id=order["id"], customer_id=order["customer_id"], status=OrderStatus(order["status"]),
        currency=order["currency"], shipping_address=order["shipping_address"], cancel_reason=order["cancel_reason"],
        created_at=order["created_at"], updated_at=order["updated_at"], lines=held,
        total_minor=sum(line.line_total_minor for line in held))


def _line(line_id: str, row: Row) -> Line:
    return Line(id=line_id, sku=row["sku"], quantity=row["quantity"], unit_price_minor=row["unit_price_minor"],
                line_total_minor=row["quantity"] * row["unit_price_minor"])


def _missing(order_id: str) -> NotFound:
    # Another customer's order is reported as missing, so ids cannot be probed.
    return NotFound(f"Order {order_id} does not exist.")


def _visible_to(identity: Identity) -> dict[str, Any]:
    """Identity.may_access as the parameters of the statements' visibility clause (None: everyone's)."""
    return {"w_customer": identity.customer_scope()}


# Built once and executed with parameters: compiled once, prepared once per connection.
_VISIBLE: ColumnElement[bool] = (bindparam("w_customer", type_=orders.c.customer_id.type).is_(None)
                                 | (orders.c.customer_id == bindparam("w_customer")))
_INSERT_ORDER = insert(orders).returning(*orders.c)
_LOCK_ORDER = select(orders).where(orders.c.id == bindparam("w_id"), _VISIBLE).with_for_update()
_LINES = (select(order_lines.c.position, *_LINE_COLUMNS)
          .where(order_lines.c.order_id == bindparam("w_id")).order_by(order_lines.c.position))
# The order and its lines in one statement: one row per line, or one row without a line.
_ORDER_WITH_LINES = (
    select(orders, order_lines.c.id.label("line_id"), order_lines.c.sku, order_lines.c.quantity,
           order_lines.c.unit_price_minor)
    .outerjoin(order_lines, order_lines.c.order_id == orders.c.id)
    .where(orders.c.id == bindparam("w_id"), _VISIBLE)
    .order_by(order_lines.c.position))
_INSERT_LINES = insert(order_lines)
_DELETE_LINES = (delete(order_lines).where(order_lines.c.order_id == bindparam("w_id"))
                 .returning(order_lines.c.id))
_DELETE_LINE = (delete(order_lines)
                .where(order_lines.c.id == bindparam("w_line_id"), order_lines.c.order_id == bindparam("w_id"))
                .returning(order_lines.c.id))
_LEAVE_PENDING = (update(orders)
                  .where(orders.c.id == bindparam("w_id"), orders.c.status == OrderStatus.PENDING, _VISIBLE)
                  .returning(*orders.c))


async def _lock_order(tx: Tx, identity: Identity, order_id: str) -> Row:
    order = await tx.fetchrow(_LOCK_ORDER, {"w_id": order_id, **_visible_to(identity)})
    if order is None:
        raise _missing(order_id)
    return order


async def _lines(tx: Tx, order_id: str) -> list[Row]:
    return await tx.fetch(_LINES, {"w_id": order_id})


async def create_order(tx: Tx, identity: Identity, data: OrderCreate) -> PlacedOrder:
    if identity.is_privileged:
        if not data.customer_id:
            raise InvalidRequest("customer_id is required when an admin or a service creates an order.")
        customer_id = data.customer_id
    else:
        if data.customer_id not in (None, identity.subject):
            raise Forbidden("A customer may only create orders for themselves.")
        customer_id = identity.subject
    order = await tx.fetchrow(_INSERT_ORDER, {
        "customer_id": customer_id,
        "currency": data.currency,
        "status": OrderStatus.PENDING,
        "shipping_address": data.shipping_address.model_dump() if data.shipping_address else None,
    })
    assert order is not None  # an INSERT ... RETURNING returns its row
    await emit(tx, events.OrderCreated(order_id=order["id"], customer_id=customer_id, currency=data.currency),
               subject=order["id"], order_id=order["id"])
    return _order(order, [])


async def get_order(tx: Tx, identity: Identity, order_id: str) -> PlacedOrder:
    rows = await tx.fetch(_ORDER_WITH_LINES, {"w_id": order_id, **_visible_to(identity)})
    if not rows:
        raise _missing(order_id)
    lines = [_line(row["line_id"], row) for row in rows if row["line_id"] is not None]
    return _order(rows[0], lines)


async def list_orders(
    tx: Tx, identity: Identity, customer_id: str | None, status: OrderStatus | None, limit: int, offset: int
) -> tuple[list[PlacedOrder], int]:
    match = matching(orders, customer_id=identity.customer_scope(customer_id), status=status)
    page, total = await visible_page(tx, orders, match, (orders.c.created_at.desc(), orders.c.id), limit, offset)
    lines_of = await children_of(tx, page, order_lines.c.order_id, _LINE_COLUMNS, order_lines.c.position)
    return [_order(order, lines_of[order["id"]]) for order in page], total


def _require_pending(order: Row, action: str) -> None:
    if order["status"] != OrderStatus.PENDING:
        raise Conflict(f"Cannot {action}: order {order['id']} is {order['status']}.", order_status=order["status"])


async def add_lines(tx: Tx, identity: Identity, order_id: str, lines: list[LineIn]) -> PlacedOrder:
    order = await _lock_order(tx, identity, order_id)
    await enter_step(tx, order_id)
    _require_pending(order, "add lines")
    existing = await _lines(tx, order_id)
    position = max((line["position"] for line in existing), default=0)
    added = [{"id": new_id(), "order_id": order_id, "position": position + offset, "sku": line.sku,
              "quantity": line.quantity, "unit_price_minor": line.unit_price_minor}
             for offset, line in enumerate(lines, start=1)]
    await tx.executemany(_INSERT_LINES, added)
    placed = _order(order, [*existing, *added])
    await emit(tx, events.OrderLineAdded(order_id=order_id, line_ids=[str(line["id"]) for line in added],
                                         skus=[line.sku for line in lines], total_minor=placed.total_minor),
               subject=order_id, order_id=order_id)
    return placed


async def remove_lines(tx: Tx, identity: Identity, order_id: str, line_id: str | None = None) -> PlacedOrder:
    """Remove one line, or all of them (the saga's compensation of 'add order lines', which closes the order's
    fence: shared/fence.py)."""
    order = await _lock_order(tx, identity, order_id)
    if line_id is None:
        await compensate(tx, order_id)
        if order["status"] in _FULFILMENT:
            raise Conflict(f"Cannot remove lines: order {order['id']} is {order['status']}.",
                           order_status=order["status"])
        removed = [row["id"] for row in await tx.fetch(_DELETE_LINES, {"w_id": order_id})]
        placed = _order(order, [])
    else:
        _require_pending(order, "remove a line")
        if await tx.fetchrow(_DELETE_LINE, {"w_id": order_id, "w_line_id": line_id}) is None:
            raise NotFound(f"Line {line_id} is not part of order {order_id}.")
        removed, placed = [line_id], _order(order, await _lines(tx, order_id))
    if removed:
        await emit(tx, events.OrderLineRemoved(order_id=order_id, line_ids=removed, total_minor=placed.total_minor),
                   subject=order_id, order_id=order_id)
    return placed


async def _leave_pending(tx: Tx, identity: Identity, order_id: str, status: OrderStatus, action: str,
                         cancel_reason: str | None = None) -> tuple[Row, bool]:
    """Move a PENDING order to `status` in one conditional UPDATE, which also locks its row (and sets
    updated_at: the column's onupdate applies on the data path as in Core).

    Returns the order and whether it changed. An order already in `status` is returned unchanged (a retried
    step); a missing order, another customer's, or one in the other final status is refused as before.
    """
    values: dict[str, Any] = {"w_id": order_id, "status": status, **_visible_to(identity)}
    if cancel_reason is not None:
        values["cancel_reason"] = cancel_reason
    changed = await tx.fetchrow(_LEAVE_PENDING, values)
    if changed is not None:
        return changed, True
    order = await _lock_order(tx, identity, order_id)
    if order["status"] != status and not (status == OrderStatus.CONFIRMED and order["status"] in _FULFILMENT):
        # Never PENDING here: the UPDATE above would have matched it, and no order goes back to PENDING.
        _require_pending(order, action)
    return order, False


async def cancel_order(tx: Tx, identity: Identity, order_id: str, reason: str) -> PlacedOrder:
    order, changed = await _leave_pending(tx, identity, order_id, OrderStatus.CANCELLED, "cancel",
                                          cancel_reason=reason)
    await compensate(tx, order_id)
    if changed:
        await emit(tx, events.OrderCancelled(order_id=order_id, reason=reason), subject=order_id, order_id=order_id)
    return _order(order, await _lines(tx, order_id))


async def confirm_order(tx: Tx, identity: Identity, order_id: str) -> PlacedOrder:
    order, changed = await _leave_pending(tx, identity, order_id, OrderStatus.CONFIRMED, "confirm")
    lines = await _lines(tx, order_id)
    if changed and not lines:
        # Raising rolls the transaction back, and with it the UPDATE: the order stays PENDING.
        raise Conflict(f"Cannot confirm: order {order['id']} has no lines.", order_status=OrderStatus.PENDING)
    await enter_step(tx, order_id)
    placed = _order(order, lines)
    if changed:
        await emit(tx, events.OrderConfirmed(order_id=order_id, customer_id=placed.customer_id,
                                             total_minor=placed.total_minor, currency=placed.currency),
                   subject=order_id, order_id=order_id)
    return placed


# --- what the order learns from the bus ----------------------------------------------------------------------

# The parcel's events and the order status each one brings, with the event the order then publishes.
_PARCEL_STATUS: dict[str, tuple[OrderStatus, type[events.OrderShipped | events.OrderDelivered]]] = {
    events.ShipmentDispatched.event_type(): (OrderStatus.SHIPPED, events.OrderShipped),
    events.ShipmentInTransit.event_type(): (OrderStatus.SHIPPED, events.OrderShipped),
    events.ShipmentDelivered.event_type(): (OrderStatus.DELIVERED, events.OrderDelivered),
}
_MOVE_FORWARD = (update(orders)
                 .where(orders.c.id == bindparam("w_id"), orders.c.status.in_(bindparam("w_from", expanding=True)))
                 .returning(orders.c.id))
_STATUS = select(orders.c.status).where(orders.c.id == bindparam("w_id"))


class OrderNotConfirmedYet(Exception):
    """A parcel's event for an order the saga has not confirmed yet: the consumer tries again later."""


async def follow_parcel(tx: Tx, received: list[events.CloudEvent]) -> None:
    """A shipment's progress moves its order to SHIPPED, then DELIVERED; never back (a late or repeated event,
    in_transit after delivered, changes nothing), never a cancelled order."""
    for event in received:
        await _follow(tx, event)


async def _follow(tx: Tx, event: events.CloudEvent) -> None:
    move = _PARCEL_STATUS.get(event.type)
    if move is None:
        return  # shipment.created / cancelled: the saga's business, not the order's status
    status, announcement = move
    parcel = events.payload(event, events.CATALOGUE[event.type])
    assert isinstance(parcel, events.ShipmentEvent)
    earlier = _FULFILMENT[:_FULFILMENT.index(status)]
    if await tx.fetchrow(_MOVE_FORWARD, {"w_id": parcel.order_id, "status": status, "w_from": list(earlier)}):
        await emit(tx, announcement(order_id=parcel.order_id, shipment_id=parcel.shipment_id),
                   subject=parcel.order_id, order_id=parcel.order_id)
        return
    current = await tx.fetchval(_STATUS, {"w_id": parcel.order_id})
    if current in (None, OrderStatus.PENDING):
        raise OrderNotConfirmedYet(f"order {parcel.order_id} is {current or 'unknown'}: the parcel's "
                                   f"{event.type} waits for its confirmation")


_RECORD_TIMELINE = conflict_insert(timeline).on_conflict_do_nothing()
_SAGA_FAMILY = "saga"  # the saga's events (saga.*), whose subject is the saga's id
_SAGAS_OF_ORDER = (select(timeline.c.subject)
                   .where(timeline.c.order_id == bindparam("w_id"), timeline.c.type.like(f"{_SAGA_FAMILY}.%")))
_TIMELINE = (select(timeline.c.event_id, timeline.c.type, timeline.c.source, timeline.c.subject, timeline.c.time,
                    timeline.c.data)
             .where((timeline.c.order_id == bindparam("w_id"))
                    | (timeline.c.order_id.is_(None) & timeline.c.subject.in_(_SAGAS_OF_ORDER.scalar_subquery())))
             .order_by(timeline.c.time, timeline.c.event_id).limit(bindparam("w_limit")))
_ORDER_VISIBLE = select(orders.c.id).where(orders.c.id == bindparam("w_id"), _VISIBLE)
# An order's timeline holds a few dozen events (a saga's and its services'); a bound all the same.
TIMELINE_LIMIT = 1000


async def record_in_timeline(tx: Tx, received: list[events.CloudEvent]) -> None:
    """Every event about an order (its `orderid`), from every service, kept for the order's timeline; a saga's
    event from before its order existed is kept too (joined to the order through the saga's id)."""
    await tx.executemany(_RECORD_TIMELINE, [
        {"event_id": event.id, "order_id": event.orderid, "type": event.type, "source": event.source,
         "subject": event.subject, "time": event.time, "data": event.data}
        for event in received if event.orderid is not None or event.type.startswith(f"{_SAGA_FAMILY}.")])


async def order_timeline(tx: Tx, identity: Identity, order_id: str) -> list[Row]:
    """The order's events in the order they happened; a customer sees only their own order's (404 otherwise)."""
    if await tx.fetchval(_ORDER_VISIBLE, {"w_id": order_id, **_visible_to(identity)}) is None:
        raise _missing(order_id)
    return await tx.fetch(_TIMELINE, {"w_id": order_id, "w_limit": TIMELINE_LIMIT})
