"""carrier_service routes: parse, call the service layer, shape the response."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from starlette.responses import Response

from carrier_service import schemas, service
from shared.auth import Admin, Caller, Privileged
from shared.dependencies import Paging, SessionDep
from shared.idempotency import Idempotent
from shared.schemas import CountryCode, Page

router = APIRouter(prefix="/api/carriers", tags=["carriers"])
OrderIdPath = Annotated[str, Path(max_length=64)]
CarrierIdPath = Annotated[str, Path(max_length=64)]


# Assignment routes first: "/assignments/..." must never be read as a carrier id.
@router.post("/assignments", status_code=201, response_model=schemas.AssignmentOut)
async def assign_carrier(body: schemas.AssignmentRequest, identity: Privileged, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.assign_carrier, body)


@router.get("/assignments/{order_id}", response_model=schemas.AssignmentOut)
async def get_assignment(order_id: OrderIdPath, identity: Privileged, session: SessionDep) -> Any:
    return await service.get_assignment(session, order_id)


@router.post("/assignments/{order_id}/release", response_model=schemas.ReleaseOut)
async def release_assignment(order_id: OrderIdPath, identity: Privileged, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.release_assignment, order_id)


@router.post("", status_code=201, response_model=schemas.CarrierOut)
async def create_carrier(body: schemas.CarrierCreate, identity: Admin, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.create_carrier, body)


@router.get("", response_model=Page[schemas.CarrierOut])
async def list_carriers(
    session: SessionDep,
    page: Paging,
    identity: Caller,
    country: CountryCode | None = None,
    active: bool | None = None,
) -> Page[schemas.CarrierOut]:
    carriers, total = await service.list_carriers(session, country, active, page.limit, page.offset)
    return page.page([schemas.CarrierOut.model_validate(c) for c in carriers], total)


@router.get("/{carrier_id}", response_model=schemas.CarrierOut)
async def get_carrier(carrier_id: CarrierIdPath, identity: Caller, session: SessionDep) -> Any:
    return await service.get_carrier(session, carrier_id)


@router.patch("/{carrier_id}", response_model=schemas.CarrierOut)
async def update_carrier(carrier_id: CarrierIdPath, body: schemas.CarrierUpdate, identity: Admin,
                         idempotent: Idempotent) -> Response:
    return await idempotent.run(service.update_carrier, carrier_id, body)
