"""saga_orchestrator app factory: the event store, the saga index, the participants' HTTP client, the runner."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import aiohttp
from fastapi import FastAPI

from saga_orchestrator.api import router
from saga_orchestrator.event_store import SagaStore
from saga_orchestrator.events import SagaEventSource
from saga_orchestrator.index import SagaIndexStore
from saga_orchestrator.runner import SagaRunner
from saga_orchestrator.service import Orchestrator
from saga_orchestrator.settings import Settings
from saga_orchestrator.step_client import StepClient
from shared.auth import ServiceTokens
from shared.service_app import create_service_app


def lease_owner(settings: Settings) -> str:
    """This process's name on saga leases: its address (a container's hostname when INSTANCE_HOST is left
    empty) and a token of this incarnation. A restarted instance is a new owner: the sagas its previous
    incarnation held are orphans whose leases run out, and every replica competes for them alike, so one
    that keeps crashing does not keep taking its sagas back."""
    return f"{settings.instance_host or socket.gethostname()}:{settings.port}/{secrets.token_hex(4)}"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    async def on_startup(app: FastAPI) -> None:
        # One keep-alive session per process for every step call: the orchestrator's hot path.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200, limit_per_host=50, keepalive_timeout=30),
            raise_for_status=False,
            # The participants set no cookies; a jar would only be searched on every call (and could carry one
            # saga's cookie into another's calls).
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        registry = app.state.registry
        client = StepClient(session, registry, ServiceTokens(settings, registry),
                            attempt_timeout_secs=settings.step_attempt_timeout_secs,
                            retry_initial_secs=settings.retry_initial_secs, retry_max_secs=settings.retry_max_secs)
        store = SagaStore(settings.database_url, settings.event_store_threads)
        await store.open()
        index = SagaIndexStore(app.state.db, owner=lease_owner(settings), lease_secs=settings.lease_secs)
        runner = SagaRunner(store, index, client, settings)
        app.state.http_session = session
        app.state.orchestrator = Orchestrator(settings, store, index, client, runner)
        runner.start()

    async def on_shutdown(app: FastAPI) -> None:
        orchestrator: Orchestrator = app.state.orchestrator
        await orchestrator.runner.stop()
        await app.state.http_session.close()
        await orchestrator.store.close()

    return create_service_app(
        settings,
        title="saga_orchestrator",
        routers=[router],
        package_dir=Path(__file__).parent,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        relay_source=lambda app: SagaEventSource(app.state.orchestrator.store),
    )
