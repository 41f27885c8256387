"""Route table matching and the refusal of path tricks (no network)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.routes import DEFAULT_ROUTES, PathRejected, Route, RouteTable, check_path
from gateway.settings import Settings

TABLE = RouteTable(DEFAULT_ROUTES)


@pytest.mark.parametrize(
    ("method", "path", "app", "public"),
    [
        ("POST", "/api/auth/login", "AUTH-SERVICE", True),
        ("POST", "/api/auth/register", "AUTH-SERVICE", True),
        ("POST", "/api/auth/refresh", "AUTH-SERVICE", True),
        ("GET", "/api/auth/.well-known/jwks.json", "AUTH-SERVICE", True),
        ("GET", "/api/auth/me", "AUTH-SERVICE", False),
        ("GET", "/api/auth", "AUTH-SERVICE", False),
        ("GET", "/api/auth/loginx", "AUTH-SERVICE", False),  # not the public /api/auth/login
        ("POST", "/api/customer-orders", "SAGA-ORCHESTRATOR", False),
        ("GET", "/api/customer-orders/abc", "SAGA-ORCHESTRATOR", False),
        ("GET", "/api/orders", "ORDER-SERVICE", False),
        ("GET", "/api/orders/", "ORDER-SERVICE", False),
        ("GET", "/api/inventory/products", "INVENTORY-SERVICE", True),
        ("HEAD", "/api/inventory/products/sku-1", "INVENTORY-SERVICE", True),
        ("POST", "/api/inventory/products", "INVENTORY-SERVICE", False),  # writes are not public
        ("GET", "/api/inventory/productsX", "INVENTORY-SERVICE", False),
        ("GET", "/api/shipments/s-1", "SHIPMENT-SERVICE", False),
        ("POST", "/api/shipments/s-1/cancel", "SHIPMENT-SERVICE", False),  # a customer's own cancellation
        ("POST", "/api/orders/o-1/cancel", "ORDER-SERVICE", False),
        ("GET", "/api/inventory/allocations/o-1", "INVENTORY-SERVICE", False),  # reads stay open to admins
        ("GET", "/api/carriers/assignments/o-1", "CARRIER-SERVICE", False),
        ("GET", "/api/payments", "PAYMENT-SERVICE", False),
    ],
)
def test_longest_prefix_and_method_decide_the_route(method: str, path: str, app: str, public: bool) -> None:
    route = TABLE.match(method, path)
    assert route is not None and route.routed
    assert (route.app, route.public) == (app, public)


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/auth/token"), ("GET", "/api/auth/token"),
    ("POST", "/api/orders/o-1/lines"), ("DELETE", "/api/orders/o-1/lines"), ("DELETE", "/api/orders/o-1/lines/l-1"),
    ("POST", "/api/orders/o-1/confirm"),
    ("POST", "/api/inventory/allocations"), ("POST", "/api/inventory/allocations/o-1/release"),
    ("POST", "/api/payments"), ("POST", "/api/payments/p-1/refunds"), ("POST", "/api/payments/orders/o-1/refund"),
    ("POST", "/api/carriers/assignments"), ("POST", "/api/carriers/assignments/o-1/release"),
    ("POST", "/api/shipments"), ("POST", "/api/shipments/"), ("POST", "/api/shipments/orders/o-1/cancel"),
])
def test_internal_endpoints_are_never_routed(method: str, path: str) -> None:
    route = TABLE.match(method, path)
    assert route is not None and not route.routed


def test_a_wildcard_stands_for_one_whole_segment() -> None:
    route = Route(prefix="/api/x/*/y", app="X", routed=False)
    assert route.matches("GET", "/api/x/1/y") and route.matches("GET", "/api/x/1/y/z")
    assert not route.matches("GET", "/api/x/y") and not route.matches("GET", "/api/x/1/2/y")
    assert not route.matches("GET", "/api/x/1/yy")
    with pytest.raises(ValidationError):
        Route(prefix="/api/x*/y", app="X")


@pytest.mark.parametrize("path", ["/api/ordersX", "/api/orders-old", "/api", "/", "/apiorders", "/api/unknown",
                                  "/health-of-something", "/api/authx/login"])
def test_prefix_matches_only_on_a_segment_boundary(path: str) -> None:
    assert TABLE.match("GET", path) is None


def test_customer_orders_are_not_orders() -> None:
    route = TABLE.match("POST", "/api/customer-orders")
    assert route is not None and route.app == "SAGA-ORCHESTRATOR"


def test_route_model_normalises_and_refuses_bad_entries() -> None:
    route = Route(prefix="/api/x/", app=" x-svc ", methods=("get", "post"))
    assert (route.prefix, route.app, route.methods) == ("/api/x", "X-SVC", ("GET", "POST"))
    for bad in ({"prefix": "api/x", "app": "X"}, {"prefix": "/api/../x", "app": "X"},
                {"prefix": "/api/x", "app": " "}, {"prefix": "/api/x", "app": "X", "timeout_secs": 0}):
        with pytest.raises(ValidationError):
            Route.model_validate(bad)


def test_route_table_comes_from_gateway_routes_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ROUTES", '[{"prefix": "/api/things", "app": "thing-service", "public": true,'
                                         ' "timeout_secs": 2.5}]')
    monkeypatch.setenv("GATEWAY_STATIC_INSTANCES", '{"THING-SERVICE": ["http://127.0.0.1:9"]}')
    settings = Settings()
    table = RouteTable(settings.routes)
    route = table.match("DELETE", "/api/things/1")
    assert route is not None and route.app == "THING-SERVICE" and route.public and route.timeout_secs == 2.5
    assert table.match("GET", "/api/orders") is None
    assert settings.static_instances == {"THING-SERVICE": ["http://127.0.0.1:9"]}


def test_default_settings_use_design_table() -> None:
    settings = Settings()
    assert tuple(settings.routes) == DEFAULT_ROUTES
    assert (settings.app_name, settings.port) == ("GATEWAY", 8080)


@pytest.mark.parametrize(
    "raw",
    [
        "/api/orders/../auth/me",
        "/api/orders/..",
        "/api/orders/./x",
        "/api/orders/..;/auth",
        "/api/orders/%2e%2e/auth",
        "/api/orders/%2E%2E/auth",
        "/api/orders/.%2e/auth",
        "/api/orders/..%2fauth",
        "/api/orders%2F..%2Fauth",
        "/api/orders/%252e%252e/auth",
        "/api/orders/%252fauth",
        "/api/orders\\..\\auth",
        "/api/orders/%5c..%5cauth",
        "/api/orders/%00",
        "/api/orders/\x01",
        "//evil.example/api/orders",
        "/api//orders",
        "http://evil.example/api/orders",
        "evil.example:443",
        "*",
        "",
    ],
)
def test_path_tricks_are_refused(raw: str) -> None:
    with pytest.raises(PathRejected) as info:
        check_path(raw)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("/api/orders", "/api/orders"),
        ("/api/orders/", "/api/orders/"),
        ("/api/orders/o-1/lines", "/api/orders/o-1/lines"),
        ("/api/auth/.well-known/jwks.json", "/api/auth/.well-known/jwks.json"),
        ("/api/inventory/products/sku%20one", "/api/inventory/products/sku one"),
        ("/api/orders/...", "/api/orders/..."),
        ("/api/orders/a..b", "/api/orders/a..b"),
    ],
)
def test_ordinary_paths_pass(raw: str, decoded: str) -> None:
    assert check_path(raw) == decoded
