"""inventory_service domain rules: stock is never oversold; an order's lines are allocated all or none."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, insert, select, update

from inventory_service.models import (
    Allocation,
    AllocationLine,
    AllocationStatus,
    HeldLine,
    HeldStock,
    Product,
    Release,
    ReleaseStatus,
    StockedProduct,
)
from inventory_service.schemas import AllocationLineIn, ProductCreate, ProductUpdate
from shared import events
from shared.bus import emit
from shared.db import Row, Tx, conflict_insert, new_id, table_of, utc_now
from shared.errors import Conflict, DomainError, InvalidRequest, NotFound
from shared.fence import compensate, enter_step
from shared.paging import visible_page

products = table_of(Product)
allocations = table_of(Allocation)
allocation_lines = table_of(AllocationLine)

# What can still be allocated: the stock rules and the catalogue's `available` are this one expression.
available_stock = products.c.on_hand - products.c.reserved
_PRODUCT_COLUMNS = tuple(products.c)
_HELD_COLUMNS = (allocation_lines.c.sku, allocation_lines.c.quantity, allocation_lines.c.unit_price_minor,
                 allocation_lines.c.weight_grams)


def _product(row: Row) -> StockedProduct:
    return StockedProduct(**{column.key: row[column.key] for column in _PRODUCT_COLUMNS},
                          available=row["on_hand"] - row["reserved"])


def _held(allocation: Row, lines: Sequence[Row | HeldLine]) -> HeldStock:
    held = tuple(line if isinstance(line, HeldLine) else
                 HeldLine(sku=line["sku"], quantity=line["quantity"], unit_price_minor=line["unit_price_minor"],
                          weight_grams=line["weight_grams"]) for line in lines)
    return HeldStock(
        id=allocation["id"], order_id=allocation["order_id"], status=AllocationStatus(allocation["status"]),
        currency=allocation["currency"], created_at=allocation["created_at"], released_at=allocation["released_at"],
        lines=held, total_minor=sum(line.quantity * line.unit_price_minor for line in held),
        total_weight_grams=sum(line.quantity * line.weight_grams for line in held))


def _unknown(sku: str) -> NotFound:
    return NotFound(f"Product {sku} does not exist.", sku=sku)


# Built once and executed with parameters: compiled once, prepared once per connection.
_CREATE_PRODUCT = conflict_insert(products).on_conflict_do_nothing(index_elements=[products.c.sku]).returning(
    *products.c)
_PRODUCT = select(*products.c).where(products.c.sku == bindparam("w_sku"))
_UPDATE_PRODUCT = update(products).where(products.c.sku == bindparam("w_sku")).returning(*products.c)
# Arithmetic in SQL, so a restock never overwrites a concurrent allocation's reservation.
_RESTOCK = (update(products).where(products.c.sku == bindparam("w_sku"))
            .values(on_hand=products.c.on_hand + bindparam("w_quantity", type_=products.c.on_hand.type))
            .returning(*products.c))
# An order's allocation row, claimed by INSERT ... ON CONFLICT DO NOTHING on the unique order_id. Its currency
# is its products', read by the INSERT from one of them (a_sku).
_CLAIM = (conflict_insert(allocations).values(
    id=bindparam("a_id"), order_id=bindparam("a_order_id"), status=bindparam("a_status"),
    currency=select(products.c.currency).where(products.c.sku == bindparam("a_sku")).scalar_subquery(),
    created_at=bindparam("a_created_at"), released_at=bindparam("a_released_at", type_=allocations.c.released_at.type))
    .on_conflict_do_nothing(index_elements=[allocations.c.order_id]))
_STATUS = select(allocations.c.status).where(allocations.c.order_id == bindparam("w_order_id"))
# One conditional UPDATE per sku: PostgreSQL re-checks the WHERE after waiting for a concurrent writer; SQLite
# runs one writer at a time. It returns the price and weight the line keeps (later catalogue changes leave it).
_RESERVE = (update(products)
            .where(products.c.sku == bindparam("w_sku"),
                   available_stock >= bindparam("w_quantity", type_=products.c.reserved.type))
            .values(reserved=products.c.reserved + bindparam("w_quantity", type_=products.c.reserved.type))
            .returning(products.c.currency, products.c.unit_price_minor, products.c.weight_grams))
_INSERT_LINES = insert(allocation_lines)
_ALLOCATION = (select(allocations, *_HELD_COLUMNS)
               .select_from(allocations.outerjoin(allocation_lines,
                                                  allocation_lines.c.allocation_id == allocations.c.id))
               .where(allocations.c.order_id == bindparam("w_order_id")).order_by(allocation_lines.c.sku))
# Release the order's allocation if it is allocated: a concurrent release waits on its row, then finds it released.
_MARK_RELEASED = (update(allocations)
                  .where(allocations.c.order_id == bindparam("w_order_id"),
                         allocations.c.status == AllocationStatus.ALLOCATED)
                  .values(status=AllocationStatus.RELEASED, released_at=bindparam("w_now"))
                  .returning(allocations.c.id))
_HAS_LINES = (select(allocation_lines.c.id)
              .join(allocations, allocations.c.id == allocation_lines.c.allocation_id)
              .where(allocations.c.order_id == bindparam("w_order_id")).limit(1))
_HELD_SKUS = (select(allocation_lines.c.sku, allocation_lines.c.quantity)
              .where(allocation_lines.c.allocation_id == bindparam("w_allocation_id"))
              .order_by(allocation_lines.c.sku))
_GIVE_BACK = (update(products).where(products.c.sku == bindparam("w_sku"))
              .values(reserved=products.c.reserved - bindparam("w_quantity", type_=products.c.reserved.type)))


async def create_product(tx: Tx, data: ProductCreate) -> StockedProduct:
    # A concurrent create of the same sku waits on the primary key, then inserts nothing.
    created = await tx.fetchrow(_CREATE_PRODUCT, {**data.model_dump(), "reserved": 0})
    if created is None:
        raise Conflict(f"Product {data.sku} already exists.", sku=data.sku)
    await emit_product_created(tx, created)
    return _product(created)


async def emit_product_created(tx: Tx, product: Row) -> None:
    """A new product on the bus (created here or by the seed)."""
    await emit(tx, events.ProductCreated(
        sku=product["sku"], product_name=product["name"], unit_price_minor=product["unit_price_minor"],
        currency=product["currency"], weight_grams=product["weight_grams"], on_hand=product["on_hand"]),
        subject=product["sku"])


async def emit_product_updated(tx: Tx, product: Row) -> None:
    """A product's catalogue fields as they are now, on the bus (a PATCH, or the seed bringing them back)."""
    await emit(tx, events.ProductUpdated(
        sku=product["sku"], product_name=product["name"], unit_price_minor=product["unit_price_minor"],
        currency=product["currency"], weight_grams=product["weight_grams"]), subject=product["sku"])


async def get_product(tx: Tx, sku: str) -> StockedProduct:
    product = await tx.fetchrow(_PRODUCT, {"w_sku": sku})
    if product is None:
        raise _unknown(sku)
    return _product(product)


async def list_products(tx: Tx, skus: list[str] | None, limit: int, offset: int) -> tuple[list[StockedProduct], int]:
    """One page of the catalogue and the number of products matching (one statement: the orchestrator's pricing
    lookup, every saga, is such a page)."""
    match = [products.c.sku.in_(skus)] if skus is not None else []
    rows, total = await visible_page(tx, products, match, (products.c.sku,), limit, offset)
    return [_product(row) for row in rows], total


async def update_product(tx: Tx, sku: str, data: ProductUpdate) -> StockedProduct:
    changes = {k: v for k, v in data.model_dump().items() if v is not None}
    updated = await tx.fetchrow(_UPDATE_PRODUCT, {"w_sku": sku, **changes})
    if updated is None:
        raise _unknown(sku)
    await emit_product_updated(tx, updated)
    return _product(updated)


async def restock(tx: Tx, sku: str, quantity: int) -> StockedProduct:
    restocked = await tx.fetchrow(_RESTOCK, {"w_sku": sku, "w_quantity": quantity})
    if restocked is None:
        raise _unknown(sku)
    await emit(tx, events.ProductRestocked(sku=sku, quantity=quantity, on_hand=restocked["on_hand"]), subject=sku)
    return _product(restocked)


def _already_allocated(order_id: str, status: str) -> Conflict:
    return Conflict(f"Order {order_id} already has an allocation ({status}); an order is allocated once.",
                    order_id=order_id, allocation_status=status)


async def _claim_order(tx: Tx, allocation: dict[str, Any], sku: str) -> bool:
    """Insert the order's allocation row; False when the order has one already (allocated or released).

    A concurrent claim of the same order waits on the unique order_id until the first one's transaction
    ends: after a commit it claims nothing, after a rollback it claims the order.
    """
    return bool(await tx.execute(_CLAIM, {f"a_{key}": value for key, value in allocation.items()} | {"a_sku": sku}))


async def _allocation_refused(tx: Tx, wanted: Counter[str], short_sku: str) -> DomainError:
    """Why a claimed allocation is refused: the first rule it breaks, in the order they apply (every sku
    exists; one currency; enough stock of each, `short_sku` being the first one that is short).

    Only a refusal pays for this read; the caller raises the answer, which rolls back what it reserved.
    """
    found = {row["sku"]: row for row in await tx.fetch(
        select(products.c.sku, products.c.currency, available_stock.label("available"))
        .where(products.c.sku.in_(wanted)))}
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        return InvalidRequest(f"Unknown sku: {', '.join(unknown)}.", unknown_skus=unknown)
    currencies = sorted({row["currency"] for row in found.values()})
    if len(currencies) > 1:
        return _mixed_currencies(currencies)
    quantity, left = wanted[short_sku], found[short_sku]["available"]
    return Conflict(f"Insufficient stock for {short_sku}: requested {quantity}, available {left}.",
                    sku=short_sku, requested=quantity, available=left)


def _mixed_currencies(currencies: list[str]) -> InvalidRequest:
    return InvalidRequest(f"The lines mix currencies ({', '.join(currencies)}).", currencies=currencies)


async def allocate_stock(tx: Tx, order_id: str, lines: list[AllocationLineIn]) -> HeldStock:
    """Reserve every line or none: any refusal raises, and the caller's transaction rolls back.

    The usual case is one INSERT to claim the order, one conditional UPDATE per sku and one INSERT of the
    lines; why a refusal is refused is read only then.
    """
    wanted = Counter[str]()
    for line in lines:
        wanted[line.sku] += line.quantity

    # Claim the order first, then its stock (as a release takes the allocation, then the stock): a concurrent
    # allocation or compensation of the order waits on the unique index, and neither waits for the other's
    # stock rows while holding its own (an unknown sku or a mix of currencies is refused below, which rolls the
    # claim back).
    await enter_step(tx, order_id)
    skus = sorted(wanted)
    allocation = {"id": new_id(), "order_id": order_id, "status": AllocationStatus.ALLOCATED,
                  "created_at": utc_now(), "released_at": None}
    if not await _claim_order(tx, allocation, skus[0]):
        status = await tx.fetchval(_STATUS, {"w_order_id": order_id})
        raise _already_allocated(order_id, status or AllocationStatus.ALLOCATED)

    # In sku order, so two orders never wait on each other's rows.
    held: list[HeldLine] = []
    currencies = set[str]()
    for sku in skus:
        product = await tx.fetchrow(_RESERVE, {"w_sku": sku, "w_quantity": wanted[sku]})
        if product is None:  # unknown or short
            raise await _allocation_refused(tx, wanted, short_sku=sku)
        currencies.add(product["currency"])
        held.append(HeldLine(sku=sku, quantity=wanted[sku], unit_price_minor=product["unit_price_minor"],
                             weight_grams=product["weight_grams"]))
    if len(currencies) > 1:
        raise _mixed_currencies(sorted(currencies))
    await tx.executemany(_INSERT_LINES, [
        {"id": new_id(), "allocation_id": allocation["id"], "sku": line.sku, "quantity": line.quantity,
         "unit_price_minor": line.unit_price_minor, "weight_grams": line.weight_grams} for line in held])
    await emit(tx, events.StockAllocated(order_id=order_id, lines={line.sku: line.quantity for line in held}),
               subject=order_id, order_id=order_id)
    return _held({**allocation, "currency": currencies.pop()}, held)


async def get_allocation(tx: Tx, order_id: str) -> HeldStock:
    """The allocation and its lines in one statement: one row per line, or one row without a line."""
    rows = await tx.fetch(_ALLOCATION, {"w_order_id": order_id})
    if not rows:
        raise NotFound(f"Order {order_id} has no allocation.", order_id=order_id)
    return _held(rows[0], [row for row in rows if row["sku"] is not None])


async def release_allocation(tx: Tx, order_id: str) -> Release:
    """Give an order's stock back, once. RELEASED, or NONE when the order never held stock.

    The order's fence is closed first (shared/fence.py), so an allocate for the order that arrives late (the
    saga timed out waiting for it and compensated) is refused instead of holding stock for a cancelled order;
    one in flight is waited for, then released.
    """
    await compensate(tx, order_id)
    released = await tx.fetchval(_MARK_RELEASED, {"w_order_id": order_id, "w_now": utc_now()})
    if released is None:
        has_lines = await tx.fetchrow(_HAS_LINES, {"w_order_id": order_id}) is not None
        return Release(order_id, ReleaseStatus.RELEASED if has_lines else ReleaseStatus.NONE)
    # In sku order, as allocations take them, so the two never wait on each other's rows; one round trip.
    held = await tx.fetch(_HELD_SKUS, {"w_allocation_id": released})
    await tx.executemany(_GIVE_BACK, [{"w_sku": line["sku"], "w_quantity": line["quantity"]} for line in held])
    # Only the release that gave stock back says so: a repeat, or an order that never held stock, emits nothing.
    await emit(tx, events.StockReleased(order_id=order_id, lines={line["sku"]: line["quantity"] for line in held}),
               subject=order_id, order_id=order_id)
    return Release(order_id, ReleaseStatus.RELEASED)
