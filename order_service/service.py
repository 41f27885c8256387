"""order_service domain rules: an order is PENDING until confirmed or cancelled; lines only while PENDING."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from order_service.models import Order, OrderLine, OrderStatus
from order_service.schemas import LineIn, OrderCreate
from shared.auth import Identity
from shared.errors import Conflict, Forbidden, InvalidRequest, NotFound


async def create_order(session: AsyncSession, identity: Identity, data: OrderCreate) -> Order:
    if identity.is_privileged:
        if not data.customer_id:
            raise InvalidRequest("customer_id is required when an admin or a service creates an order.")
        customer_id = data.customer_id
    else:
        if data.customer_id not in (None, identity.subject):
            raise Forbidden("A customer may only create orders for themselves.")
        customer_id = identity.subject
    order = Order(
        customer_id=customer_id,
        currency=data.currency,
        status=OrderStatus.PENDING,
        shipping_address=data.shipping_address.model_dump() if data.shipping_address else None,
        lines=[],
    )
    session.add(order)
    await session.flush()
    return order


async def get_order(session: AsyncSession, identity: Identity, order_id: str, for_update: bool = False) -> Order:
    query = select(Order).where(Order.id == order_id)
    if for_update:
        query = query.with_for_update()
    order = (await session.execute(query)).scalar_one_or_none()
    # Another customer's order is reported as missing, so ids cannot be probed.
    if order is None or not identity.may_access(order.customer_id):
        raise NotFound(f"Order {order_id} does not exist.")
    return order


async def list_orders(
    session: AsyncSession, identity: Identity, customer_id: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[Order], int]:
    query = select(Order)
    if not identity.is_privileged:
        customer_id = identity.subject
    if customer_id:
        query = query.where(Order.customer_id == customer_id)
    if status:
        query = query.where(Order.status == status)
    total = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
    rows = await session.execute(query.order_by(Order.created_at.desc(), Order.id).limit(limit).offset(offset))
    return list(rows.scalars()), int(total)


def _require_pending(order: Order, action: str) -> None:
    if order.status != OrderStatus.PENDING:
        raise Conflict(f"Cannot {action}: order {order.id} is {order.status}.", order_status=order.status)


async def add_lines(session: AsyncSession, identity: Identity, order_id: str, lines: list[LineIn]) -> Order:
    order = await get_order(session, identity, order_id, for_update=True)
    _require_pending(order, "add lines")
    position = max((line.position for line in order.lines), default=0)
    for offset, line in enumerate(lines, start=1):
        order.lines.append(OrderLine(position=position + offset, sku=line.sku, quantity=line.quantity,
                                     unit_price_minor=line.unit_price_minor))
    await session.flush()
    return order


async def remove_lines(session: AsyncSession, identity: Identity, order_id: str, line_id: str | None = None) -> Order:
    """Remove one line, or all of them (the saga's compensation of 'create order line')."""
    order = await get_order(session, identity, order_id, for_update=True)
    if line_id is None:
        if order.status == OrderStatus.CONFIRMED:
            raise Conflict(f"Cannot remove lines: order {order.id} is CONFIRMED.", order_status=order.status)
        order.lines.clear()
    else:
        _require_pending(order, "remove a line")
        line = next((line for line in order.lines if line.id == line_id), None)
        if line is None:
            raise NotFound(f"Line {line_id} is not part of order {order_id}.")
        order.lines.remove(line)
    await session.flush()
    return order


async def cancel_order(session: AsyncSession, identity: Identity, order_id: str, reason: str) -> Order:
    order = await get_order(session, identity, order_id, for_update=True)
    if order.status == OrderStatus.CANCELLED:
        return order
    _require_pending(order, "cancel")
    order.status = OrderStatus.CANCELLED
    order.cancel_reason = reason
    await session.flush()
    return order


async def confirm_order(session: AsyncSession, identity: Identity, order_id: str) -> Order:
    order = await get_order(session, identity, order_id, for_update=True)
    if order.status == OrderStatus.CONFIRMED:
        return order
    _require_pending(order, "confirm")
    if not order.lines:
        raise Conflict(f"Cannot confirm: order {order.id} has no lines.", order_status=order.status)
    order.status = OrderStatus.CONFIRMED
    await session.flush()
    return order
