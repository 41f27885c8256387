"""inventory_service routes: parse, call the service layer, shape the response."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import JSONResponse

from inventory_service import service
from inventory_service.schemas import (
    AllocationCreate,
    AllocationOut,
    ProductCreate,
    ProductOut,
    ProductUpdate,
    ReleaseOut,
    Restock,
)
from shared.auth import Admin, Privileged
from shared.errors import InvalidRequest
from shared.idempotency import run_idempotent
from shared.schemas import ORDER_ID_PATTERN, SKU_PATTERN, Page

router = APIRouter(prefix="/api/inventory", tags=["inventory"])
SkuPath = Annotated[str, Path(pattern=SKU_PATTERN)]
OrderIdPath = Annotated[str, Path(pattern=ORDER_ID_PATTERN)]


def _product(product: object) -> ProductOut:
    return ProductOut.model_validate(product)


def _allocation(allocation: object) -> AllocationOut:
    return AllocationOut.model_validate(allocation)


def _sku_list(skus: str | None) -> list[str] | None:
    if skus is None:
        return None
    wanted = [s.strip() for s in skus.split(",") if s.strip()]
    bad = [s for s in wanted if not re.fullmatch(SKU_PATTERN, s)]
    if bad or len(wanted) > 500:
        raise InvalidRequest("skus must be a comma-separated list of at most 500 skus.", invalid_skus=bad[:10])
    return wanted


# The catalogue is public: no token needed (the gateway marks these two routes public too).
@router.get("/products", response_model=Page[ProductOut])
async def list_products(
    request: Request,
    skus: Annotated[str | None, Query(max_length=40_000, description="Comma-separated skus.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Page[ProductOut]:
    wanted = _sku_list(skus)
    async with request.app.state.db.transaction() as session:
        products, total = await service.list_products(session, wanted, limit, offset)
    return Page(items=[_product(p) for p in products], total=total, limit=limit, offset=offset)


@router.get("/products/{sku}", response_model=ProductOut)
async def get_product(sku: SkuPath, request: Request) -> ProductOut:
    async with request.app.state.db.transaction() as session:
        return _product(await service.get_product(session, sku))


@router.post("/products", status_code=201, response_model=ProductOut)
async def create_product(body: ProductCreate, request: Request, identity: Admin) -> JSONResponse:
    async def work(session: AsyncSession) -> ProductOut:
        return _product(await service.create_product(session, body))

    return await run_idempotent(request, identity, work, status_code=201)


@router.patch("/products/{sku}", response_model=ProductOut)
async def update_product(sku: SkuPath, body: ProductUpdate, request: Request, identity: Admin) -> JSONResponse:
    async def work(session: AsyncSession) -> ProductOut:
        return _product(await service.update_product(session, sku, body))

    return await run_idempotent(request, identity, work)


@router.post("/products/{sku}/restock", response_model=ProductOut)
async def restock(sku: SkuPath, body: Restock, request: Request, identity: Admin) -> JSONResponse:
    async def work(session: AsyncSession) -> ProductOut:
        return _product(await service.restock(session, sku, body.quantity))

    return await run_idempotent(request, identity, work)


@router.post("/allocations", status_code=201, response_model=AllocationOut)
async def allocate_stock(body: AllocationCreate, request: Request, identity: Privileged) -> JSONResponse:
    async def work(session: AsyncSession) -> AllocationOut:
        return _allocation(await service.allocate_stock(session, body.order_id, body.lines))

    return await run_idempotent(request, identity, work, status_code=201)


@router.get("/allocations/{order_id}", response_model=AllocationOut)
async def get_allocation(order_id: OrderIdPath, request: Request, identity: Privileged) -> AllocationOut:
    async with request.app.state.db.transaction() as session:
        return _allocation(await service.get_allocation(session, order_id))


@router.post("/allocations/{order_id}/release", response_model=ReleaseOut)
async def release_allocation(order_id: OrderIdPath, request: Request, identity: Privileged) -> JSONResponse:
    async def work(session: AsyncSession) -> ReleaseOut:
        status = await service.release_allocation(session, order_id)
        return ReleaseOut(order_id=order_id, status=status)  # type: ignore[arg-type]

    return await run_idempotent(request, identity, work)
