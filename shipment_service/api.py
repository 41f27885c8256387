"""shipment_service routes: parse, call the service layer, shape the response."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import JSONResponse

from shared.auth import Caller, Privileged
from shared.idempotency import run_idempotent
from shared.schemas import Page
from shipment_service import service
from shipment_service.schemas import (
    OrderShipmentCancelOut,
    ShipmentCancel,
    ShipmentCreate,
    ShipmentOut,
    StatusChange,
    StatusName,
)

router = APIRouter(prefix="/api/shipments", tags=["shipments"])
IdPath = Annotated[str, Path(max_length=64)]


def _out(shipment: object) -> ShipmentOut:
    return ShipmentOut.model_validate(shipment)


@router.post("", status_code=201, response_model=ShipmentOut)
async def create_shipment(body: ShipmentCreate, request: Request, identity: Privileged) -> JSONResponse:
    async def work(session: AsyncSession) -> ShipmentOut:
        return _out(await service.create_shipment(session, body))

    return await run_idempotent(request, identity, work, status_code=201)


@router.get("", response_model=Page[ShipmentOut])
async def list_shipments(
    request: Request,
    identity: Caller,
    order_id: Annotated[str | None, Query(max_length=64)] = None,
    customer_id: Annotated[str | None, Query(max_length=64)] = None,
    status: StatusName | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Page[ShipmentOut]:
    async with request.app.state.db.transaction() as session:
        shipments, total = await service.list_shipments(session, identity, order_id, customer_id, status, limit,
                                                        offset)
        return Page(items=[_out(s) for s in shipments], total=total, limit=limit, offset=offset)


@router.get("/tracking/{tracking_number}", response_model=ShipmentOut)
async def track_shipment(tracking_number: IdPath, request: Request, identity: Caller) -> ShipmentOut:
    async with request.app.state.db.transaction() as session:
        return _out(await service.get_by_tracking_number(session, identity, tracking_number.upper()))


@router.post("/orders/{order_id}/cancel", response_model=OrderShipmentCancelOut)
async def cancel_order_shipment(
    order_id: IdPath, request: Request, identity: Privileged, body: ShipmentCancel | None = None
) -> JSONResponse:
    reason = body.reason if body else "order compensated"

    async def work(session: AsyncSession) -> OrderShipmentCancelOut:
        cancelled = await service.cancel_order_shipment(session, order_id, reason)
        if cancelled is None:
            return OrderShipmentCancelOut(order_id=order_id, status="NONE")
        return OrderShipmentCancelOut(order_id=order_id, status="CANCELLED", shipment=_out(cancelled))

    return await run_idempotent(request, identity, work)


@router.get("/{shipment_id}", response_model=ShipmentOut)
async def get_shipment(shipment_id: IdPath, request: Request, identity: Caller) -> ShipmentOut:
    async with request.app.state.db.transaction() as session:
        return _out(await service.get_shipment(session, identity, shipment_id))


@router.post("/{shipment_id}/cancel", response_model=ShipmentOut)
async def cancel_shipment(
    shipment_id: IdPath, request: Request, identity: Caller, body: ShipmentCancel | None = None
) -> JSONResponse:
    reason = body.reason if body else "cancelled"

    async def work(session: AsyncSession) -> ShipmentOut:
        return _out(await service.cancel_shipment(session, identity, shipment_id, reason))

    return await run_idempotent(request, identity, work)


@router.post("/{shipment_id}/status", response_model=ShipmentOut)
async def change_status(shipment_id: IdPath, body: StatusChange, request: Request,
                        identity: Privileged) -> JSONResponse:
    async def work(session: AsyncSession) -> ShipmentOut:
        return _out(await service.change_status(session, identity, shipment_id, body.status, body.note))

    return await run_idempotent(request, identity, work)
