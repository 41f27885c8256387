"""`python -m tests.dashboard.gateway_with_dashboard`: the real gateway with the dashboard mounted.

For the dashboard's tests while (or wherever) `gateway/app.py` does not mount it itself.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.routing import BaseRoute

from dashboard.router import router as dashboard_router
from gateway.app import create_app as create_gateway_app
from gateway.settings import Settings
from shared.server import serve


def _serves_dashboard(routes: list[BaseRoute]) -> bool:
    return any(getattr(route, "path", "").startswith("/dashboard") for route in routes)


def create_app() -> FastAPI:
    app = create_gateway_app()
    if not _serves_dashboard(app.router.routes):
        before = list(app.router.routes)
        app.include_router(dashboard_router)
        added = [route for route in app.router.routes if route not in before]
        # The gateway's catch-all proxy route would answer /dashboard first: the dashboard goes in front.
        app.router.routes[:] = added + before
    return app


if __name__ == "__main__":
    serve("tests.dashboard.gateway_with_dashboard:create_app", Settings())
