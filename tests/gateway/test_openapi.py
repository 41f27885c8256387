"""The gateway's merged OpenAPI document and docs pages: pure merge rules, then against real FastAPI upstreams."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from gateway.app import create_app
from gateway.openapi import merge_openapi
from gateway.routes import Route, RouteTable
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.fleet import METRICS_HEADERS
from tests.gateway.conftest import free_port, quiet_settings, serving
from tests.shared.docs_pages import assert_page_loads_locally

ROUTES = RouteTable([
    Route(prefix="/api/orders", app="ORDER-SERVICE"),
    Route(prefix="/api/inventory", app="INVENTORY-SERVICE"),
    Route(prefix="/api/payments", app="PAYMENT-SERVICE"),
])


def _doc(paths: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "x", "version": "1"}, "paths": paths,
            "components": {"schemas": schemas}}


def _op(operation_id: str, ref: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id, "responses": {"200": {"description": "ok"}}}
    if ref:
        op["responses"]["200"]["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}
    return op


def test_only_proxied_paths_of_each_service_are_kept() -> None:
    orders = _doc({"/api/orders": {"get": _op("list_orders")}, "/validate": {"get": _op("validate")},
                   "/api/inventory/x": {"get": _op("not_mine")}}, {})
    merged = merge_openapi(ROUTES, {"ORDER-SERVICE": orders}, {})
    assert list(merged["paths"]) == ["/api/orders"]
    assert merged["paths"]["/api/orders"]["get"]["tags"] == ["ORDER-SERVICE"]


def test_protected_routes_ask_for_a_bearer_token_and_public_ones_do_not() -> None:
    routes = RouteTable([Route(prefix="/api/auth/login", app="AUTH-SERVICE", public=True),
                         Route(prefix="/api/auth", app="AUTH-SERVICE")])
    auth = _doc({"/api/auth/login": {"post": _op("login")}, "/api/auth/me": {"get": _op("me")}}, {})
    merged = merge_openapi(routes, {"AUTH-SERVICE": auth}, {})
    assert "security" not in merged["paths"]["/api/auth/login"]["post"]
    assert merged["paths"]["/api/auth/me"]["get"]["security"] == [{"bearerAuth": []}]
    assert merged["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_identical_components_are_shared_clashing_ones_renamed_and_unused_ones_dropped() -> None:
    problem = {"type": "object", "properties": {"status": {"type": "integer"}}}
    page = {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}
    orders = _doc({"/api/orders": {"get": _op("a", "Page")}, "/api/orders/{id}": {"get": _op("c", "Problem")}},
                  {"Item": {"type": "object", "properties": {"id": {"type": "string"}}}, "Problem": problem,
                   "Page": page})
    inventory = _doc({"/api/inventory": {"get": _op("b", "Page")}, "/validate": {"get": _op("v", "Identity")}},
                     {"Item": {"type": "object", "properties": {"sku": {"type": "string"}}}, "Problem": problem,
                      "Page": page, "Identity": {"type": "object"}})
    merged = merge_openapi(ROUTES, {"ORDER-SERVICE": orders, "INVENTORY-SERVICE": inventory}, {})
    schemas = merged["components"]["schemas"]
    # INVENTORY-SERVICE sorts first, so it keeps the plain names; ORDER-SERVICE's clashing Item is renamed,
    # and so is its Page, whose definition differs once its Item ref is renamed. Problem is the same in both,
    # so it is shared; Identity is reached only from /validate, which the gateway does not route.
    assert set(schemas) == {"Item", "Page", "Problem", "ORDER-SERVICE.Item", "ORDER-SERVICE.Page"}
    assert schemas["ORDER-SERVICE.Page"]["items"]["$ref"] == "#/components/schemas/ORDER-SERVICE.Item"
    order_ref = merged["paths"]["/api/orders"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert order_ref == {"$ref": "#/components/schemas/ORDER-SERVICE.Page"}
    inventory_ref = merged["paths"]["/api/inventory"]["get"]["responses"]["200"]["content"]["application/json"]
    assert inventory_ref["schema"] == {"$ref": "#/components/schemas/Page"}


def test_duplicate_operation_ids_are_made_unique_and_absent_services_noted() -> None:
    orders = _doc({"/api/orders": {"get": _op("health")}}, {})
    inventory = _doc({"/api/inventory": {"get": _op("health")}}, {})
    merged = merge_openapi(ROUTES, {"ORDER-SERVICE": orders, "INVENTORY-SERVICE": inventory},
                           {"PAYMENT-SERVICE": "PAYMENT-SERVICE cannot be reached."})
    ids = [merged["paths"][p]["get"]["operationId"] for p in ("/api/inventory", "/api/orders")]
    assert ids == ["health", "ORDER-SERVICE.health"]
    assert "PAYMENT-SERVICE" in merged["info"]["description"]
    assert merged["x-services"] == {"included": ["INVENTORY-SERVICE", "ORDER-SERVICE"],
                                    "unavailable": {"PAYMENT-SERVICE": "PAYMENT-SERVICE cannot be reached."}}


# ---------------------------------------------------------------- against real upstreams


class OrderOut(BaseModel):
    id: str
    status: str


class ProductOut(BaseModel):
    sku: str


def order_app() -> FastAPI:
    app = FastAPI(title="order_service")

    @app.get("/api/orders/{order_id}", response_model=OrderOut)
    async def read_order(order_id: str) -> OrderOut:
        return OrderOut(id=order_id, status="PENDING")

    @app.get("/validate")
    async def validate() -> dict[str, str]:
        return {}

    return app


def inventory_app() -> FastAPI:
    app = FastAPI(title="inventory_service")

    @app.get("/api/inventory/products", response_model=list[ProductOut])
    async def list_products(limit: int = 10) -> list[ProductOut]:
        return []

    return app


@pytest.fixture(scope="module")
async def docs_gateway() -> AsyncIterator[str]:
    async with serving(order_app()) as orders, serving(inventory_app()) as inventory:
        settings = quiet_settings(
            routes=[Route(prefix="/api/orders", app="ORDER-SERVICE"),
                    Route(prefix="/api/inventory", app="INVENTORY-SERVICE"),
                    Route(prefix="/api/payments", app="PAYMENT-SERVICE")],
            static_instances={"ORDER-SERVICE": [orders.url], "INVENTORY-SERVICE": [inventory.url],
                              "PAYMENT-SERVICE": [f"http://127.0.0.1:{free_port()}"]},
            openapi_cache_secs=60,
        )
        async with serving(create_app(settings)) as gateway:
            yield gateway.url


async def test_merged_document_covers_the_proxied_routes_and_notes_the_absent(docs_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=docs_gateway) as client:
        response = await client.get("/openapi.json")  # public: no token
    assert response.status_code == 200, response.text
    document = response.json()
    assert set(document["paths"]) == {"/api/orders/{order_id}", "/api/inventory/products"}
    assert {"OrderOut", "ProductOut"} <= set(document["components"]["schemas"])
    assert document["x-services"]["included"] == ["INVENTORY-SERVICE", "ORDER-SERVICE"]
    assert list(document["x-services"]["unavailable"]) == ["PAYMENT-SERVICE"]
    assert "PAYMENT-SERVICE" in document["info"]["description"]


def _fetches(metrics: str) -> float:
    prefix = 'gateway_upstream_request_duration_seconds_count{app="INVENTORY-SERVICE",outcome="200"}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))


async def test_merged_document_is_cached(docs_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=docs_gateway) as client:
        before = _fetches((await client.get("/metrics", headers=METRICS_HEADERS)).text)
        first = (await client.get("/openapi.json")).json()
        second = (await client.get("/openapi.json")).json()
        after = _fetches((await client.get("/metrics", headers=METRICS_HEADERS)).text)
    assert first == second
    assert after - before <= 1  # at most one fetch of the service's document for both requests


async def test_docs_page_is_swagger_ui_on_the_merged_document(docs_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=docs_gateway) as client:
        response = await client.get("/docs")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "swagger-ui" in response.text and "url: '/openapi.json'" in response.text


async def test_docs_pages_and_their_assets_are_the_gateways_own_and_public(docs_gateway: str) -> None:
    # No token, and no route table entry for /docs or /redoc: proxied, they would be refused or unrouted;
    # the upstreams (plain FastAPI apps) have no /docs/assets either.
    async with httpx.AsyncClient(base_url=docs_gateway) as client:
        swagger_assets = await assert_page_loads_locally(client, "/docs")
        redoc_assets = await assert_page_loads_locally(client, "/redoc")
        redirect = await client.get("/docs/oauth2-redirect")
    assert sorted(swagger_assets.values()) == ["icon", "script", "stylesheet"]
    assert "script" in redoc_assets.values()
    assert redirect.status_code == 200 and "text/html" in redirect.headers["content-type"]


async def test_docs_page_renders_the_merged_document_in_a_browser_offline(docs_gateway: str) -> None:
    """Swagger UI 5 draws the merged OpenAPI 3.1 document; the browser may reach nothing but the gateway."""
    async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (the dev extra)")
    if not shutil.which(CHROMIUM):  # a path or a name on PATH
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install -y chromium (CHROMIUM_PATH overrides)")
    gateway_host = urlsplit(docs_gateway).netloc
    elsewhere: list[str] = []

    async def only_the_gateway(route: Any) -> None:
        if urlsplit(route.request.url).netloc == gateway_host:
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    async with async_api.async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        except async_api.Error as exc:
            pytest.skip(f"chromium at {CHROMIUM} could not be launched: {exc}")
        try:
            page = await browser.new_page()
            await page.route("**/*", only_the_gateway)
            await page.goto(f"{docs_gateway}/docs")
            await page.wait_for_selector(".opblock", timeout=15_000)
            operations = await page.locator(".opblock-summary-path").all_inner_texts()
            title = await page.locator(".info .title").inner_text()
        finally:
            await browser.close()
    assert elsewhere == []
    assert any("/api/orders/" in path for path in operations), operations
    assert "customer-service API" in title
