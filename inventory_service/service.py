"""inventory_service domain rules: stock is never oversold; an order's lines are allocated all or none."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from inventory_service.models import Allocation, AllocationLine, AllocationStatus, Product
from inventory_service.schemas import AllocationLineIn, ProductCreate, ProductUpdate
from shared.errors import Conflict, InvalidRequest, NotFound


async def create_product(session: AsyncSession, data: ProductCreate) -> Product:
    if await session.get(Product, data.sku) is not None:
        raise Conflict(f"Product {data.sku} already exists.", sku=data.sku)
    product = Product(**data.model_dump(), reserved=0)
    try:
        # A concurrent create of the same sku waits on the primary key, then fails here.
        async with session.begin_nested():
            session.add(product)
            await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"Product {data.sku} already exists.", sku=data.sku) from exc
    return product


async def get_product(session: AsyncSession, sku: str) -> Product:
    product = (await session.execute(
        select(Product).where(Product.sku == sku).execution_options(populate_existing=True))).scalar_one_or_none()
    if product is None:
        raise NotFound(f"Product {sku} does not exist.", sku=sku)
    return product


async def list_products(
    session: AsyncSession, skus: list[str] | None, limit: int, offset: int
) -> tuple[list[Product], int]:
    query = select(Product)
    if skus is not None:
        query = query.where(Product.sku.in_(skus))
    total = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
    rows = await session.execute(query.order_by(Product.sku).limit(limit).offset(offset))
    return list(rows.scalars()), int(total)


async def update_product(session: AsyncSession, sku: str, data: ProductUpdate) -> Product:
    changes = {k: v for k, v in data.model_dump().items() if v is not None}
    result = await session.execute(update(Product).where(Product.sku == sku).values(**changes))
    if cast(CursorResult[Any], result).rowcount != 1:
        raise NotFound(f"Product {sku} does not exist.", sku=sku)
    return await get_product(session, sku)


async def restock(session: AsyncSession, sku: str, quantity: int) -> Product:
    # Arithmetic in SQL, so a restock never overwrites a concurrent allocation's reservation.
    result = await session.execute(
        update(Product).where(Product.sku == sku).values(on_hand=Product.on_hand + quantity))
    if cast(CursorResult[Any], result).rowcount != 1:
        raise NotFound(f"Product {sku} does not exist.", sku=sku)
    return await get_product(session, sku)


async def _find_allocation(session: AsyncSession, order_id: str, for_update: bool = False) -> Allocation | None:
    query = select(Allocation).where(Allocation.order_id == order_id).execution_options(populate_existing=True)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


def _already_allocated(order_id: str, status: str) -> Conflict:
    return Conflict(f"Order {order_id} already has an allocation ({status}); an order is allocated once.",
                    order_id=order_id, allocation_status=status)


async def allocate_stock(session: AsyncSession, order_id: str, lines: list[AllocationLineIn]) -> Allocation:
    """Reserve every line or none: any refusal raises, and the caller's transaction rolls back."""
    wanted = Counter[str]()
    for line in lines:
        wanted[line.sku] += line.quantity
    existing = await _find_allocation(session, order_id)
    if existing is not None:
        raise _already_allocated(order_id, existing.status)

    products = {p.sku: p for p in (await session.execute(
        select(Product).where(Product.sku.in_(wanted)))).scalars()}
    unknown = sorted(set(wanted) - set(products))
    if unknown:
        raise InvalidRequest(f"Unknown sku: {', '.join(unknown)}.", unknown_skus=unknown)
    currencies = sorted({p.currency for p in products.values()})
    if len(currencies) > 1:
        raise InvalidRequest(f"The lines mix currencies ({', '.join(currencies)}).", currencies=currencies)

    allocation = Allocation(order_id=order_id, status=AllocationStatus.ALLOCATED, currency=currencies[0], lines=[])
    try:
        # Claim the order first: a concurrent allocation for it waits on the unique index, then fails here.
        async with session.begin_nested():
            session.add(allocation)
            await session.flush()
    except IntegrityError as exc:
        raise _already_allocated(order_id, AllocationStatus.ALLOCATED) from exc

    # One conditional UPDATE per sku, in sku order so two orders never wait on each other's rows.
    # PostgreSQL re-checks the WHERE after waiting for a concurrent writer; SQLite runs one writer at a time.
    for sku in sorted(wanted):
        quantity = wanted[sku]
        result = await session.execute(
            update(Product)
            .where(Product.sku == sku, Product.on_hand - Product.reserved >= quantity)
            .values(reserved=Product.reserved + quantity)
            .execution_options(synchronize_session=False))
        if cast(CursorResult[Any], result).rowcount != 1:
            on_hand, reserved = (await session.execute(
                select(Product.on_hand, Product.reserved).where(Product.sku == sku))).one()
            available = on_hand - reserved
            raise Conflict(f"Insufficient stock for {sku}: requested {quantity}, available {available}.",
                           sku=sku, requested=quantity, available=available)
        product = products[sku]
        allocation.lines.append(AllocationLine(sku=sku, quantity=quantity, unit_price_minor=product.unit_price_minor,
                                               weight_grams=product.weight_grams))
    await session.flush()
    return allocation


async def get_allocation(session: AsyncSession, order_id: str) -> Allocation:
    allocation = await _find_allocation(session, order_id)
    if allocation is None:
        raise NotFound(f"Order {order_id} has no allocation.", order_id=order_id)
    return allocation


async def release_allocation(session: AsyncSession, order_id: str) -> str:
    """Give an order's stock back, once. Returns RELEASED, or NONE when the order never held stock.

    With nothing to release, an empty RELEASED allocation is recorded, so an allocate for the order
    that arrives late (the saga timed out waiting for it and compensated) is refused instead of
    holding stock for a cancelled order.
    """
    allocation = await _find_allocation(session, order_id, for_update=True)
    if allocation is None:
        marker = Allocation(order_id=order_id, status=AllocationStatus.RELEASED, released_at=datetime.now(UTC),
                            lines=[])
        try:
            async with session.begin_nested():
                session.add(marker)
                await session.flush()
            return AllocationStatus.NONE
        except IntegrityError:
            # An allocation committed meanwhile: release that one.
            allocation = await _find_allocation(session, order_id, for_update=True)
            if allocation is None:
                raise
    if allocation.status == AllocationStatus.RELEASED:
        return AllocationStatus.RELEASED if allocation.lines else AllocationStatus.NONE
    for line in sorted(allocation.lines, key=lambda line: line.sku):
        await session.execute(
            update(Product).where(Product.sku == line.sku).values(reserved=Product.reserved - line.quantity)
            .execution_options(synchronize_session=False))
    allocation.status = AllocationStatus.RELEASED
    allocation.released_at = datetime.now(UTC)
    await session.flush()
    return AllocationStatus.RELEASED
