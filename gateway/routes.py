"""The gateway's route table: path prefix → Eureka app, matched longest prefix first; path tricks refused.

Some entries are never routed: the fleet's internal endpoints (the saga's steps and compensations, service
tokens) are answered 404 here, as if they did not exist, whoever asks; only the services call them, on each
other's own ports.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.errors import DomainError

AUTH_APP = "AUTH-SERVICE"


@functools.cache
def _wildcard_pattern(prefix: str, exact: bool) -> re.Pattern[str]:
    """A prefix with `*` segments as a regex: each `*` stands for exactly one non-empty segment."""
    body = "/".join("[^/]+" if segment == "*" else re.escape(segment) for segment in prefix.split("/"))
    return re.compile(body + ("/?" if exact else "(?:/.*)?") + r"\Z", re.DOTALL)


class Route(BaseModel):
    """One entry of the table. `methods` None means every method; public routes skip /validate.

    A `*` segment in the prefix matches any one segment (`/api/orders/*/lines`); `exact` matches the prefix
    itself and not the paths below it; `routed` False makes the gateway answer 404 (internal endpoints).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = Field(description="Path prefix, matched on a segment boundary; a `*` segment matches any one.")
    app: str = Field(description="Eureka app name of the service that owns the prefix.")
    methods: tuple[str, ...] | None = None
    public: bool = False
    exact: bool = Field(default=False, description="Match the prefix itself only, not the paths below it.")
    routed: bool = Field(default=True, description="False: never forwarded (an internal endpoint); 404.")
    timeout_secs: float = Field(default=30.0, gt=0, description="Longest wait for the upstream's answer.")

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a route prefix starts with '/'")
        if any(seg in (".", "..") for seg in value.split("/")) or "\\" in value or "%" in value:
            raise ValueError("a route prefix is a plain path")
        if any("*" in seg and seg != "*" for seg in value.split("/")):
            raise ValueError("a `*` in a route prefix stands for a whole segment")
        return value.rstrip("/") or "/"

    @field_validator("app")
    @classmethod
    def _upper_app(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("app must name a Eureka app")
        return value.strip().upper()

    @field_validator("methods")
    @classmethod
    def _upper_methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(m.upper() for m in value)

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            # HEAD is a GET without a body: a route open to GET is open to HEAD.
            if not (method == "HEAD" and "GET" in self.methods):
                return False
        if "*" in self.prefix:
            return _wildcard_pattern(self.prefix, self.exact).match(path) is not None
        if self.exact:
            return path in (self.prefix, self.prefix + "/")
        if self.prefix == "/":
            return True
        return path == self.prefix or path.startswith(self.prefix + "/")


# The endpoints only the fleet's services call: the saga's steps and compensations (saga_orchestrator/steps.py)
# and the service tokens they are made with. Never routed: an admin's token does not open them either.
INTERNAL_ROUTES: tuple[Route, ...] = (
    Route(prefix="/api/auth/token", app=AUTH_APP, routed=False),
    Route(prefix="/api/orders/*/lines", app="ORDER-SERVICE", routed=False),
    Route(prefix="/api/orders/*/confirm", app="ORDER-SERVICE", routed=False),
    Route(prefix="/api/inventory/allocations", app="INVENTORY-SERVICE", methods=("POST",), routed=False),
    # Payments, refunds of a payment and of an order.
    Route(prefix="/api/payments", app="PAYMENT-SERVICE", methods=("POST",), routed=False),
    Route(prefix="/api/carriers/assignments", app="CARRIER-SERVICE", methods=("POST",), routed=False),
    Route(prefix="/api/shipments", app="SHIPMENT-SERVICE", methods=("POST",), exact=True, routed=False),
    Route(prefix="/api/shipments/orders", app="SHIPMENT-SERVICE", methods=("POST",), routed=False),
)

# DESIGN.md's table. Login and friends are public; /api/auth/me and the like are not.
DEFAULT_ROUTES: tuple[Route, ...] = (
    *INTERNAL_ROUTES,
    Route(prefix="/api/auth/register", app=AUTH_APP, public=True),
    Route(prefix="/api/auth/login", app=AUTH_APP, public=True),
    Route(prefix="/api/auth/refresh", app=AUTH_APP, public=True),
    Route(prefix="/api/auth/.well-known/jwks.json", app=AUTH_APP, public=True),
    Route(prefix="/api/auth", app=AUTH_APP),
    # The saga may hold the request open for `Prefer: wait=N`, so it gets a longer timeout.
    Route(prefix="/api/customer-orders", app="SAGA-ORCHESTRATOR", timeout_secs=65),
    Route(prefix="/api/orders", app="ORDER-SERVICE"),
    Route(prefix="/api/inventory/products", app="INVENTORY-SERVICE", methods=("GET",), public=True),
    Route(prefix="/api/inventory", app="INVENTORY-SERVICE"),
    Route(prefix="/api/payments", app="PAYMENT-SERVICE"),
    Route(prefix="/api/carriers", app="CARRIER-SERVICE"),
    Route(prefix="/api/shipments", app="SHIPMENT-SERVICE"),
)


class RouteTable:
    """Routes ordered so that the first match is the longest prefix (a method-restricted one first on a tie)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = sorted(routes, key=lambda r: (-len(r.prefix), r.methods is None))

    def match(self, method: str, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(method, path):
                return route
        return None


class PathRejected(DomainError):
    status, title, type_slug = 400, "Bad request", "path-rejected"


# Encoded forms that change a path's meaning once some hop decodes them (once or twice).
_ENCODED_TRICKS = ("%2e", "%2f", "%5c", "%00")


def check_path(raw_path: str) -> str:
    """The decoded path of a request target that is safe to route and forward unchanged; else PathRejected.

    Refused rather than normalised: rewriting would route one path and forward another. `raw_path`
    is the target as the client sent it (ASGI `raw_path`), before any percent-decoding.
    """
    if not raw_path.startswith("/"):
        # Absolute-form (`http://host/...`), `*` or garbage: the gateway only serves origin-form paths.
        raise PathRejected("The request target must be a path starting with '/'.")
    if "\\" in raw_path or "//" in raw_path:
        raise PathRejected("The path contains a backslash or an empty segment.")
    lowered = raw_path.lower()
    decoded_once = unquote(lowered)  # `%252e` becomes `%2e`: a trap for a hop that decodes twice
    if any(trick in lowered or trick in decoded_once for trick in _ENCODED_TRICKS):
        raise PathRejected("The path contains an encoded dot, slash, backslash or NUL.")
    path = unquote(raw_path)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise PathRejected("The path contains control characters.")
    # `..;` is how Java servlet containers are fooled (matrix parameters); refuse it too.
    if any(segment.split(";", 1)[0] in (".", "..") for segment in path.split("/")):
        raise PathRejected("The path contains '.' or '..' segments.")
    return path
