"""carrier_service routes: parse, call the service layer, shape the response."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from starlette.responses import Response

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
from shared.dependencies import Paging, SessionDep
from shared.idempotency import Idempotent
from shared.schemas import CountryCode, Page

router = APIRouter(prefix="/api/carriers", tags=["carriers"])
OrderIdPath = Annotated[str, Path(max_length=64)]
CarrierIdPath = Annotated[str, Path(max_length=64)]


# Assignment routes first: "/assignments/..." must never be read as a carrier id.
@router.post("/assignments", status_code=201, response_model=AssignmentOut)
async def assign_carrier(body: AssignmentRequest, identity: Privileged, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.assign_carrier, body)


@router.get("/assignments/{order_id}", response_model=AssignmentOut)
async def get_assignment(order_id: OrderIdPath, identity: Privileged, session: SessionDep) -> Any:
    return await service.get_assignment(session, order_id)


@router.post("/assignments/{order_id}/release", response_model=ReleaseOut)
async def release_assignment(order_id: OrderIdPath, identity: Privileged, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.release_assignment, order_id)


@router.post("", status_code=201, response_model=CarrierOut)
async def create_carrier(body: CarrierCreate, identity: Admin, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.create_carrier, body)


@router.get("", response_model=Page[CarrierOut])
async def list_carriers(
    session: SessionDep,
    page: Paging,
    identity: Caller,
    country: CountryCode | None = None,
    active: bool | None = None,
) -> Page[CarrierOut]:
    carriers, total = await service.list_carriers(session, country, active, page.limit, page.offset)
    return page.page([CarrierOut.model_validate(c) for c in carriers], total)


@router.get("/{carrier_id}", response_model=CarrierOut)
async def get_carrier(carrier_id: CarrierIdPath, identity: Caller, session: SessionDep) -> Any:
    return await service.get_carrier(session, carrier_id)


@router.patch("/{carrier_id}", response_model=CarrierOut)
async def update_carrier(carrier_id: CarrierIdPath, body: CarrierUpdate, identity: Admin,
                         idempotent: Idempotent) -> Response:
    return await idempotent.run(service.update_carrier, carrier_id, body)
