"""carrier_service rules, through its HTTP API on real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import func, select

from carrier_service import service
from carrier_service.app import create_app
from carrier_service.schemas import AssignmentRequest
from carrier_service.seed import DEMO_CARRIERS, seed
from carrier_service.settings import Settings
from tests.fleet import free_port
from tests.inprocess import ADMIN, SERVICE, OutboxWatch, bearer, changed, service_fixtures

CUSTOMER = bearer("alice")
DB_NAME = "cs_unit_carrier"


served, client = service_fixtures(create_app, Settings, DB_NAME)


def unique_code(prefix: str = "C") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8].upper()}"


async def new_carrier(client: httpx.AsyncClient, **fields: Any) -> dict:
    body = {"code": unique_code(), "name": "Test Carrier", "countries": ["IS"], "max_weight_grams": 30_000,
            "daily_capacity": 100, "base_price_minor": 500, "price_per_kg_minor": 100, "currency": "EUR", **fields}
    response = await client.post("/api/carriers", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()


async def assign(client: httpx.AsyncClient, country: str, weight: int, order_id: str | None = None,
                 headers: dict[str, str] = SERVICE) -> httpx.Response:
    body = {"order_id": order_id or str(uuid.uuid4()), "country": country, "weight_grams": weight}
    return await client.post("/api/carriers/assignments", json=body, headers=headers)


# --- carrier administration ---------------------------------------------------------------------------------

async def test_admin_creates_and_anyone_reads_carriers(client: httpx.AsyncClient) -> None:
    carrier = await new_carrier(client, countries=["NO", "IS", "NO"])
    assert carrier["countries"] == ["IS", "NO"] and carrier["active"] is True
    got = await client.get(f"/api/carriers/{carrier['id']}", headers=CUSTOMER)
    assert got.status_code == 200 and got.json()["code"] == carrier["code"]
    listing = (await client.get("/api/carriers", params={"country": "NO"}, headers=CUSTOMER)).json()
    assert carrier["id"] in {c["id"] for c in listing["items"]}
    assert all("NO" in c["countries"] for c in listing["items"])


async def test_duplicate_code_is_conflict(client: httpx.AsyncClient) -> None:
    carrier = await new_carrier(client)
    again = await client.post("/api/carriers", headers=ADMIN, json={
        "code": carrier["code"], "name": "Other", "countries": ["DE"], "max_weight_grams": 1,
        "daily_capacity": 1, "base_price_minor": 1, "price_per_kg_minor": 1})
    assert again.status_code == 409, again.text
    assert again.headers["content-type"] == "application/problem+json"


async def test_patch_changes_only_the_fields_sent(client: httpx.AsyncClient) -> None:
    carrier = await new_carrier(client, countries=["IS"])
    patched = await client.patch(f"/api/carriers/{carrier['id']}", headers=ADMIN,
                                 json={"countries": ["FO", "GL"], "daily_capacity": 7, "active": False})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["countries"] == ["FO", "GL"] and body["daily_capacity"] == 7 and body["active"] is False
    assert body["name"] == carrier["name"] and body["base_price_minor"] == carrier["base_price_minor"]
    inactive = (await client.get("/api/carriers", params={"country": "GL", "active": "false"}, headers=ADMIN)).json()
    assert carrier["id"] in {c["id"] for c in inactive["items"]}


@pytest.mark.parametrize("body", [
    {"name": None}, {"code": "NEW"}, {"countries": []}, {"countries": ["de"]}, {"daily_capacity": -1},
    {"max_weight_grams": 0}, {"base_price_minor": 1.5}, {"price_per_kg_minor": "100"}, {"currency": "eur"},
    {"active": "maybe"},
])
async def test_bad_patch_is_422(client: httpx.AsyncClient, body: dict) -> None:
    carrier = await new_carrier(client)
    response = await client.patch(f"/api/carriers/{carrier['id']}", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("drop_or_change", [
    {"code": None}, {"name": None}, {"countries": None}, {"code": "lower"}, {"code": ""}, {"countries": ["DEU"]},
    {"countries": "DE"}, {"max_weight_grams": -5}, {"max_weight_grams": 1.5}, {"max_weight_grams": "1000"},
    {"daily_capacity": 2.0}, {"base_price_minor": -1}, {"price_per_kg_minor": 10**13}, {"currency": "EURO"},
    {"extra": 1},
])
async def test_bad_carrier_bodies_are_422(client: httpx.AsyncClient, drop_or_change: dict) -> None:
    body = {"code": unique_code(), "name": "X", "countries": ["DE"], "max_weight_grams": 1000, "daily_capacity": 1,
            "base_price_minor": 1, "price_per_kg_minor": 1}
    response = await client.post("/api/carriers", json=changed(body, drop_or_change), headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_admin_endpoints_refuse_others(client: httpx.AsyncClient) -> None:
    body = {"code": unique_code(), "name": "X", "countries": ["DE"], "max_weight_grams": 1, "daily_capacity": 1,
            "base_price_minor": 1, "price_per_kg_minor": 1}
    assert (await client.post("/api/carriers", json=body, headers=CUSTOMER)).status_code == 403
    assert (await client.post("/api/carriers", json=body, headers=SERVICE)).status_code == 403
    carrier = await new_carrier(client)
    assert (await client.patch(f"/api/carriers/{carrier['id']}", json={"name": "Y"},
                               headers=CUSTOMER)).status_code == 403
    no_token = await client.post("/api/carriers", json=body)
    assert no_token.status_code == 401 and no_token.headers["content-type"] == "application/problem+json"
    assert (await client.get("/api/carriers")).status_code == 401


async def test_unknown_ids_are_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/carriers/nope", headers=ADMIN)).status_code == 404
    assert (await client.patch("/api/carriers/nope", json={"name": "X"}, headers=ADMIN)).status_code == 404
    assert (await client.get("/api/carriers/assignments/no-such-order", headers=SERVICE)).status_code == 404
    assert (await client.get("/api/carriers", params={"country": "Germany"}, headers=ADMIN)).status_code == 422
    assert (await client.get("/api/carriers", params={"limit": 0}, headers=ADMIN)).status_code == 422


# --- assignment -------------------------------------------------------------------------------------------------

async def test_cheapest_fitting_carrier_is_chosen(client: httpx.AsyncClient) -> None:
    flat = await new_carrier(client, countries=["CH"], base_price_minor=300, price_per_kg_minor=200)
    per_kg = await new_carrier(client, countries=["CH"], base_price_minor=500, price_per_kg_minor=100)
    await new_carrier(client, countries=["CH"], base_price_minor=1, price_per_kg_minor=1, active=False)
    await new_carrier(client, countries=["CH"], base_price_minor=1, price_per_kg_minor=1, max_weight_grams=999)
    await new_carrier(client, countries=["LI"], base_price_minor=0, price_per_kg_minor=0)

    light = await assign(client, "CH", 1000)  # 1 kg: flat 500, per_kg 600
    assert light.status_code == 201, light.text
    assert light.json()["carrier_code"] == flat["code"] and light.json()["price_minor"] == 500
    heavy = await assign(client, "CH", 3001)  # 4 started kg: flat 1100, per_kg 900
    assert heavy.json()["carrier_code"] == per_kg["code"] and heavy.json()["price_minor"] == 900
    body = heavy.json()
    assert body["status"] == "ASSIGNED" and body["carrier_id"] == per_kg["id"] and body["currency"] == "EUR"


async def test_price_tie_goes_to_lowest_code(client: httpx.AsyncClient) -> None:
    stem = uuid.uuid4().hex[:6].upper()
    await new_carrier(client, code=f"ZZ{stem}", countries=["AD"])
    await new_carrier(client, code=f"AA{stem}", countries=["AD"])
    response = await assign(client, "AD", 500)
    assert response.json()["carrier_code"] == f"AA{stem}"


async def test_each_refusal_says_why(client: httpx.AsyncClient) -> None:
    unserved = await assign(client, "KP", 100)
    assert unserved.status_code == 409
    assert unserved.headers["content-type"] == "application/problem+json"
    assert unserved.json()["reason"] == "no carrier serves country KP"

    await new_carrier(client, countries=["SM"], max_weight_grams=2000, daily_capacity=1)
    await new_carrier(client, countries=["SM"], max_weight_grams=5000, daily_capacity=1)
    heavy = await assign(client, "SM", 5001)
    assert heavy.status_code == 409 and heavy.json()["reason"] == "parcel of 5001 g exceeds every carrier's limit"

    assert (await assign(client, "SM", 1000)).status_code == 201
    assert (await assign(client, "SM", 1000)).status_code == 201
    full = await assign(client, "SM", 1000)
    assert full.status_code == 409 and full.json()["reason"] == "all carriers serving SM are at capacity today"
    assert full.json()["code"] == "at_capacity"


async def test_release_frees_capacity_exactly_once(client: httpx.AsyncClient) -> None:
    carrier = await new_carrier(client, countries=["VA"], daily_capacity=2)
    first = (await assign(client, "VA", 100, "va-order-1")).json()
    assert (await assign(client, "VA", 100, "va-order-2")).status_code == 201
    assert (await assign(client, "VA", 100, "va-order-3")).status_code == 409

    released = await client.post("/api/carriers/assignments/va-order-1/release", headers=SERVICE)
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "RELEASED" and released.json()["assignment"]["id"] == first["id"]
    again = await client.post("/api/carriers/assignments/va-order-1/release", headers=SERVICE)
    assert again.status_code == 200 and again.json() == {"order_id": "va-order-1", "status": "NONE",
                                                          "assignment": None}
    # Two releases of one assignment free one place, not two.
    assert (await assign(client, "VA", 100, "va-order-3")).json()["carrier_code"] == carrier["code"]
    assert (await assign(client, "VA", 100, "va-order-4")).status_code == 409

    shown = await client.get("/api/carriers/assignments/va-order-1", headers=SERVICE)
    assert shown.json()["status"] == "RELEASED" and shown.json()["released_at"] is not None


async def test_release_without_assignment_is_none(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/carriers/assignments/never-assigned/release", headers=SERVICE)
    assert response.status_code == 200 and response.json()["status"] == "NONE"


async def test_order_has_one_live_assignment(client: httpx.AsyncClient) -> None:
    await new_carrier(client, countries=["MC"])
    first = await assign(client, "MC", 100, "mc-order")
    assert first.status_code == 201
    second = await assign(client, "MC", 100, "mc-order")
    assert second.status_code == 409 and second.json()["code"] == "already_assigned"
    await client.post("/api/carriers/assignments/mc-order/release", headers=SERVICE)
    # The release is the saga's compensation: the order is not assigned again (shared/fence.py).
    reassigned = await assign(client, "MC", 200, "mc-order")
    assert reassigned.status_code == 409 and reassigned.json()["code"] == "compensated"
    shown = await client.get("/api/carriers/assignments/mc-order", headers=SERVICE)
    assert shown.json()["id"] == first.json()["id"] and shown.json()["status"] == "RELEASED"


async def test_assignment_after_the_release_is_refused(client: httpx.AsyncClient) -> None:
    """The compensation fence: a late assign_carrier (the saga timed out waiting for it and released the
    order) is refused by the carrier service itself, and takes no place of the carrier's day."""
    carrier = await new_carrier(client, countries=["WF"], daily_capacity=1)
    released = await client.post("/api/carriers/assignments/wf-late/release", headers=SERVICE)
    assert released.status_code == 200 and released.json()["status"] == "NONE"
    late = await assign(client, "WF", 100, "wf-late")
    assert late.status_code == 409, late.text
    assert late.json()["code"] == "compensated" and late.json()["order_id"] == "wf-late"
    assert (await client.get("/api/carriers/assignments/wf-late", headers=SERVICE)).status_code == 404
    # The day's one place is still free for another order.
    other = await assign(client, "WF", 100, "wf-other")
    assert other.status_code == 201 and other.json()["carrier_id"] == carrier["id"]


async def test_live_assignment_is_refused_before_any_other_reason(client: httpx.AsyncClient) -> None:
    carrier = await new_carrier(client, countries=["BV"], max_weight_grams=1000, daily_capacity=1)
    first = await assign(client, "BV", 100, "bv-order")
    assert first.status_code == 201
    for country, weight in (("BV", 100), ("BV", 5000), ("HM", 100)):  # at capacity, overweight, unserved
        again = await assign(client, country, weight, "bv-order")
        assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"
        assert again.json()["code"] == "already_assigned" and again.json()["assignment_id"] == first.json()["id"]
        assert carrier["code"] in again.json()["detail"]


async def test_capacity_is_per_utc_day(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    await new_carrier(client, countries=["JE"], daily_capacity=1)
    today = service.utc_today()
    monkeypatch.setattr(service, "utc_today", lambda: today - timedelta(days=1))
    assert (await assign(client, "JE", 100)).status_code == 201
    assert (await assign(client, "JE", 100)).status_code == 409
    monkeypatch.undo()
    assert (await assign(client, "JE", 100)).status_code == 201


async def test_idempotent_assignment_and_release(client: httpx.AsyncClient) -> None:
    await new_carrier(client, countries=["GG"], daily_capacity=5)
    headers = {**SERVICE, "Idempotency-Key": "saga-1:assign_carrier"}
    body = {"order_id": "gg-order", "country": "GG", "weight_grams": 700}
    first = await client.post("/api/carriers/assignments", json=body, headers=headers)
    again = await client.post("/api/carriers/assignments", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and again.headers.get("idempotent-replayed") == "true"
    other = await client.post("/api/carriers/assignments", json={**body, "weight_grams": 701}, headers=headers)
    assert other.status_code == 422

    release_headers = {**SERVICE, "Idempotency-Key": "saga-1:assign_carrier:compensate"}
    released = await client.post("/api/carriers/assignments/gg-order/release", headers=release_headers)
    replayed = await client.post("/api/carriers/assignments/gg-order/release", headers=release_headers)
    assert released.json()["status"] == "RELEASED" and replayed.json() == released.json()
    assert replayed.headers.get("idempotent-replayed") == "true"


async def test_idempotent_refusal_is_replayed(client: httpx.AsyncClient) -> None:
    headers = {**SERVICE, "Idempotency-Key": "saga-2:assign_carrier"}
    first = await assign(client, "AQ", 100, "aq-order", headers=headers)
    await new_carrier(client, countries=["AQ"])
    again = await assign(client, "AQ", 100, "aq-order", headers=headers)
    assert first.status_code == again.status_code == 409
    assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"


@pytest.mark.parametrize("body", [
    {},
    {"country": "IS", "weight_grams": 100},
    {"order_id": "o", "weight_grams": 100},
    {"order_id": "o", "country": "IS"},
    {"order_id": "o", "country": "IS", "weight_grams": -1},
    {"order_id": "o", "country": "IS", "weight_grams": 0},
    {"order_id": "o", "country": "IS", "weight_grams": 1.5},
    {"order_id": "o", "country": "IS", "weight_grams": "100"},
    {"order_id": "o", "country": "IS", "weight_grams": 10**12},
    {"order_id": "o", "country": "is", "weight_grams": 100},
    {"order_id": "o", "country": "ISL", "weight_grams": 100},
    {"order_id": "o", "country": 12, "weight_grams": 100},
    {"order_id": "", "country": "IS", "weight_grams": 100},
    {"order_id": 5, "country": "IS", "weight_grams": 100},
    {"order_id": "o", "country": "IS", "weight_grams": 100, "extra": True},
])
async def test_bad_assignment_bodies_are_422(client: httpx.AsyncClient, body: dict) -> None:
    response = await client.post("/api/carriers/assignments", json=body, headers=SERVICE)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_non_json_body_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/carriers/assignments", content=b"not json",
                                 headers={**SERVICE, "content-type": "application/json"})
    assert response.status_code == 422


async def test_assignment_endpoints_need_privilege(client: httpx.AsyncClient) -> None:
    assert (await assign(client, "IS", 100, headers=CUSTOMER)).status_code == 403
    assert (await client.post("/api/carriers/assignments/x/release", headers=CUSTOMER)).status_code == 403
    assert (await client.get("/api/carriers/assignments/x", headers=CUSTOMER)).status_code == 403
    assert (await client.post("/api/carriers/assignments/x/release")).status_code == 401
    assert (await assign(client, "IS", 100, headers=ADMIN)).status_code in (201, 409)


# --- concurrency: a real server, requests that truly overlap --------------------------------------------------

@pytest.fixture(scope="module")
async def server_url(served: tuple[FastAPI, httpx.AsyncClient]) -> AsyncIterator[str]:
    """The same app (lifespan already running) behind a real uvicorn server on a free port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(served[0], host="127.0.0.1", port=port, lifespan="off",
                                           log_config=None, access_log=False))
    task = asyncio.create_task(server.serve())
    for _ in range(1000):  # up to 10 s
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_capacity_holds_under_concurrent_assignments(client: httpx.AsyncClient, server_url: str) -> None:
    cheap = await new_carrier(client, countries=["NZ"], daily_capacity=3, base_price_minor=100)
    dear = await new_carrier(client, countries=["NZ"], daily_capacity=5, base_price_minor=900)
    async with httpx.AsyncClient(base_url=server_url, timeout=60) as http:
        responses = await asyncio.gather(*[
            http.post("/api/carriers/assignments", json={"order_id": f"nz-{i}", "country": "NZ", "weight_grams": 500},
                      headers={**SERVICE, "Idempotency-Key": f"nz-{i}"})
            for i in range(20)
        ])
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 8 + [409] * 12, [r.text for r in responses if r.status_code not in (201, 409)]
    codes = [r.json()["carrier_code"] for r in responses if r.status_code == 201]
    assert codes.count(cheap["code"]) == 3 and codes.count(dear["code"]) == 5
    assert all(r.json()["code"] == "at_capacity" for r in responses if r.status_code == 409)


async def daily_load(app: FastAPI, carrier_id: str) -> tuple[int, int]:
    """The carrier's counter for today, and its count of today's live assignments: the two must agree."""
    day = service.utc_today()
    async with app.state.db.transaction() as tx:
        counter = await tx.fetchval(select(service.loads.c.assigned).where(
            service.loads.c.carrier_id == carrier_id, service.loads.c.day == day))
        live = await tx.fetchval(select(func.count()).select_from(service.assignments).where(
            service.assignments.c.carrier_id == carrier_id, service.assignments.c.service_day == day,
            service.assignments.c.status == "ASSIGNED"))
    return counter or 0, live


async def test_one_carrier_takes_exactly_its_capacity_under_concurrency(
        served: tuple[FastAPI, httpx.AsyncClient], server_url: str) -> None:
    app, client = served
    carrier = await new_carrier(client, countries=["PN"], daily_capacity=4)
    outbox = await OutboxWatch.of(app)
    async with httpx.AsyncClient(base_url=server_url, timeout=60) as http:
        responses = await asyncio.gather(*[
            http.post("/api/carriers/assignments", json={"order_id": f"pn-{i}", "country": "PN", "weight_grams": 100},
                      headers=SERVICE)
            for i in range(16)
        ])
    assert sorted(r.status_code for r in responses) == [201] * 4 + [409] * 12, [r.text for r in responses]
    assert await daily_load(app, carrier["id"]) == (4, 4)
    async with httpx.AsyncClient(base_url=server_url, timeout=60) as http:
        releases = await asyncio.gather(*[
            http.post(f"/api/carriers/assignments/pn-{i}/release", headers=SERVICE) for i in range(16)
        ])
    assert sorted(r.json()["status"] for r in releases) == ["NONE"] * 12 + ["RELEASED"] * 4
    assert await daily_load(app, carrier["id"]) == (0, 0)
    # Four assignments and four releases, each said once; the refusals and the empty releases say nothing.
    assigned = {r.json()["order_id"] for r in responses if r.status_code == 201}
    said = await outbox.new()
    assert sorted(subject for kind, subject, _, _ in said if kind == "carrier.assigned.v1") == sorted(assigned)
    assert sorted(subject for kind, subject, _, _ in said if kind == "carrier.released.v1") == sorted(assigned)
    assert len(said) == 8


async def test_assignment_that_waited_for_the_locks_counts_the_one_committed_meanwhile(
        served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    """The waiting assignment read the loads before the locks were granted; the cheap carrier filled meanwhile."""
    app, client = served
    cheap = await new_carrier(client, countries=["NU"], daily_capacity=1, base_price_minor=100)
    dear = await new_carrier(client, countries=["NU"], daily_capacity=1, base_price_minor=900)
    async with app.state.db.transaction() as tx:
        held = await service.assign_carrier(
            tx, AssignmentRequest(order_id="nu-first", country="NU", weight_grams=100))
        assert held.carrier_code == cheap["code"]
        waiting = asyncio.create_task(assign(client, "NU", 100, "nu-second"))
        await asyncio.sleep(0.5)  # the second assignment is blocked on the carrier locks held here
        assert not waiting.done()
    second = await waiting
    assert second.status_code == 201, second.text
    assert second.json()["carrier_code"] == dear["code"]
    assert await daily_load(app, cheap["id"]) == (1, 1) and await daily_load(app, dear["id"]) == (1, 1)
    third = await assign(client, "NU", 100, "nu-third")
    assert third.status_code == 409 and third.json()["code"] == "at_capacity"


async def test_concurrent_assignments_of_one_order_keep_one(client: httpx.AsyncClient, server_url: str) -> None:
    await new_carrier(client, countries=["AU"], daily_capacity=50)
    async with httpx.AsyncClient(base_url=server_url, timeout=60) as http:
        responses = await asyncio.gather(*[
            http.post("/api/carriers/assignments", json={"order_id": "au-order", "country": "AU", "weight_grams": 100},
                      headers={**SERVICE, "Idempotency-Key": f"au-{i}"})
            for i in range(8)
        ])
    assert sorted(r.status_code for r in responses) == [201] + [409] * 7
    released = await client.post("/api/carriers/assignments/au-order/release", headers=SERVICE)
    assert released.json()["status"] == "RELEASED"


async def test_concurrent_releases_free_one_place(client: httpx.AsyncClient, server_url: str) -> None:
    await new_carrier(client, countries=["TK"], daily_capacity=1)
    assert (await assign(client, "TK", 100, "tk-order")).status_code == 201
    async with httpx.AsyncClient(base_url=server_url, timeout=60) as http:
        responses = await asyncio.gather(*[
            http.post("/api/carriers/assignments/tk-order/release", headers={**SERVICE, "Idempotency-Key": f"tk-{i}"})
            for i in range(6)
        ])
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert sorted(r.json()["status"] for r in responses) == ["NONE"] * 5 + ["RELEASED"]
    assert (await assign(client, "TK", 100, "tk-other")).status_code == 201
    assert (await assign(client, "TK", 100, "tk-third")).status_code == 409


# --- events: every change is in the outbox, written with it (shared/bus.py) ----------------------------------

async def test_assignment_and_release_are_events_once(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = served
    carrier = await new_carrier(client, countries=["CK"], daily_capacity=1, base_price_minor=450,
                                price_per_kg_minor=100)
    outbox = await OutboxWatch.of(app)
    order_id = f"ck-{uuid.uuid4().hex[:8]}"
    headers = {**SERVICE, "Idempotency-Key": f"{order_id}:assign_carrier"}
    for _ in range(2):  # the step, then its replay
        assert (await assign(client, "CK", 1500, order_id, headers=headers)).status_code == 201
    assert await outbox.new() == [("carrier.assigned.v1", order_id, order_id, {
        "order_id": order_id, "carrier_code": carrier["code"], "price_minor": 450 + 2 * 100, "currency": "EUR"})]
    refused = [await assign(client, "CK", 100, order_id),  # assigned already
               await assign(client, "CK", 100),  # at capacity
               await assign(client, "KP", 100),  # unserved
               await assign(client, "CK", 0)]
    assert [response.status_code for response in refused] == [409, 409, 409, 422]
    assert await outbox.new() == []
    release = f"/api/carriers/assignments/{order_id}/release"
    key = {**SERVICE, "Idempotency-Key": f"{order_id}:assign_carrier:compensate"}
    statuses = [(await client.post(release, headers=sent)).json()["status"] for sent in (key, key, SERVICE)]
    assert statuses == ["RELEASED", "RELEASED", "NONE"]  # the compensation, its replay, a repeat with nothing left
    assert await outbox.new() == [("carrier.released.v1", order_id, order_id, {
        "order_id": order_id, "carrier_code": carrier["code"]})]
    assert (await client.post("/api/carriers/assignments/ck-never/release", headers=SERVICE)).json()[
        "status"] == "NONE"
    assert await outbox.new() == []


# --- seed -------------------------------------------------------------------------------------------------------

async def test_seed_upserts_demo_carriers_idempotently(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = served
    settings = Settings(database_url=app.state.settings.database_url, eureka_server_url="")
    await seed(settings)
    await seed(settings)
    codes = {c["code"] for c in DEMO_CARRIERS}
    listing = (await client.get("/api/carriers", params={"limit": 500}, headers=ADMIN)).json()
    seeded = [c for c in listing["items"] if c["code"] in codes]
    assert len(seeded) == len(codes) >= 4
    assert (await assign(client, "US", 2000)).status_code == 201
    assert (await assign(client, "DE", 2000)).status_code == 201
