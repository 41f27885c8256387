"""carrier_service routes: parse, call the service layer, shape the response."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import JSONResponse

from carrier_service import service
from carrier_service.schemas import (
    AssignmentOut,
    AssignmentRequest,
    CarrierCreate,
    CarrierOut,
    CarrierUpdate,
    ReleaseOut,
)
from shared.auth import Admin, Caller, Privileged
from shared.idempotency import run_idempotent
from shared.schemas import CountryCode, Page

router = APIRouter(prefix="/api/carriers", tags=["carriers"])
OrderIdPath = Annotated[str, Path(max_length=64)]


def _carrier(carrier: object) -> CarrierOut:
    return CarrierOut.model_validate(carrier)


def _assignment(assignment: object) -> AssignmentOut:
    return AssignmentOut.model_validate(assignment)


# Assignment routes first: "/assignments/..." must never be read as a carrier id.
@router.post("/assignments", status_code=201, response_model=AssignmentOut)
async def assign_carrier(body: AssignmentRequest, request: Request, identity: Privileged) -> JSONResponse:
    async def work(session: AsyncSession) -> AssignmentOut:
        return _assignment(await service.assign_carrier(session, body))

    return await run_idempotent(request, identity, work, status_code=201)


@router.get("/assignments/{order_id}", response_model=AssignmentOut)
async def get_assignment(order_id: OrderIdPath, request: Request, identity: Privileged) -> AssignmentOut:
    async with request.app.state.db.transaction() as session:
        return _assignment(await service.get_assignment(session, order_id))


@router.post("/assignments/{order_id}/release", response_model=ReleaseOut)
async def release_assignment(order_id: OrderIdPath, request: Request, identity: Privileged) -> JSONResponse:
    async def work(session: AsyncSession) -> ReleaseOut:
        released = await service.release_assignment(session, order_id)
        if released is None:
            return ReleaseOut(order_id=order_id, status="NONE")
        return ReleaseOut(order_id=order_id, status="RELEASED", assignment=_assignment(released))

    return await run_idempotent(request, identity, work)


@router.post("", status_code=201, response_model=CarrierOut)
async def create_carrier(body: CarrierCreate, request: Request, identity: Admin) -> JSONResponse:
    async def work(session: AsyncSession) -> CarrierOut:
        return _carrier(await service.create_carrier(session, body))

    return await run_idempotent(request, identity, work, status_code=201)


@router.get("", response_model=Page[CarrierOut])
async def list_carriers(
    request: Request,
    identity: Caller,
    country: CountryCode | None = None,
    active: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Page[CarrierOut]:
    async with request.app.state.db.transaction() as session:
        carriers, total = await service.list_carriers(session, country, active, limit, offset)
        return Page(items=[_carrier(c) for c in carriers], total=total, limit=limit, offset=offset)


@router.get("/{carrier_id}", response_model=CarrierOut)
async def get_carrier(carrier_id: Annotated[str, Path(max_length=64)], request: Request,
                      identity: Caller) -> CarrierOut:
    async with request.app.state.db.transaction() as session:
        return _carrier(await service.get_carrier(session, carrier_id))


@router.patch("/{carrier_id}", response_model=CarrierOut)
async def update_carrier(carrier_id: Annotated[str, Path(max_length=64)], body: CarrierUpdate, request: Request,
                         identity: Admin) -> JSONResponse:
    async def work(session: AsyncSession) -> CarrierOut:
        return _carrier(await service.update_carrier(session, carrier_id, body))

    return await run_idempotent(request, identity, work)
