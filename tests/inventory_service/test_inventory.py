"""inventory_service rules, through its HTTP API on real PostgreSQL (and SQLite for the race)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from inventory_service.app import create_app
from inventory_service.seed import CATALOGUE, seed_catalogue
from inventory_service.settings import Settings
from tests.fleet import free_port
from tests.inprocess import ADMIN, JWKS, PROBLEM, SERVICE, OutboxWatch, bearer, running_app, service_fixtures

CUSTOMER = bearer("cust-1")


served, client = service_fixtures(create_app, Settings, "cs_unit_inventory")


def new_sku() -> str:
    return f"SKU-{uuid.uuid4().hex[:10].upper()}"


def new_order_id() -> str:
    return str(uuid.uuid4())


async def new_product(client: httpx.AsyncClient, on_hand: int = 10, price: int = 1250, weight: int = 300,
                      currency: str = "EUR", sku: str | None = None) -> dict:
    body = {"sku": sku or new_sku(), "name": "Test widget", "unit_price_minor": price, "currency": currency,
            "weight_grams": weight, "on_hand": on_hand}
    response = await client.post("/api/inventory/products", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()


async def product(client: httpx.AsyncClient, sku: str) -> dict:
    response = await client.get(f"/api/inventory/products/{sku}")
    assert response.status_code == 200, response.text
    return response.json()


async def allocate(client: httpx.AsyncClient, order_id: str, lines: list[dict], headers: dict | None = None
                   ) -> httpx.Response:
    return await client.post("/api/inventory/allocations", json={"order_id": order_id, "lines": lines},
                             headers=headers or SERVICE)


# --- catalogue -------------------------------------------------------------------------------------------


async def test_create_and_read_catalogue_without_token(client: httpx.AsyncClient) -> None:
    created = await new_product(client, on_hand=7, price=4599, weight=1200)
    assert created["available"] == 7 and created["reserved"] == 0 and created["currency"] == "EUR"
    read = await client.get(f"/api/inventory/products/{created['sku']}")  # no token: public
    assert read.status_code == 200 and read.json()["unit_price_minor"] == 4599
    listing = await client.get("/api/inventory/products", params={"skus": f"{created['sku']},NOPE-1"})
    assert listing.status_code == 200
    assert [p["sku"] for p in listing.json()["items"]] == [created["sku"]] and listing.json()["total"] == 1


async def test_duplicate_sku_is_409(client: httpx.AsyncClient) -> None:
    created = await new_product(client)
    again = await client.post("/api/inventory/products", headers=ADMIN, json={
        "sku": created["sku"], "name": "Other", "unit_price_minor": 1, "weight_grams": 1})
    assert again.status_code == 409 and again.headers["content-type"] == PROBLEM


async def test_list_pagination(client: httpx.AsyncClient) -> None:
    skus = [(await new_product(client))["sku"] for _ in range(3)]
    page = (await client.get("/api/inventory/products", params={"skus": ",".join(skus), "limit": 2})).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["limit"] == 2
    rest = (await client.get("/api/inventory/products", params={"skus": ",".join(skus), "offset": 2})).json()
    assert [p["sku"] for p in page["items"] + rest["items"]] == sorted(skus)


async def test_patch_catalogue_fields(client: httpx.AsyncClient) -> None:
    created = await new_product(client)
    response = await client.patch(f"/api/inventory/products/{created['sku']}", headers=ADMIN,
                                  json={"name": "Renamed", "unit_price_minor": 999, "weight_grams": 42})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["unit_price_minor"], body["weight_grams"]) == ("Renamed", 999, 42)
    assert body["on_hand"] == created["on_hand"]
    assert (await client.patch("/api/inventory/products/NOPE-404", headers=ADMIN,
                               json={"name": "x"})).status_code == 404


async def test_restock_adds_to_on_hand(client: httpx.AsyncClient) -> None:
    created = await new_product(client, on_hand=2)
    response = await client.post(f"/api/inventory/products/{created['sku']}/restock", headers=ADMIN,
                                  json={"quantity": 5})
    assert response.status_code == 200 and response.json()["on_hand"] == 7
    assert (await client.post("/api/inventory/products/NOPE-404/restock", headers=ADMIN,
                              json={"quantity": 5})).status_code == 404


async def test_unknown_product_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/inventory/products/NOPE-404")
    assert response.status_code == 404 and response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/api/inventory/products", {"sku": "A-1", "name": "x", "unit_price_minor": 1, "weight_grams": 1}),
    ("PATCH", "/api/inventory/products/A-1", {"name": "x"}),
    ("POST", "/api/inventory/products/A-1/restock", {"quantity": 1}),
])
async def test_admin_endpoints_need_admin(client: httpx.AsyncClient, method: str, path: str, body: dict) -> None:
    anonymous = await client.request(method, path, json=body)
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == PROBLEM
    for headers in (CUSTOMER, SERVICE):
        refused = await client.request(method, path, json=body, headers=headers)
        assert refused.status_code == 403, refused.text


@pytest.mark.parametrize("body", [
    {},
    {"sku": "A-2", "name": "x", "unit_price_minor": 1},  # no weight
    {"sku": "A-2", "name": "x", "unit_price_minor": 1.5, "weight_grams": 1},
    {"sku": "A-2", "name": "x", "unit_price_minor": "100", "weight_grams": 1},
    {"sku": "A-2", "name": "x", "unit_price_minor": -1, "weight_grams": 1},
    {"sku": "A-2", "name": "x", "unit_price_minor": 1, "weight_grams": 0},
    {"sku": "A-2", "name": "x", "unit_price_minor": 1, "weight_grams": 1, "on_hand": -1},
    {"sku": "A-2", "name": "x", "unit_price_minor": 1, "weight_grams": 1, "currency": "eur"},
    {"sku": "bad sku!", "name": "x", "unit_price_minor": 1, "weight_grams": 1},
    {"sku": "A-2", "name": "", "unit_price_minor": 1, "weight_grams": 1},
    {"sku": "A-2", "name": "x", "unit_price_minor": 10**13, "weight_grams": 1},
    {"sku": "A-2", "name": "x", "unit_price_minor": 1, "weight_grams": 1, "extra": True},
])
async def test_bad_product_bodies_are_422(client: httpx.AsyncClient, body: dict) -> None:
    response = await client.post("/api/inventory/products", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("body", [{}, {"name": None}, {"unit_price_minor": -5}, {"weight_grams": 2.5},
                                  {"on_hand": 100}, {"name": "ok", "reserved": 0}])
async def test_bad_patches_are_422(client: httpx.AsyncClient, body: dict) -> None:
    created = await new_product(client)
    response = await client.patch(f"/api/inventory/products/{created['sku']}", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("body", [{}, {"quantity": 0}, {"quantity": -3}, {"quantity": 1.5}, {"quantity": "3"},
                                  {"quantity": 10**7}])
async def test_bad_restocks_are_422(client: httpx.AsyncClient, body: dict) -> None:
    created = await new_product(client)
    response = await client.post(f"/api/inventory/products/{created['sku']}/restock", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("path", ["/api/inventory/products/bad%20sku", "/api/inventory/products/a%00b",
                                  "/api/inventory/products?skus=a%00b", "/api/inventory/products?limit=0",
                                  "/api/inventory/products?offset=-1", "/api/inventory/products?limit=x"])
async def test_bad_catalogue_queries_are_422(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    # NUL bytes are refused up front by the shared request middleware (400); the rest by validation.
    assert response.status_code == (400 if "%00" in path else 422), response.text
    assert response.headers["content-type"] == PROBLEM


async def test_stock_rules_hold_in_the_database(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = served
    created = await new_product(client, on_hand=3)
    for statement in ("UPDATE products SET reserved = 4 WHERE sku = :sku",
                      "UPDATE products SET reserved = -1 WHERE sku = :sku",
                      "UPDATE products SET on_hand = -1 WHERE sku = :sku"):
        with pytest.raises(IntegrityError):
            async with app.state.db.transaction() as tx:
                await tx.execute(text(statement), {"sku": created["sku"]})


# --- allocations -----------------------------------------------------------------------------------------


async def test_allocate_follows_the_contract(client: httpx.AsyncClient) -> None:
    a = await new_product(client, on_hand=5, price=1000, weight=200)
    b = await new_product(client, on_hand=5, price=250, weight=50)
    order_id = new_order_id()
    response = await allocate(client, order_id, [{"sku": a["sku"], "quantity": 2}, {"sku": b["sku"], "quantity": 3}])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["order_id"] == order_id and body["status"] == "ALLOCATED" and body["currency"] == "EUR"
    assert body["total_minor"] == 2 * 1000 + 3 * 250
    assert body["total_weight_grams"] == 2 * 200 + 3 * 50
    assert {(line["sku"], line["quantity"], line["unit_price_minor"], line["weight_grams"])
            for line in body["lines"]} == {(a["sku"], 2, 1000, 200), (b["sku"], 3, 250, 50)}
    assert (await product(client, a["sku"]))["available"] == 3
    assert (await product(client, b["sku"]))["reserved"] == 3
    read = await client.get(f"/api/inventory/allocations/{order_id}", headers=SERVICE)
    assert read.status_code == 200 and read.json()["total_minor"] == body["total_minor"]


async def test_allocation_snapshots_price_and_weight(client: httpx.AsyncClient) -> None:
    a = await new_product(client, on_hand=5, price=1000, weight=200)
    order_id = new_order_id()
    assert (await allocate(client, order_id, [{"sku": a["sku"], "quantity": 1}])).status_code == 201
    await client.patch(f"/api/inventory/products/{a['sku']}", headers=ADMIN,
                       json={"unit_price_minor": 5, "weight_grams": 5})
    held = (await client.get(f"/api/inventory/allocations/{order_id}", headers=SERVICE)).json()
    assert held["lines"][0]["unit_price_minor"] == 1000 and held["lines"][0]["weight_grams"] == 200


async def test_duplicate_skus_in_lines_are_summed(client: httpx.AsyncClient) -> None:
    a = await new_product(client, on_hand=5)
    response = await allocate(client, new_order_id(), [{"sku": a["sku"], "quantity": 2},
                                                       {"sku": a["sku"], "quantity": 3}])
    assert response.status_code == 201 and response.json()["lines"][0]["quantity"] == 5
    assert (await product(client, a["sku"]))["available"] == 0


async def test_insufficient_stock_is_409_naming_the_sku(client: httpx.AsyncClient) -> None:
    a = await new_product(client, on_hand=2)
    response = await allocate(client, new_order_id(), [{"sku": a["sku"], "quantity": 3}])
    assert response.status_code == 409 and response.headers["content-type"] == PROBLEM
    body = response.json()
    assert (body["sku"], body["requested"], body["available"]) == (a["sku"], 3, 2)
    assert a["sku"] in body["detail"]
    assert (await product(client, a["sku"]))["reserved"] == 0


async def test_all_or_nothing(client: httpx.AsyncClient) -> None:
    # The short line sorts last, so the first line's UPDATE has already run when the second one fails.
    stem = new_sku()
    first = await new_product(client, on_hand=5, sku=f"{stem}-A")
    second = await new_product(client, on_hand=1, sku=f"{stem}-B")
    lines = [{"sku": second["sku"], "quantity": 2}, {"sku": first["sku"], "quantity": 2}]
    order_id = new_order_id()
    response = await allocate(client, order_id, lines)
    assert response.status_code == 409, response.text
    assert (response.json()["sku"], response.json()["available"]) == (second["sku"], 1)
    assert (await product(client, first["sku"]))["reserved"] == 0
    assert (await product(client, second["sku"]))["reserved"] == 0
    assert (await client.get(f"/api/inventory/allocations/{order_id}", headers=SERVICE)).status_code == 404
    # A refused order may try again once stock is there.
    await client.post(f"/api/inventory/products/{second['sku']}/restock", headers=ADMIN, json={"quantity": 1})
    assert (await allocate(client, order_id, lines)).status_code == 201


async def test_unknown_sku_is_422_naming_it(client: httpx.AsyncClient) -> None:
    a = await new_product(client, on_hand=5)
    response = await allocate(client, new_order_id(), [{"sku": a["sku"], "quantity": 1},
                                                       {"sku": "GHOST-1", "quantity": 1}])
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    assert "GHOST-1" in response.json()["detail"] and response.json()["unknown_skus"] == ["GHOST-1"]
    assert (await product(client, a["sku"]))["reserved"] == 0


async def test_mixed_currencies_are_422(client: httpx.AsyncClient) -> None:
    eur = await new_product(client)
    usd = await new_product(client, currency="USD")
    response = await allocate(client, new_order_id(), [{"sku": eur["sku"], "quantity": 1},
                                                       {"sku": usd["sku"], "quantity": 1}])
    assert response.status_code == 422, response.text
    assert (await product(client, eur["sku"]))["reserved"] == 0


async def test_one_allocation_per_order(client: httpx.AsyncClient) -> None:
    a = await new_product(client, on_hand=10)
    order_id = new_order_id()
    line = [{"sku": a["sku"], "quantity": 1}]
    assert (await allocate(client, order_id, line, {**SERVICE, "Idempotency-Key": "k1"})).status_code == 201
    second = await allocate(client, order_id, line, {**SERVICE, "Idempotency-Key": "k2"})
    assert second.status_code == 409 and second.headers["content-type"] == PROBLEM
    assert (await product(client, a["sku"]))["reserved"] == 1


async def test_release_restores_once(client: httpx.AsyncClient) -> None:
    a = await new_product(client, on_hand=4)
    order_id = new_order_id()
    assert (await allocate(client, order_id, [{"sku": a["sku"], "quantity": 3}])).status_code == 201
    first = await client.post(f"/api/inventory/allocations/{order_id}/release", headers=SERVICE)
    assert first.status_code == 200 and first.json() == {"order_id": order_id, "status": "RELEASED"}
    assert (await product(client, a["sku"]))["reserved"] == 0
    again = await client.post(f"/api/inventory/allocations/{order_id}/release", headers=SERVICE)
    assert again.status_code == 200 and again.json()["status"] == "RELEASED"
    after = await product(client, a["sku"])
    assert (after["reserved"], after["on_hand"]) == (0, 4)
    held = (await client.get(f"/api/inventory/allocations/{order_id}", headers=SERVICE)).json()
    assert held["status"] == "RELEASED" and held["released_at"]
    # Released is final: the order cannot allocate again.
    assert (await allocate(client, order_id, [{"sku": a["sku"], "quantity": 1}])).status_code == 409


async def test_release_without_allocation_is_none_and_blocks_a_late_allocate(client: httpx.AsyncClient) -> None:
    a = await new_product(client, on_hand=4)
    order_id = new_order_id()
    for _ in range(2):
        response = await client.post(f"/api/inventory/allocations/{order_id}/release", headers=SERVICE)
        assert response.status_code == 200 and response.json() == {"order_id": order_id, "status": "NONE"}
    late = await allocate(client, order_id, [{"sku": a["sku"], "quantity": 1}])
    assert late.status_code == 409 and late.json()["code"] == "compensated"  # the fence (shared/fence.py)
    assert (await product(client, a["sku"]))["reserved"] == 0


async def test_allocate_idempotency_replay_and_mismatch(client: httpx.AsyncClient) -> None:
    a = await new_product(client, on_hand=10)
    order_id = new_order_id()
    headers = {**SERVICE, "Idempotency-Key": f"{order_id}:allocate"}
    lines = [{"sku": a["sku"], "quantity": 2}]
    first = await allocate(client, order_id, lines, headers)
    again = await allocate(client, order_id, lines, headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and again.headers.get("idempotent-replayed") == "true"
    assert (await product(client, a["sku"]))["reserved"] == 2
    other = await allocate(client, order_id, [{"sku": a["sku"], "quantity": 3}], headers)
    assert other.status_code == 422 and other.headers["content-type"] == PROBLEM


async def test_refusal_and_release_replay(client: httpx.AsyncClient) -> None:
    a = await new_product(client, on_hand=1)
    order_id = new_order_id()
    headers = {**SERVICE, "Idempotency-Key": f"{order_id}:allocate"}
    refused = await allocate(client, order_id, [{"sku": a["sku"], "quantity": 2}], headers)
    assert refused.status_code == 409
    await client.post(f"/api/inventory/products/{a['sku']}/restock", headers=ADMIN, json={"quantity": 5})
    replayed = await allocate(client, order_id, [{"sku": a["sku"], "quantity": 2}], headers)
    assert replayed.status_code == 409 and replayed.headers.get("idempotent-replayed") == "true"
    release_headers = {**SERVICE, "Idempotency-Key": f"{order_id}:allocate:compensate"}
    first = await client.post(f"/api/inventory/allocations/{order_id}/release", headers=release_headers)
    again = await client.post(f"/api/inventory/allocations/{order_id}/release", headers=release_headers)
    assert first.json() == again.json() and again.headers.get("idempotent-replayed") == "true"


@pytest.mark.parametrize("body", [
    {},
    {"order_id": "o-1"},
    {"lines": [{"sku": "A", "quantity": 1}]},
    {"order_id": "o-1", "lines": []},
    {"order_id": "o-1", "lines": [{"sku": "A", "quantity": -1}]},
    {"order_id": "o-1", "lines": [{"sku": "A", "quantity": 0}]},
    {"order_id": "o-1", "lines": [{"sku": "A", "quantity": 1.5}]},
    {"order_id": "o-1", "lines": [{"sku": "A", "quantity": "2"}]},
    {"order_id": "o-1", "lines": [{"sku": "A"}]},
    {"order_id": "o-1", "lines": [{"sku": "bad sku", "quantity": 1}]},
    {"order_id": "o-1", "lines": [{"sku": "A", "quantity": 1, "price": 1}]},
    {"order_id": "", "lines": [{"sku": "A", "quantity": 1}]},
    {"order_id": "x" * 65, "lines": [{"sku": "A", "quantity": 1}]},
    {"order_id": 12, "lines": [{"sku": "A", "quantity": 1}]},
    {"order_id": "o-1", "lines": "A"},
])
async def test_bad_allocation_bodies_are_422(client: httpx.AsyncClient, body: dict) -> None:
    response = await client.post("/api/inventory/allocations", json=body, headers=SERVICE)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM


async def test_not_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/inventory/allocations", content=b"{nope",
                                 headers={**SERVICE, "Content-Type": "application/json"})
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM


async def test_allocation_endpoints_need_a_privileged_caller(client: httpx.AsyncClient) -> None:
    calls = [("POST", "/api/inventory/allocations", {"order_id": "o-1", "lines": [{"sku": "A", "quantity": 1}]}),
             ("POST", "/api/inventory/allocations/o-1/release", None),
             ("GET", "/api/inventory/allocations/o-1", None)]
    for method, path, body in calls:
        assert (await client.request(method, path, json=body)).status_code == 401
        assert (await client.request(method, path, json=body, headers=CUSTOMER)).status_code == 403
    admin_may = await client.post("/api/inventory/allocations/o-admin/release", headers=ADMIN)
    assert admin_may.status_code == 200


async def test_unknown_or_malformed_allocation_ids(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/api/inventory/allocations/{new_order_id()}", headers=SERVICE)).status_code == 404
    assert (await client.get("/api/inventory/allocations/a%00b", headers=SERVICE)).status_code == 400
    bad_release = await client.post("/api/inventory/allocations/%20x/release", headers=SERVICE)
    assert bad_release.status_code == 422


# --- seed ------------------------------------------------------------------------------------------------


async def test_seed_is_an_idempotent_upsert(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = served
    assert len(CATALOGUE) >= 8
    outbox = await OutboxWatch.of(app)
    assert await seed_catalogue(app.state.db) == (len(CATALOGUE), 0)  # the module's database is fresh
    assert await outbox.new() == [("product.created.v1", item.sku, None, {
        "sku": item.sku, "product_name": item.name, "unit_price_minor": item.unit_price_minor, "currency": "EUR",
        "weight_grams": item.weight_grams, "on_hand": item.on_hand}) for item in CATALOGUE]
    sku = CATALOGUE[0].sku
    held = await allocate(client, new_order_id(), [{"sku": sku, "quantity": 2}])
    assert held.status_code == 201
    await outbox.new()
    assert await seed_catalogue(app.state.db) == (0, 0)  # as seeded: nothing to write, nothing to say
    assert await outbox.new() == []
    patched = await client.patch(f"/api/inventory/products/{sku}", headers=ADMIN, json={"unit_price_minor": 1})
    assert patched.status_code == 200
    await outbox.new()
    assert await seed_catalogue(app.state.db) == (0, 1)  # the seed's price back, said once
    first = CATALOGUE[0]
    assert await outbox.new() == [("product.updated.v1", sku, None, {
        "sku": sku, "product_name": first.name, "unit_price_minor": first.unit_price_minor, "currency": "EUR",
        "weight_grams": first.weight_grams})]
    after = await product(client, sku)
    assert (after["on_hand"], after["reserved"]) == (CATALOGUE[0].on_hand, 2)
    listing = (await client.get("/api/inventory/products",
                                params={"skus": ",".join(p.sku for p in CATALOGUE)})).json()
    assert listing["total"] == len(CATALOGUE)
    assert all(p["currency"] == "EUR" and p["weight_grams"] > 0 for p in listing["items"])


# --- events: every change is in the outbox, written with it (shared/bus.py) ----------------------------------


async def test_catalogue_changes_are_events_and_refusals_are_not(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = served
    outbox = await OutboxWatch.of(app)
    created = await new_product(client, on_hand=3, price=700, weight=250)
    sku = created["sku"]
    assert await outbox.new() == [("product.created.v1", sku, None, {
        "sku": sku, "product_name": "Test widget", "unit_price_minor": 700, "currency": "EUR", "weight_grams": 250,
        "on_hand": 3})]
    patched = await client.patch(f"/api/inventory/products/{sku}", headers=ADMIN, json={"unit_price_minor": 650})
    assert patched.status_code == 200
    assert await outbox.new() == [("product.updated.v1", sku, None, {
        "sku": sku, "product_name": "Test widget", "unit_price_minor": 650, "currency": "EUR", "weight_grams": 250})]
    restock_headers = {**ADMIN, "Idempotency-Key": f"{sku}:restock"}
    for _ in range(2):  # the second is the first's answer replayed: no second restock, no second event
        restocked = await client.post(f"/api/inventory/products/{sku}/restock", headers=restock_headers,
                                      json={"quantity": 4})
        assert restocked.status_code == 200 and restocked.json()["on_hand"] == 7
    assert await outbox.new() == [("product.restocked.v1", sku, None, {"sku": sku, "quantity": 4, "on_hand": 7})]
    refused = [
        await client.post("/api/inventory/products", headers=ADMIN, json={
            "sku": sku, "name": "Again", "unit_price_minor": 1, "weight_grams": 1}),
        await client.patch("/api/inventory/products/NOPE-404", headers=ADMIN, json={"name": "x"}),
        await client.post("/api/inventory/products/NOPE-404/restock", headers=ADMIN, json={"quantity": 1}),
        await client.post(f"/api/inventory/products/{sku}/restock", headers=ADMIN, json={"quantity": 0}),
    ]
    assert [response.status_code for response in refused] == [409, 404, 404, 422]
    assert await outbox.new() == []


async def test_allocation_and_release_are_events_once(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = served
    stem = new_sku()
    a = await new_product(client, on_hand=5, sku=f"{stem}-A")
    b = await new_product(client, on_hand=1, sku=f"{stem}-B")
    outbox = await OutboxWatch.of(app)
    order_id = new_order_id()
    key = {**SERVICE, "Idempotency-Key": f"{order_id}:allocate"}
    lines = [{"sku": b["sku"], "quantity": 1}, {"sku": a["sku"], "quantity": 2}, {"sku": a["sku"], "quantity": 1}]
    for _ in range(2):  # a replayed step answers again and says nothing again
        assert (await allocate(client, order_id, lines, key)).status_code == 201
    allocated = ("stock.allocated.v1", order_id, order_id, {"order_id": order_id, "lines": {a["sku"]: 3,
                                                                                             b["sku"]: 1}})
    assert await outbox.new() == [allocated]

    refused = [
        await allocate(client, order_id, lines, {**SERVICE, "Idempotency-Key": f"{order_id}:other"}),  # allocated
        await allocate(client, new_order_id(), [{"sku": b["sku"], "quantity": 1}]),  # short
        await allocate(client, new_order_id(), [{"sku": "GHOST-9", "quantity": 1}]),  # unknown
    ]
    assert [response.status_code for response in refused] == [409, 409, 422]
    assert await outbox.new() == []

    release = f"/api/inventory/allocations/{order_id}/release"
    for headers in ({**SERVICE, "Idempotency-Key": f"{order_id}:release"},) * 2 + (SERVICE,):
        response = await client.post(release, headers=headers)  # a replay, then a repeat with nothing left
        assert response.json() == {"order_id": order_id, "status": "RELEASED"}
    assert await outbox.new() == [("stock.released.v1", order_id, order_id, {"order_id": order_id, "lines": {
        a["sku"]: 3, b["sku"]: 1}})]
    never_held = new_order_id()
    assert (await client.post(f"/api/inventory/allocations/{never_held}/release", headers=SERVICE)).json()[
        "status"] == "NONE"
    assert await outbox.new() == []


# --- the race --------------------------------------------------------------------------------------------


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The app behind a real uvicorn server on a free port, so requests overlap on real connections."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                          access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.02)
    app.state.verifier.use_keys(JWKS)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def race(client: httpx.AsyncClient, sku: str, contenders: int) -> Counter[int]:
    async def one(i: int) -> int:
        order_id = new_order_id()
        response = await client.post("/api/inventory/allocations",
                                     json={"order_id": order_id, "lines": [{"sku": sku, "quantity": 1}]},
                                     headers={**SERVICE, "Idempotency-Key": f"{order_id}:allocate"})
        if response.status_code == 409:
            assert response.json()["sku"] == sku
        return response.status_code

    return Counter(await asyncio.gather(*(one(i) for i in range(contenders))))


async def test_fifty_concurrent_allocations_take_exactly_the_last_ten_on_postgresql(
    served: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = served
    if app.state.db.sqlite:
        pytest.skip("PostgreSQL's row locks; SQLite's single writer has its own test below")
    stocked = await new_product(client, on_hand=30)
    sku = stocked["sku"]
    assert (await allocate(client, new_order_id(), [{"sku": sku, "quantity": 20}])).status_code == 201
    # A second app on the same database, behind uvicorn, with a pool wide enough for the requests to overlap.
    settings = Settings(database_url=app.state.settings.database_url, eureka_server_url="", db_pool_size=20)
    async with serving(settings) as base_url, httpx.AsyncClient(
        base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=60)
    ) as http:
        outcomes = await race(http, sku, 50)
    assert outcomes == Counter({201: 10, 409: 40})
    after = await product(client, sku)
    assert (after["on_hand"], after["reserved"], after["available"]) == (30, 30, 0)


async def test_concurrent_allocations_do_not_oversell_on_sqlite(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/inventory.db", eureka_server_url="")
    async with running_app(create_app, settings) as (_, client):
        sku = (await new_product(client, on_hand=5))["sku"]
        outcomes = await race(client, sku, 20)
        assert outcomes == Counter({201: 5, 409: 15})
        assert (await product(client, sku))["reserved"] == 5


async def test_refusals_answer_the_first_rule_broken(client: httpx.AsyncClient) -> None:
    # The rules apply in this order: one allocation per order, known skus, one currency, enough stock.
    eur = await new_product(client, on_hand=1)
    usd = await new_product(client, on_hand=0, currency="USD")
    order_id = new_order_id()
    assert (await allocate(client, order_id, [{"sku": eur["sku"], "quantity": 1}])).status_code == 201
    taken = await allocate(client, order_id, [{"sku": "GHOST-2", "quantity": 1}, {"sku": usd["sku"], "quantity": 5}])
    assert taken.status_code == 409 and taken.json()["allocation_status"] == "ALLOCATED"
    unknown = await allocate(client, new_order_id(), [{"sku": "GHOST-2", "quantity": 1},
                                                      {"sku": usd["sku"], "quantity": 5}])
    assert unknown.status_code == 422 and unknown.json()["unknown_skus"] == ["GHOST-2"]
    other = await new_product(client, on_hand=5)
    mixed = await allocate(client, new_order_id(), [{"sku": other["sku"], "quantity": 1},
                                                    {"sku": usd["sku"], "quantity": 5}])
    assert mixed.status_code == 422 and mixed.json()["currencies"] == ["EUR", "USD"]
    assert (await product(client, other["sku"]))["reserved"] == 0


async def test_list_total_past_the_end(client: httpx.AsyncClient) -> None:
    skus = [(await new_product(client))["sku"] for _ in range(3)]
    for params, total, count in (({"limit": 3}, 3, 3), ({"limit": 5}, 3, 3), ({"offset": 1, "limit": 5}, 3, 2),
                                 ({"offset": 3}, 3, 0), ({"offset": 9}, 3, 0)):
        page = (await client.get("/api/inventory/products", params={"skus": ",".join(skus), **params})).json()
        assert (page["total"], len(page["items"])) == (total, count), params
    nothing = (await client.get("/api/inventory/products", params={"skus": "GHOST-3"})).json()
    assert (nothing["total"], nothing["items"]) == (0, [])


async def test_concurrent_duplicates_allocate_and_release_once(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = served
    stem = new_sku()
    a = await new_product(client, on_hand=50, sku=f"{stem}-A")
    b = await new_product(client, on_hand=50, sku=f"{stem}-B")
    lines = [{"sku": b["sku"], "quantity": 2}, {"sku": a["sku"], "quantity": 1}]
    order_id = new_order_id()
    outbox = await OutboxWatch.of(app)
    settings = Settings(database_url=app.state.settings.database_url, eureka_server_url="", db_pool_size=20)
    async with serving(settings) as base_url, httpx.AsyncClient(
        base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=30)
    ) as http:
        allocations = await asyncio.gather(*(
            allocate(http, order_id, lines, {**SERVICE, "Idempotency-Key": f"{order_id}:{i}"}) for i in range(10)))
        assert Counter(r.status_code for r in allocations) == Counter({201: 1, 409: 9})
        assert {r.json()["allocation_status"] for r in allocations if r.status_code == 409} == {"ALLOCATED"}
        assert ((await product(client, a["sku"]))["reserved"], (await product(client, b["sku"]))["reserved"]) == (1, 2)
        releases = await asyncio.gather(*(
            http.post(f"/api/inventory/allocations/{order_id}/release", headers=SERVICE) for _ in range(10)))
    assert {(r.status_code, r.json()["status"]) for r in releases} == {(200, "RELEASED")}
    assert ((await product(client, a["sku"]))["reserved"], (await product(client, b["sku"]))["reserved"]) == (0, 0)
    # Ten of each, one change of each: one event of each.
    assert [(kind, subject) for kind, subject, _, _ in await outbox.new()] == [
        ("stock.allocated.v1", order_id), ("stock.released.v1", order_id)]


async def test_allocate_racing_its_compensation_never_leaves_stock_held(
    served: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    # Whichever commits first, the order ends released with nothing reserved: the release either releases
    # the allocation or records the empty one that refuses it.
    app, client = served
    sku = (await new_product(client, on_hand=100))["sku"]
    settings = Settings(database_url=app.state.settings.database_url, eureka_server_url="", db_pool_size=20)
    async with serving(settings) as base_url, httpx.AsyncClient(
        base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=50)
    ) as http:
        async def allocate_and_release(order_id: str) -> tuple[int, str]:
            allocated, released = await asyncio.gather(
                allocate(http, order_id, [{"sku": sku, "quantity": 1}]),
                http.post(f"/api/inventory/allocations/{order_id}/release", headers=SERVICE))
            assert released.status_code == 200, released.text
            return allocated.status_code, released.json()["status"]

        outcomes = await asyncio.gather(*(allocate_and_release(new_order_id()) for _ in range(20)))
    assert set(outcomes) <= {(201, "RELEASED"), (409, "NONE")}, outcomes
    assert (await product(client, sku))["reserved"] == 0


async def test_late_duplicates_racing_the_release_are_refused_without_deadlock(
    served: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    # An allocate that arrives again while its order is being released must not hold stock rows and wait
    # for the release, which waits for those rows (PostgreSQL would abort one of them as a deadlock).
    app, client = served
    stem = new_sku()
    skus = [(await new_product(client, on_hand=100, sku=f"{stem}-{i}"))["sku"] for i in range(3)]
    lines = [{"sku": sku, "quantity": 1} for sku in skus]
    settings = Settings(database_url=app.state.settings.database_url, eureka_server_url="", db_pool_size=20)
    async with serving(settings) as base_url, httpx.AsyncClient(
        base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=40)
    ) as http:
        for _ in range(5):
            order_id = new_order_id()
            assert (await allocate(http, order_id, lines)).status_code == 201
            release, *late = await asyncio.gather(
                http.post(f"/api/inventory/allocations/{order_id}/release", headers=SERVICE),
                *(allocate(http, order_id, lines) for _ in range(6)))
            assert (release.status_code, release.json()["status"]) == (200, "RELEASED"), release.text
            assert {r.status_code for r in late} == {409}, [r.text for r in late if r.status_code != 409]
    assert [(await product(client, sku))["reserved"] for sku in skus] == [0, 0, 0]
