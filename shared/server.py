"""Run a service's app factory with uvicorn (uvloop and httptools where installed)."""

from __future__ import annotations

import uvicorn

from shared.settings import ServiceSettings


def serve(factory: str, settings: ServiceSettings) -> None:
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        # uvicorn rewrites no address from X-Forwarded-*: the gateway sanitizes that header, and a service that
        # needs the client (auth_service's login throttling) resolves it itself from TRUSTED_PROXIES.
        proxy_headers=False,
    )
