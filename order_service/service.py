"""order_service domain rules: an order is PENDING until confirmed or cancelled; lines only while PENDING.

The statements are SQLAlchemy Core on the route's session, not the ORM's unit of work: every saga calls
these functions, and the ORM's flush, loaders and instrumentation cost more CPU than the statements do.
A change to an order's lines first locks the order's row, and a status change updates that row, so the
two are serialised. The lines are read only after the lock is held: a statement that locks the order and
reads its lines at once would read them as they were before it waited for the lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import ColumnElement, Row, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from order_service.models import Base, Order, OrderLine, OrderStatus
from order_service.schemas import LineIn, OrderCreate, OrderOut
from shared.auth import Identity
from shared.db import new_id
from shared.errors import Conflict, Forbidden, InvalidRequest, NotFound
from shared.fence import compensate, enter_step

orders = Base.metadata.tables[Order.__tablename__]
order_lines = Base.metadata.tables[OrderLine.__tablename__]


def _order_out(order: Mapping[Any, Any], lines: Iterable[Mapping[Any, Any]]) -> OrderOut:
    line_outs = [{**line, "line_total_minor": line["quantity"] * line["unit_price_minor"]} for line in lines]
    total_minor = sum(line["line_total_minor"] for line in line_outs)
    return OrderOut.model_validate({**order, "total_minor": total_minor, "lines": line_outs})


def _visible_to(identity: Identity) -> list[ColumnElement[bool]]:
    """Identity.may_access as a WHERE clause."""
    return [] if identity.is_privileged else [orders.c.customer_id == identity.subject]


def _missing(order_id: str) -> NotFound:
    # Another customer's order is reported as missing, so ids cannot be probed.
    return NotFound(f"Order {order_id} does not exist.")


# Built once and executed with parameters: compiled once, no bind parameters built per call.
_INSERT_ORDER = insert(orders).returning(*orders.c)

async def _lock_order(session: AsyncSession, identity: Identity, order_id: str) -> Row[Any]:
    query = select(orders).where(orders.c.id == order_id, *_visible_to(identity)).with_for_update()
    order = (await session.execute(query)).one_or_none()
    if order is None:
        raise _missing(order_id)
    return order


async def _lines(session: AsyncSession, order_id: str) -> list[Mapping[Any, Any]]:
    query = (select(order_lines.c.id, order_lines.c.position, order_lines.c.sku, order_lines.c.quantity,
                    order_lines.c.unit_price_minor)
             .where(order_lines.c.order_id == order_id).order_by(order_lines.c.position))
    return list((await session.execute(query)).mappings())


async def create_order(session: AsyncSession, identity: Identity, data: OrderCreate) -> OrderOut:
    if identity.is_privileged:
        if not data.customer_id:
            raise InvalidRequest("customer_id is required when an admin or a service creates an order.")
        customer_id = data.customer_id
    else:
        if data.customer_id not in (None, identity.subject):
            raise Forbidden("A customer may only create orders for themselves.")
        customer_id = identity.subject
    order = (await session.execute(_INSERT_ORDER, {
        "customer_id": customer_id,
        "currency": data.currency,
        "status": OrderStatus.PENDING,
        "shipping_address": data.shipping_address.model_dump() if data.shipping_address else None,
    })).one()
    return _order_out(order._mapping, [])


async def get_order(session: AsyncSession, identity: Identity, order_id: str) -> OrderOut:
    """The order and its lines in one statement: one row per line, or one row without a line."""
    query = (select(orders, order_lines.c.id.label("line_id"), order_lines.c.sku, order_lines.c.quantity,
                    order_lines.c.unit_price_minor)
             .outerjoin(order_lines, order_lines.c.order_id == orders.c.id)
             .where(orders.c.id == order_id, *_visible_to(identity))
             .order_by(order_lines.c.position))
    rows = (await session.execute(query)).all()
    if not rows:
        raise _missing(order_id)
    lines = [{"id": row.line_id, "sku": row.sku, "quantity": row.quantity, "unit_price_minor": row.unit_price_minor}
             for row in rows if row.line_id is not None]
    return _order_out(rows[0]._mapping, lines)


async def list_orders(
    session: AsyncSession, identity: Identity, customer_id: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[OrderOut], int]:
    query = select(orders)
    if not identity.is_privileged:
        customer_id = identity.subject
    if customer_id:
        query = query.where(orders.c.customer_id == customer_id)
    if status:
        query = query.where(orders.c.status == status)
    total = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
    page = (await session.execute(
        query.order_by(orders.c.created_at.desc(), orders.c.id).limit(limit).offset(offset))).all()
    lines_of: dict[str, list[Mapping[Any, Any]]] = {order.id: [] for order in page}
    if page:
        lines = await session.execute(
            select(order_lines.c.order_id, order_lines.c.id, order_lines.c.sku, order_lines.c.quantity,
                   order_lines.c.unit_price_minor)
            .where(order_lines.c.order_id.in_(lines_of)).order_by(order_lines.c.position))
        for line in lines.mappings():
            lines_of[line["order_id"]].append(line)
    return [_order_out(order._mapping, lines_of[order.id]) for order in page], int(total)


def _require_pending(order: Row[Any], action: str) -> None:
    if order.status != OrderStatus.PENDING:
        raise Conflict(f"Cannot {action}: order {order.id} is {order.status}.", order_status=order.status)


async def add_lines(session: AsyncSession, identity: Identity, order_id: str, lines: list[LineIn]) -> OrderOut:
    order = await _lock_order(session, identity, order_id)
    await enter_step(session, order_id)
    _require_pending(order, "add lines")
    existing = await _lines(session, order_id)
    position = max((line["position"] for line in existing), default=0)
    added = [{"id": new_id(), "order_id": order_id, "position": position + offset, "sku": line.sku,
              "quantity": line.quantity, "unit_price_minor": line.unit_price_minor}
             for offset, line in enumerate(lines, start=1)]
    # The rows as parameters of one INSERT (executemany), not .values(rows): that one is compiled anew each time.
    await session.execute(insert(order_lines), added)
    return _order_out(order._mapping, [*existing, *added])


async def remove_lines(
    session: AsyncSession, identity: Identity, order_id: str, line_id: str | None = None
) -> OrderOut:
    """Remove one line, or all of them (the saga's compensation of 'add order lines', which closes the order's
    fence: shared/fence.py)."""
    order = await _lock_order(session, identity, order_id)
    if line_id is None:
        await compensate(session, order_id)
        if order.status == OrderStatus.CONFIRMED:
            raise Conflict(f"Cannot remove lines: order {order.id} is CONFIRMED.", order_status=order.status)
        await session.execute(delete(order_lines).where(order_lines.c.order_id == order_id))
        return _order_out(order._mapping, [])
    _require_pending(order, "remove a line")
    removed = await session.execute(delete(order_lines).where(
        order_lines.c.id == line_id, order_lines.c.order_id == order_id).returning(order_lines.c.id))
    if removed.one_or_none() is None:
        raise NotFound(f"Line {line_id} is not part of order {order_id}.")
    return _order_out(order._mapping, await _lines(session, order_id))


async def _leave_pending(session: AsyncSession, identity: Identity, order_id: str, status: str, action: str,
                         **values: Any) -> tuple[Row[Any], bool]:
    """Move a PENDING order to `status` in one conditional UPDATE, which also locks its row (and sets
    updated_at: Core applies the column's onupdate as the ORM did).

    Returns the order and whether it changed. An order already in `status` is returned unchanged (a retried
    step); a missing order, another customer's, or one in the other final status is refused as before.
    """
    changed = (await session.execute(
        update(orders).where(orders.c.id == order_id, orders.c.status == OrderStatus.PENDING, *_visible_to(identity))
        .values(status=status, **values).returning(*orders.c))).one_or_none()
    if changed is not None:
        return changed, True
    order = await _lock_order(session, identity, order_id)
    if order.status != status:
        # Never PENDING here: the UPDATE above would have matched it, and no order goes back to PENDING.
        _require_pending(order, action)
    return order, False


async def cancel_order(session: AsyncSession, identity: Identity, order_id: str, reason: str) -> OrderOut:
    order, _ = await _leave_pending(session, identity, order_id, OrderStatus.CANCELLED, "cancel",
                                    cancel_reason=reason)
    await compensate(session, order_id)
    return _order_out(order._mapping, await _lines(session, order_id))


async def confirm_order(session: AsyncSession, identity: Identity, order_id: str) -> OrderOut:
    order, changed = await _leave_pending(session, identity, order_id, OrderStatus.CONFIRMED, "confirm")
    lines = await _lines(session, order_id)
    if changed and not lines:
        # Raising rolls the transaction back, and with it the UPDATE: the order stays PENDING.
        raise Conflict(f"Cannot confirm: order {order.id} has no lines.", order_status=OrderStatus.PENDING)
    await enter_step(session, order_id)
    return _order_out(order._mapping, lines)
