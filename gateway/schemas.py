"""gateway response bodies (its own routes; proxied bodies pass through untouched)."""

from __future__ import annotations

from pydantic import BaseModel

from gateway.routes import Route


class RouteTableOut(BaseModel):
    """The route table in match order: longest prefix first."""

    routes: list[Route]
