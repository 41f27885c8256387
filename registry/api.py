"""HTTP routes of the Eureka REST protocol (under /eureka) and the health checks.

Routes only parse, call InstanceRegistry and shape the answer: XML by default (py-eureka-client
parses nothing else), JSON when the request's Accept contains "json", as the real server does.
All handlers are `async def` so that they run on the event loop, the registry's only thread.
"""

from __future__ import annotations

import hmac
import json
from typing import Annotated, Any
from xml.etree.ElementTree import Element

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from registry import schemas
from registry.service import InstanceNotFound, InstanceRegistry, InstanceStatus, RegisteredInstance, RegistryView
from shared.errors import problem

_basic = HTTPBasic(realm="eureka", auto_error=False)


class Unauthenticated(Exception):
    """No or wrong registry credentials (answered 401 by the app's handler)."""


async def require_credentials(
    request: Request, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
) -> None:
    """Every /eureka call, reads included, carries the registry's basic credentials (as Spring Security's
    Eureka asks): registrations are who the fleet sends traffic to, and the listing is the fleet's map."""
    settings = request.app.state.settings
    if credentials is None:
        raise Unauthenticated
    user_ok = hmac.compare_digest(credentials.username.encode(), settings.eureka_username.encode())
    password_ok = hmac.compare_digest(credentials.password.encode(), settings.eureka_password.encode())
    if not (user_ok and password_ok):
        raise Unauthenticated


router = APIRouter()
eureka = APIRouter(prefix="/eureka", tags=["eureka"], dependencies=[Depends(require_credentials)])

# Epoch milliseconds of the client's last change to its registration.
LastDirtyTimestamp = Annotated[int | None, Query(alias="lastDirtyTimestamp")]


def bad_request(detail: str, errors: list[schemas.FieldError] | None = None) -> Response:
    """400 problem+json: the protocol's answer to malformed input (not FastAPI's 422)."""
    if errors:
        return problem(400, "Bad request", detail, "bad-request", errors=[error.model_dump() for error in errors])
    return problem(400, "Bad request", detail, "bad-request")


def not_found(exc: InstanceNotFound) -> Response:
    """404 problem+json for an unknown instance: every route's answer to InstanceNotFound (registry/app.py)."""
    return problem(404, "Not found", f"no such instance: {exc}", "not-found")


# async: FastAPI runs a plain `def` dependency on a worker thread, a thread hop on every request.
async def get_registry(request: Request) -> InstanceRegistry:
    registry: InstanceRegistry = request.app.state.registry
    return registry


RegistryDep = Annotated[InstanceRegistry, Depends(get_registry)]


def wants_json(request: Request) -> bool:
    return "json" in request.headers.get("accept", "").lower()


def negotiated(request: Request, xml: Element, as_json: dict[str, Any]) -> Response:
    if wants_json(request):
        return JSONResponse(as_json)
    return Response(schemas.to_xml(xml), media_type=schemas.XML_MEDIA_TYPE)


def applications_answer(request: Request, view: RegistryView) -> Response:
    """A full registry, a delta or a VIP query, as `<applications>`."""
    return negotiated(request, schemas.applications_element(view), schemas.applications_json(view))


def instance_answer(request: Request, instance: RegisteredInstance) -> Response:
    return negotiated(request, schemas.instance_element(instance), {"instance": schemas.instance_json(instance)})


def parse_status(value: str | None, parameter: str) -> InstanceStatus:
    try:
        return InstanceStatus((value or "").strip().upper())
    except ValueError:
        allowed = ", ".join(status.value for status in InstanceStatus)
        raise schemas.BadRequest(f"{parameter} must be one of {allowed}, not {value!r}") from None


# ---------- health ----------


@router.get("/health", tags=["health"])
@router.get("/actuator/health", tags=["health"], include_in_schema=False)
async def health() -> dict[str, str]:
    return {"status": "UP"}


# ---------- registration and leases ----------


@eureka.post("/apps/{app}", status_code=204)
async def register_instance(app: str, request: Request, registry: RegistryDep) -> Response:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # nested past the parser's depth too
        raise schemas.BadRequest('the body must be JSON: {"instance": {...}}') from None
    registry.register(schemas.parse_registration(body, path_app=app))
    return Response(status_code=204)


@eureka.put("/apps/{app}/{instance_id}")
async def send_heartbeat(
    app: str,
    instance_id: str,
    registry: RegistryDep,
    status: str | None = None,
    last_dirty_timestamp: LastDirtyTimestamp = None,
) -> Response:
    # `status` is accepted and ignored, as by the real server (see InstanceRegistry.renew).
    registry.renew(app, instance_id, last_dirty_timestamp=last_dirty_timestamp)
    return Response(status_code=200)


@eureka.delete("/apps/{app}/{instance_id}")
async def cancel_instance(app: str, instance_id: str, registry: RegistryDep) -> Response:
    registry.cancel(app, instance_id)
    return Response(status_code=200)


@eureka.put("/apps/{app}/{instance_id}/status")
async def override_status(
    app: str,
    instance_id: str,
    registry: RegistryDep,
    value: str | None = None,
    last_dirty_timestamp: LastDirtyTimestamp = None,
) -> Response:
    status = parse_status(value, "value")
    if status == InstanceStatus.UNKNOWN:
        raise schemas.BadRequest("to remove an override, DELETE it")
    registry.override_status(app, instance_id, status, last_dirty_timestamp=last_dirty_timestamp)
    return Response(status_code=200)


@eureka.delete("/apps/{app}/{instance_id}/status")
async def remove_status_override(
    app: str,
    instance_id: str,
    registry: RegistryDep,
    value: str | None = None,
    last_dirty_timestamp: LastDirtyTimestamp = None,
) -> Response:
    new_status = None if value is None else parse_status(value, "value")
    registry.remove_status_override(app, instance_id, new_status, last_dirty_timestamp=last_dirty_timestamp)
    return Response(status_code=200)


# ---------- queries ----------
# /apps/delta is declared before /apps/{app} so that "delta" is not taken for an app name.


@eureka.get("/apps")
@eureka.get("/apps/", include_in_schema=False)
async def get_applications(request: Request, registry: RegistryDep) -> Response:
    return applications_answer(request, registry.applications())


@eureka.get("/apps/delta")
async def get_delta(request: Request, registry: RegistryDep) -> Response:
    return applications_answer(request, registry.delta())


@eureka.get("/apps/{app}")
async def get_application(app: str, request: Request, registry: RegistryDep) -> Response:
    application = registry.application(app)
    if application is None:
        return problem(404, "Not found", f"no such application: {app.upper()}", "not-found")
    return negotiated(
        request,
        schemas.application_element(application),
        {"application": schemas.application_json(application)},
    )


@eureka.get("/apps/{app}/{instance_id}")
async def get_app_instance(app: str, instance_id: str, request: Request, registry: RegistryDep) -> Response:
    return instance_answer(request, registry.instance(app, instance_id))


@eureka.get("/instances/{instance_id}")
async def get_instance(instance_id: str, request: Request, registry: RegistryDep) -> Response:
    return instance_answer(request, registry.find_instance(instance_id))


@eureka.get("/vips/{vip}")
async def get_vip(vip: str, request: Request, registry: RegistryDep) -> Response:
    return applications_answer(request, registry.by_vip(vip))


@eureka.get("/svips/{vip}")
async def get_secure_vip(vip: str, request: Request, registry: RegistryDep) -> Response:
    return applications_answer(request, registry.by_vip(vip, secure=True))


router.include_router(eureka)
