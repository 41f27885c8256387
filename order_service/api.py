"""order_service routes: parse, call the service layer, shape the response."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import JSONResponse

from order_service import service
from order_service.schemas import LinesAdd, OrderCancel, OrderCreate, OrderOut
from shared.auth import Caller, Privileged
from shared.idempotency import run_idempotent
from shared.schemas import Page

router = APIRouter(prefix="/api/orders", tags=["orders"])


@router.post("", status_code=201, response_model=OrderOut)
async def create_order(body: OrderCreate, request: Request, identity: Caller) -> JSONResponse:
    async def work(session: AsyncSession) -> OrderOut:
        return await service.create_order(session, identity, body)

    return await run_idempotent(request, identity, work, status_code=201)


@router.get("", response_model=Page[OrderOut])
async def list_orders(
    request: Request,
    identity: Caller,
    customer_id: Annotated[str | None, Query(max_length=64)] = None,
    status: Literal["PENDING", "CONFIRMED", "CANCELLED"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Page[OrderOut]:
    async with request.app.state.db.transaction() as session:
        orders, total = await service.list_orders(session, identity, customer_id, status, limit, offset)
        return Page(items=orders, total=total, limit=limit, offset=offset)


@router.get("/{order_id}", response_model=OrderOut)
async def get_order(order_id: str, request: Request, identity: Caller) -> OrderOut:
    async with request.app.state.db.transaction() as session:
        return await service.get_order(session, identity, order_id)


@router.post("/{order_id}/lines", response_model=OrderOut)
async def add_lines(order_id: str, body: LinesAdd, request: Request, identity: Privileged) -> JSONResponse:
    async def work(session: AsyncSession) -> OrderOut:
        return await service.add_lines(session, identity, order_id, body.lines)

    return await run_idempotent(request, identity, work)


@router.delete("/{order_id}/lines", response_model=OrderOut)
async def remove_all_lines(order_id: str, request: Request, identity: Privileged) -> JSONResponse:
    async def work(session: AsyncSession) -> OrderOut:
        return await service.remove_lines(session, identity, order_id)

    return await run_idempotent(request, identity, work)


@router.delete("/{order_id}/lines/{line_id}", response_model=OrderOut)
async def remove_line(order_id: str, line_id: str, request: Request, identity: Privileged) -> JSONResponse:
    async def work(session: AsyncSession) -> OrderOut:
        return await service.remove_lines(session, identity, order_id, line_id)

    return await run_idempotent(request, identity, work)


@router.post("/{order_id}/cancel", response_model=OrderOut)
async def cancel_order(
    order_id: str, request: Request, identity: Caller, body: OrderCancel | None = None
) -> JSONResponse:
    reason = body.reason if body else "cancelled"

    async def work(session: AsyncSession) -> OrderOut:
        return await service.cancel_order(session, identity, order_id, reason)

    return await run_idempotent(request, identity, work)


@router.post("/{order_id}/confirm", response_model=OrderOut)
async def confirm_order(order_id: str, request: Request, identity: Privileged) -> JSONResponse:
    async def work(session: AsyncSession) -> OrderOut:
        return await service.confirm_order(session, identity, order_id)

    return await run_idempotent(request, identity, work)
