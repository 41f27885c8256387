"""inventory_service domain rules: stock is never oversold; an order's lines are allocated all or none."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import RowMapping, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from inventory_service.models import Allocation, AllocationLine, AllocationStatus, Product
from inventory_service.schemas import AllocationLineIn, ProductCreate, ProductUpdate
from shared.db import conflict_insert, new_id, rowcount, utc_now
from shared.errors import Conflict, DomainError, InvalidRequest, NotFound
from shared.fence import compensate, enter_step

# The hot paths use the tables directly (Core statements): no unit of work, no instances loaded to change a column.
products = cast(Table, Product.__table__)
allocations = cast(Table, Allocation.__table__)
allocation_lines = cast(Table, AllocationLine.__table__)

# What can still be allocated: the stock rules and the catalogue's `available` are this one expression.
available_stock = products.c.on_hand - products.c.reserved


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
) -> tuple[list[RowMapping], int]:
    """One page of the catalogue, as rows with every ProductOut field, and the number of products matching."""
    match = [products.c.sku.in_(skus)] if skus is not None else []
    rows = (await session.execute(
        select(*products.c, available_stock.label("available")).where(*match)
        .order_by(products.c.sku).limit(limit).offset(offset))).mappings().all()
    if len(rows) < limit and (rows or offset == 0):
        # A short page that reaches the end of the matches tells the total: no count needed (the
        # orchestrator's pricing lookup, every saga, is such a page).
        return list(rows), offset + len(rows)
    total = (await session.execute(select(func.count()).select_from(products).where(*match))).scalar_one()
    return list(rows), int(total)


async def update_product(session: AsyncSession, sku: str, data: ProductUpdate) -> Product:
    changes = {k: v for k, v in data.model_dump().items() if v is not None}
    result = await session.execute(update(Product).where(Product.sku == sku).values(**changes))
    if rowcount(result) != 1:
        raise NotFound(f"Product {sku} does not exist.", sku=sku)
    return await get_product(session, sku)


async def restock(session: AsyncSession, sku: str, quantity: int) -> Product:
    # Arithmetic in SQL, so a restock never overwrites a concurrent allocation's reservation.
    result = await session.execute(
        update(Product).where(Product.sku == sku).values(on_hand=Product.on_hand + quantity))
    if rowcount(result) != 1:
        raise NotFound(f"Product {sku} does not exist.", sku=sku)
    return await get_product(session, sku)


def _already_allocated(order_id: str, status: str) -> Conflict:
    return Conflict(f"Order {order_id} already has an allocation ({status}); an order is allocated once.",
                    order_id=order_id, allocation_status=status)


def _allocation_view(allocation: Mapping[Any, Any], lines: Sequence[Mapping[Any, Any]]) -> dict[str, Any]:
    """An allocation with its lines (in sku order) and their totals: every AllocationOut field."""
    return {**allocation, "lines": lines,
            "total_minor": sum(line["quantity"] * line["unit_price_minor"] for line in lines),
            "total_weight_grams": sum(line["quantity"] * line["weight_grams"] for line in lines)}


async def _claim_order(session: AsyncSession, allocation: dict[str, Any]) -> bool:
    """Insert the order's allocation row; False when the order has one already (allocated or released).

    A concurrent claim of the same order waits on the unique order_id until the first one's transaction
    ends: after a commit it claims nothing, after a rollback it claims the order.
    """
    result = await session.execute(conflict_insert(session, allocations).values(**allocation)
                                   .on_conflict_do_nothing(index_elements=[allocations.c.order_id]))
    return bool(rowcount(result))


async def _allocation_status(session: AsyncSession, order_id: str) -> str | None:
    return cast(str | None, (await session.execute(
        select(allocations.c.status).where(allocations.c.order_id == order_id))).scalar_one_or_none())


async def _allocation_refused(session: AsyncSession, wanted: Counter[str], short_sku: str) -> DomainError:
    """Why a claimed allocation is refused: the first rule it breaks, in the order they apply (every sku
    exists; one currency; enough stock of each, `short_sku` being the first one that is short).

    Only a refusal pays for this read; the caller raises the answer, which rolls back what it reserved.
    """
    found = {row.sku: row for row in (await session.execute(
        select(products.c.sku, products.c.currency, available_stock.label("available"))
        .where(products.c.sku.in_(wanted)))).all()}
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        return InvalidRequest(f"Unknown sku: {', '.join(unknown)}.", unknown_skus=unknown)
    currencies = sorted({row.currency for row in found.values()})
    if len(currencies) > 1:
        return _mixed_currencies(currencies)
    quantity, left = wanted[short_sku], found[short_sku].available
    return Conflict(f"Insufficient stock for {short_sku}: requested {quantity}, available {left}.",
                    sku=short_sku, requested=quantity, available=left)


def _mixed_currencies(currencies: list[str]) -> InvalidRequest:
    return InvalidRequest(f"The lines mix currencies ({', '.join(currencies)}).", currencies=currencies)


async def allocate_stock(session: AsyncSession, order_id: str, lines: list[AllocationLineIn]) -> dict[str, Any]:
    """Reserve every line or none: any refusal raises, and the caller's transaction rolls back.

    Returns the new allocation's AllocationOut fields. The usual case is one INSERT to claim the order, one
    conditional UPDATE per sku and one INSERT of the lines; why a refusal is refused is read only then.
    """
    wanted = Counter[str]()
    for line in lines:
        wanted[line.sku] += line.quantity

    # Claim the order first, then its stock (as a release takes the allocation, then the stock): a concurrent
    # allocation or compensation of the order waits on the unique index, and neither waits for the other's
    # stock rows while holding its own. The allocation's currency is its products', read by the INSERT from
    # one of them (an unknown sku or a mix of currencies is refused below, which rolls the claim back).
    await enter_step(session, order_id)
    skus = sorted(wanted)
    allocation = {"id": new_id(), "order_id": order_id, "status": AllocationStatus.ALLOCATED,
                  "currency": select(products.c.currency).where(products.c.sku == skus[0]).scalar_subquery(),
                  "created_at": utc_now(), "released_at": None}
    if not await _claim_order(session, allocation):
        status = await _allocation_status(session, order_id)
        raise _already_allocated(order_id, status or AllocationStatus.ALLOCATED)

    # One conditional UPDATE per sku, in sku order so two orders never wait on each other's rows.
    # PostgreSQL re-checks the WHERE after waiting for a concurrent writer; SQLite runs one writer at a time.
    # Each returns the price and weight the line keeps (a snapshot: later catalogue changes leave it alone).
    held: list[dict[str, Any]] = []
    currencies = set[str]()
    for sku in skus:
        quantity = wanted[sku]
        product = (await session.execute(
            update(products).where(products.c.sku == sku, available_stock >= quantity)
            .values(reserved=products.c.reserved + quantity)
            .returning(products.c.currency, products.c.unit_price_minor, products.c.weight_grams))).one_or_none()
        if product is None:  # unknown or short
            raise await _allocation_refused(session, wanted, short_sku=sku)
        currencies.add(product.currency)
        held.append({"sku": sku, "quantity": quantity, "unit_price_minor": product.unit_price_minor,
                     "weight_grams": product.weight_grams})
    if len(currencies) > 1:
        raise _mixed_currencies(sorted(currencies))
    # Several rows in one round trip (and one cached statement, which a multi-row .values() is not).
    await session.execute(insert(allocation_lines),
                          [{"id": new_id(), "allocation_id": allocation["id"], **line} for line in held])
    return _allocation_view({**allocation, "currency": currencies.pop()}, held)


async def get_allocation(session: AsyncSession, order_id: str) -> dict[str, Any]:
    allocation = (await session.execute(
        select(allocations.c.id, allocations.c.order_id, allocations.c.status, allocations.c.currency,
               allocations.c.created_at, allocations.c.released_at)
        .where(allocations.c.order_id == order_id))).mappings().one_or_none()
    if allocation is None:
        raise NotFound(f"Order {order_id} has no allocation.", order_id=order_id)
    lines = (await session.execute(
        select(allocation_lines.c.sku, allocation_lines.c.quantity, allocation_lines.c.unit_price_minor,
               allocation_lines.c.weight_grams)
        .where(allocation_lines.c.allocation_id == allocation["id"])
        .order_by(allocation_lines.c.sku))).mappings().all()
    return _allocation_view(allocation, lines)


async def _mark_released(session: AsyncSession, order_id: str) -> str | None:
    """Release the order's allocation if it is allocated; its id, or None (no allocation, or released already).

    A concurrent release of the same allocation waits on its row, then finds it released.
    """
    return cast(str | None, (await session.execute(
        update(allocations)
        .where(allocations.c.order_id == order_id, allocations.c.status == AllocationStatus.ALLOCATED)
        .values(status=AllocationStatus.RELEASED, released_at=utc_now())
        .returning(allocations.c.id))).scalar_one_or_none())


@dataclass(frozen=True)
class Release:
    """What a release did: RELEASED when the order held stock, NONE when it never did."""

    order_id: str
    status: str


async def release_allocation(session: AsyncSession, order_id: str) -> Release:
    """Give an order's stock back, once. RELEASED, or NONE when the order never held stock.

    The order's fence is closed first (shared/fence.py), so an allocate for the order that arrives late (the
    saga timed out waiting for it and compensated) is refused instead of holding stock for a cancelled order;
    one in flight is waited for, then released.
    """
    await compensate(session, order_id)
    released = await _mark_released(session, order_id)
    if released is None:
        has_lines = (await session.execute(
            select(allocation_lines.c.id).join(allocations, allocations.c.id == allocation_lines.c.allocation_id)
            .where(allocations.c.order_id == order_id).limit(1))).first() is not None
        return Release(order_id, AllocationStatus.RELEASED if has_lines else AllocationStatus.NONE)
    lines = (await session.execute(
        select(allocation_lines.c.sku, allocation_lines.c.quantity)
        .where(allocation_lines.c.allocation_id == released).order_by(allocation_lines.c.sku))).all()
    # In sku order, as allocations take them, so the two never wait on each other's rows; one round trip.
    if lines:
        await session.execute(
            update(products).where(products.c.sku == bindparam("line_sku"))
            .values(reserved=products.c.reserved - bindparam("line_quantity")),
            [{"line_sku": line.sku, "line_quantity": line.quantity} for line in lines])
    return Release(order_id, AllocationStatus.RELEASED)
