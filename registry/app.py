"""App factory of the registry: the FastAPI app, its in-memory registry and the eviction task."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry import api, schemas
from registry.schemas import FieldError
from registry.service import InstanceNotFound, InstanceRegistry
from registry.settings import RegistrySettings
from shared.body_limit import BodyLimitMiddleware
from shared.errors import problem

log = structlog.get_logger("registry")


async def evict_periodically(registry: InstanceRegistry, interval_secs: float) -> None:
    """Evict expired leases every interval until cancelled; one failed run must not stop the loop."""
    while True:
        await asyncio.sleep(interval_secs)
        try:
            registry.evict_expired()
        except Exception:
            log.exception("eviction run failed")


def create_app(settings: RegistrySettings | None = None) -> FastAPI:
    settings = settings or RegistrySettings()
    registry = InstanceRegistry(
        lease_duration_default=settings.lease_duration_default,
        delta_retention_secs=settings.delta_retention_secs,
        self_preservation=settings.self_preservation,
        renewal_percent_threshold=settings.renewal_percent_threshold,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        eviction = asyncio.create_task(
            evict_periodically(registry, settings.eviction_interval_secs), name="registry-eviction"
        )
        log.info(
            "registry started",
            eviction_interval_secs=settings.eviction_interval_secs,
            self_preservation=settings.self_preservation,
        )
        try:
            yield
        finally:
            eviction.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await eviction

    app = FastAPI(title="registry", summary="Eureka REST protocol registry (in memory)", lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       read_timeout_secs=settings.body_read_timeout_secs)
    app.include_router(api.router)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError) -> Response:
        # The protocol answers 400 to malformed input (e.g. a non-numeric lastDirtyTimestamp).
        errors = [
            FieldError(field=".".join(str(part) for part in error["loc"]), message=error["msg"])
            for error in exc.errors()
        ]
        return api.bad_request("invalid request parameters", errors)

    @app.exception_handler(schemas.BadRequest)
    async def bad_request(request: Request, exc: schemas.BadRequest) -> Response:
        return api.bad_request(exc.detail, exc.errors)

    @app.exception_handler(InstanceNotFound)
    async def unknown_instance(request: Request, exc: InstanceNotFound) -> Response:
        return api.not_found(exc)

    @app.exception_handler(api.Unauthenticated)
    async def unauthenticated(request: Request, exc: api.Unauthenticated) -> Response:
        return problem(401, "Unauthorized", "The registry needs its credentials (HTTP basic).", "unauthorized",
                       headers={"WWW-Authenticate": 'Basic realm="eureka"'})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return problem(exc.status_code, str(exc.detail), str(exc.detail))

    return app
