"""Prometheus metrics shared by every service: request counts and latency by route and status."""

from __future__ import annotations

import hmac
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from shared.auth import bearer_token
from shared.errors import Forbidden

REQUESTS = Counter("http_requests_total", "HTTP requests handled", ["service", "method", "route", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


# labels() validates, builds a key and takes a lock on every call; the children it returns are kept here instead.
_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}


def observe_request(service: str, method: str, route: str, status: int, seconds: float) -> None:
    """Count one request; `route` is the template (e.g. /api/orders/{order_id}), so ids don't explode labels."""
    key = (service, method, route, status)
    children = _children.get(key)
    if children is None:
        children = _children[key] = (REQUESTS.labels(service, method, route, str(status)),
                                     LATENCY.labels(service, method, route))
    children[0].inc()
    children[1].observe(seconds)


async def metrics_endpoint(request: Request) -> Response:
    """For the operator only: the scrape token (METRICS_TOKEN) or an admin's access token; 401/403 otherwise.

    The series name instances, ports and routes: nothing an anonymous caller should map the fleet with.
    """
    scrape_token: str = request.app.state.settings.metrics_token
    presented = bearer_token(request)
    if not (scrape_token and hmac.compare_digest(presented.encode(), scrape_token.encode())):
        identity = await request.app.state.verifier.verify(presented)
        if not identity.is_admin:
            raise Forbidden("The metrics are for the operator: an admin token or the scrape token is needed.")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
