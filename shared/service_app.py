"""The app factory every service uses: logging, errors, metrics, health, database, registry, auth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import JSONResponse

from shared.auth import Revocations, TokenVerifier, remote_revocations
from shared.body_limit import BodyLimitMiddleware
from shared.bus import (
    FAULTS,
    Bus,
    BusConfig,
    BusFaults,
    Consumer,
    Handler,
    InboxPruner,
    OutboxRelay,
    RelaySource,
    Runner,
)
from shared.db import Database
from shared.docs import install_docs
from shared.errors import install_error_handlers
from shared.events import CONSUMERS
from shared.faults import FaultInjector
from shared.logging import RequestMiddleware, configure_logging
from shared.metrics import metrics_endpoint
from shared.migrations import upgrade_to_head
from shared.registry_client import RegistryClient
from shared.settings import ServiceSettings
from shared.tracing import configure_tracing

log = structlog.get_logger(__name__)

Hook = Callable[[FastAPI], Awaitable[None]]


def create_service_app(
    settings: ServiceSettings,
    *,
    routers: list[APIRouter],
    package_dir: Path | None = None,
    on_startup: Hook | None = None,
    on_shutdown: Hook | None = None,
    discover: bool = True,
    openapi_url: str | None = "/openapi.json",
    own_openapi: bool = True,
    docs_url: str | None = "/docs",
    redoc_url: str | None = "/redoc",
    title: str | None = None,
    consumers: Sequence[tuple[str, Handler]] = (),
    relay_source: Callable[[FastAPI], RelaySource] | None = None,
) -> FastAPI:
    """Build a service. `package_dir` holds the service's `migrations/`; None means no database. The title
    (of the API docs) is the package's name unless given.

    With NATS_URL set, a service with a database relays its outbox onto the bus (`relay_source`: another source
    than the outbox table) and runs its `consumers` (name, handler; the subject each reads is in
    shared.events.CONSUMERS).

    The docs pages at `docs_url`/`redoc_url` read the document at `openapi_url` and load their assets from the
    service itself (shared/docs.py). `own_openapi` False leaves `openapi_url` to the service's routers (the
    gateway serves a merged document); None turns a path off.
    """
    service = settings.app_name.lower()
    configure_logging(service, settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if package_dir is not None:
            if settings.run_migrations:
                await asyncio.to_thread(upgrade_to_head, package_dir, settings.database_url)
            app.state.db = Database(settings.database_url, settings.db_pool_size)
        registry = RegistryClient(settings, discover=discover)
        app.state.registry = registry
        app.state.verifier = TokenVerifier(settings, registry, remote_revocations(settings, registry))
        if on_startup is not None:
            await on_startup(app)  # auth_service puts its own revocation list (its table) in place here
        app.state.bus = _start_bus(app, settings, package_dir, consumers, relay_source)
        revocations: Revocations = app.state.verifier.revocations
        # Every service polls it, the gateway too: its own /metrics checks an admin's token (shared/metrics.py).
        polling = asyncio.create_task(revocations.run(), name="revocations-poll")
        await registry.start()
        log.info("service started", port=settings.port)
        try:
            yield
        finally:
            polling.cancel()
            # Leave the registry first, so no new traffic arrives while the rest shuts down.
            await registry.stop()
            if app.state.bus is not None:
                await app.state.bus.stop()
            if on_shutdown is not None:
                await on_shutdown(app)
            if package_dir is not None:
                await app.state.db.dispose()
            log.info("service stopped")

    title = title or (package_dir.name if package_dir is not None else service)
    app = FastAPI(title=title, lifespan=lifespan, openapi_url=openapi_url if own_openapi else None,
                  docs_url=None, redoc_url=None)
    if openapi_url is not None:
        # Before the routers: the gateway's catch-all would answer /docs/assets otherwise.
        install_docs(app, openapi_url=openapi_url, docs_url=docs_url, redoc_url=redoc_url)
    app.state.settings = settings
    configure_tracing(app, settings)
    install_error_handlers(app)
    if settings.fault_injection:
        faults = FaultInjector()
        app.middleware("http")(faults.middleware())
        app.include_router(faults.router())

        # Tests and drills: kill the process between a relay's publish and its delete, or a consumer's commit and ack.
        @app.post("/_faults/bus", status_code=204, include_in_schema=False)
        async def bus_fault(fault: BusFaults) -> None:
            FAULTS.crash_after_publish = fault.crash_after_publish
            FAULTS.crash_before_ack = fault.crash_before_ack

        # Tests and drills: the revocation poll made now (tests trigger it instead of sleeping a poll interval).
        @app.post("/_revocations/refresh", status_code=204, include_in_schema=False)
        async def refresh_revocations(request: Request) -> None:
            await request.app.state.verifier.revocations.refresh()
    # Inside RequestMiddleware, so a 413 is logged and counted like any answer (shared/server.py bounds the head).
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       read_timeout_secs=settings.body_read_timeout_secs)
    app.add_middleware(RequestMiddleware, service=service)

    @app.get("/health", tags=["health"], include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "UP"}

    @app.get("/ready", tags=["health"], include_in_schema=False)
    async def ready(request: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        if package_dir is not None:
            try:
                await request.app.state.db.ping()
                checks["database"] = "UP"
            except Exception as exc:  # any failure means not ready
                checks["database"] = f"DOWN: {type(exc).__name__}"
        status = "UP" if all(v == "UP" for v in checks.values()) else "DOWN"
        return JSONResponse({"status": status, "checks": checks}, status_code=200 if status == "UP" else 503)

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    for router in routers:
        app.include_router(router)
    return app


def _start_bus(app: FastAPI, settings: ServiceSettings, package_dir: Path | None,
               consumers: Sequence[tuple[str, Handler]], relay_source: Callable[[FastAPI], RelaySource] | None,
               ) -> Bus | None:
    """The bus's connection, the outbox relay and the consumers, each a task of their own (None: no NATS_URL)."""
    if not settings.nats_url or package_dir is None:
        return None
    package = package_dir.name
    bus = Bus(BusConfig(settings.nats_url, settings.nats_user, settings.nats_password, name=package))
    runners: list[Runner] = []
    if settings.bus_relay:
        runners.append(OutboxRelay(app.state.db, relay_source(app) if relay_source else None, settings.bus_poll_secs))
    for name, handle in consumers:
        runners.append(Consumer(app.state.db, package, name, CONSUMERS[package][name], handle,
                                max_deliver=settings.bus_max_deliver, ack_wait_secs=settings.bus_ack_wait_secs))
    if consumers:
        runners.append(InboxPruner(app.state.db))
    bus.start(*runners)
    return bus
