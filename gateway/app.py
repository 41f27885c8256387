"""gateway app factory: no database; one aiohttp session per process, opened and closed with the app."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI

from dashboard.live import LiveFeed
from dashboard.router import router as dashboard_router
from gateway.api import router
from gateway.openapi import MergedOpenApi
from gateway.proxy import Gateway, new_client_session
from gateway.ratelimit import RateLimits
from gateway.settings import Settings
from shared.bus import BusConfig
from shared.service_app import create_service_app


def create_app(settings: Settings | None = None, clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """`clock`: the breakers' (gateway.proxy.Gateway)."""
    settings = settings or Settings()

    async def on_startup(app: FastAPI) -> None:
        registry = app.state.registry
        for app_name, urls in settings.static_instances.items():
            registry.set_static(app_name, urls)
        gateway = Gateway(settings, new_client_session(settings), registry, clock)
        app.state.gateway = gateway
        app.state.openapi = MergedOpenApi(gateway, settings.openapi_cache_secs, settings.openapi_fetch_timeout_secs)
        # The dashboard's live view: one subscription to the bus for every open page (as the `gateway` user).
        bus = BusConfig(settings.nats_url, settings.nats_user, settings.nats_password, name="gateway")
        app.state.live_feed = LiveFeed(bus if settings.nats_url else None,
                                       heartbeat_secs=settings.dashboard_heartbeat_secs)
        app.state.live_feed.start()

    async def on_shutdown(app: FastAPI) -> None:
        await app.state.live_feed.stop()
        await app.state.gateway.session.close()

    app = create_service_app(
        settings,
        title="gateway",
        # The dashboard's pages first: the proxy's catch-all route would answer /dashboard otherwise.
        routers=[dashboard_router, router],
        package_dir=None,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        # /openapi.json is the fleet's merged document (gateway/api.py); the docs pages read it.
        own_openapi=False,
    )
    app.state.rate_limits = RateLimits.from_settings(
        settings.rate_limit_address_rps, settings.rate_limit_address_burst,
        settings.rate_limit_user_rps, settings.rate_limit_user_burst,
    )
    return app
