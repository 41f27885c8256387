"""gateway app factory: no database; one aiohttp session per process, opened and closed with the app."""

from __future__ import annotations

from fastapi import FastAPI

from gateway.api import router
from gateway.proxy import Gateway, new_client_session
from gateway.settings import Settings
from shared.service_app import create_service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    async def on_startup(app: FastAPI) -> None:
        registry = app.state.registry
        for app_name, urls in settings.static_instances.items():
            registry.set_static(app_name, urls)
        app.state.gateway = Gateway(settings, new_client_session(settings), registry)

    async def on_shutdown(app: FastAPI) -> None:
        await app.state.gateway.session.close()

    return create_service_app(
        settings,
        title="gateway",
        routers=[router],
        package_dir=None,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )
