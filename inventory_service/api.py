"""inventory_service routes: parse, call the service layer, shape the response."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from inventory_service import schemas, service
from shared.auth import Admin, Privileged
from shared.dependencies import Paging, SessionDep
from shared.errors import InvalidRequest
from shared.idempotency import Idempotent
from shared.schemas import ORDER_ID_PATTERN, SKU_PATTERN, Page

router = APIRouter(prefix="/api/inventory", tags=["inventory"])
SkuPath = Annotated[str, Path(pattern=SKU_PATTERN)]
OrderIdPath = Annotated[str, Path(pattern=ORDER_ID_PATTERN)]


def _sku_list(skus: str | None) -> list[str] | None:
    if skus is None:
        return None
    wanted = [s.strip() for s in skus.split(",") if s.strip()]
    bad = [s for s in wanted if not re.fullmatch(SKU_PATTERN, s)]
    if bad or len(wanted) > 500:
        raise InvalidRequest("skus must be a comma-separated list of at most 500 skus.", invalid_skus=bad[:10])
    return wanted


# The catalogue is public: no token needed (the gateway marks these two routes public too).
@router.get("/products", response_model=Page[schemas.ProductOut])
async def list_products(
    session: SessionDep,
    page: Paging,
    skus: Annotated[str | None, Query(max_length=40_000, description="Comma-separated skus.")] = None,
) -> Page[schemas.ProductOut]:
    products, total = await service.list_products(session, _sku_list(skus), page.limit, page.offset)
    return page.page([schemas.ProductOut.model_validate(p) for p in products], total)


@router.get("/products/{sku}", response_model=schemas.ProductOut)
async def get_product(sku: SkuPath, session: SessionDep) -> Any:
    return await service.get_product(session, sku)


@router.post("/products", status_code=201, response_model=schemas.ProductOut)
async def create_product(body: schemas.ProductCreate, identity: Admin, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.create_product, body)


@router.patch("/products/{sku}", response_model=schemas.ProductOut)
async def update_product(sku: SkuPath, body: schemas.ProductUpdate, identity: Admin,
                         idempotent: Idempotent) -> Response:
    return await idempotent.run(service.update_product, sku, body)


@router.post("/products/{sku}/restock", response_model=schemas.ProductOut)
async def restock(sku: SkuPath, body: schemas.Restock, identity: Admin, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.restock, sku, body.quantity)


@router.post("/allocations", status_code=201, response_model=schemas.AllocationOut)
async def allocate_stock(body: schemas.AllocationCreate, identity: Privileged, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.allocate_stock, body.order_id, body.lines)


@router.get("/allocations/{order_id}", response_model=schemas.AllocationOut)
async def get_allocation(order_id: OrderIdPath, identity: Privileged, session: SessionDep) -> Any:
    return await service.get_allocation(session, order_id)


@router.post("/allocations/{order_id}/release", response_model=schemas.ReleaseOut)
async def release_allocation(order_id: OrderIdPath, identity: Privileged, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.release_allocation, order_id)
