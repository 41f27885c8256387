"""order_service rules, through its HTTP API on real PostgreSQL."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from order_service.app import create_app
from order_service.models import OrderLine
from order_service.settings import Settings
from tests.inprocess import ADMIN, SERVICE, bearer, service_fixtures

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}


served, client = service_fixtures(create_app, Settings, "cs_unit_order")


async def new_order(client: httpx.AsyncClient, customer: str = "cust-1") -> dict:
    response = await client.post("/api/orders", json={"customer_id": customer, "currency": "EUR",
                                                      "shipping_address": ADDRESS}, headers=SERVICE)
    assert response.status_code == 201, response.text
    return response.json()


async def test_create_add_lines_confirm(client: httpx.AsyncClient) -> None:
    order = await new_order(client)
    assert order["status"] == "PENDING"
    response = await client.post(f"/api/orders/{order['id']}/lines", headers=SERVICE, json={
        "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_minor": 1250}, {"sku": "SKU-2", "quantity": 1,
                                                                              "unit_price_minor": 99}]})
    assert response.status_code == 200, response.text
    assert response.json()["total_minor"] == 2599
    confirmed = await client.post(f"/api/orders/{order['id']}/confirm", headers=SERVICE)
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "CONFIRMED"
    more = await client.post(f"/api/orders/{order['id']}/lines", headers=SERVICE,
                             json={"lines": [{"sku": "SKU-3", "quantity": 1, "unit_price_minor": 1}]})
    assert more.status_code == 409
    assert more.headers["content-type"] == "application/problem+json"


async def test_confirm_cancelled_is_conflict(client: httpx.AsyncClient) -> None:
    order = await new_order(client)
    cancelled = await client.post(f"/api/orders/{order['id']}/cancel", json={"reason": "test"}, headers=SERVICE)
    assert cancelled.json()["status"] == "CANCELLED" and cancelled.json()["cancel_reason"] == "test"
    assert (await client.post(f"/api/orders/{order['id']}/confirm", headers=SERVICE)).status_code == 409


async def test_remove_lines_then_cancel(client: httpx.AsyncClient) -> None:
    order = await new_order(client)
    added = await client.post(f"/api/orders/{order['id']}/lines", headers=SERVICE,
                              json={"lines": [{"sku": "SKU-1", "quantity": 3, "unit_price_minor": 10}]})
    line_id = added.json()["lines"][0]["id"]
    # One line is an operator's to remove (the saga's service token removes all of them, as its compensation).
    refused = await client.delete(f"/api/orders/{order['id']}/lines/{line_id}", headers=SERVICE)
    assert refused.status_code == 403, refused.text
    removed = await client.delete(f"/api/orders/{order['id']}/lines/{line_id}", headers=ADMIN)
    assert removed.status_code == 200 and removed.json()["lines"] == []
    assert (await client.delete(f"/api/orders/{order['id']}/lines", headers=SERVICE)).status_code == 200


async def test_customer_sees_only_own_orders(client: httpx.AsyncClient) -> None:
    mine = await client.post("/api/orders", json={"currency": "EUR"}, headers=bearer("alice"))
    assert mine.status_code == 201 and mine.json()["customer_id"] == "alice"
    theirs = await new_order(client, "bob")
    assert (await client.get(f"/api/orders/{theirs['id']}", headers=bearer("alice"))).status_code == 404
    listing = (await client.get("/api/orders", headers=bearer("alice"))).json()
    assert {o["customer_id"] for o in listing["items"]} == {"alice"}
    forged = await client.post("/api/orders", json={"customer_id": "bob"}, headers=bearer("alice"))
    assert forged.status_code == 403
    lines = await client.post(f"/api/orders/{mine.json()['id']}/lines", headers=bearer("alice"),
                              json={"lines": [{"sku": "X", "quantity": 1, "unit_price_minor": 0}]})
    assert lines.status_code == 403


async def test_list_filters_and_pagination(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await new_order(client, "paged")
    page = (await client.get("/api/orders", params={"customer_id": "paged", "limit": 2}, headers=ADMIN)).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    pending = (await client.get("/api/orders", params={"customer_id": "paged", "status": "CONFIRMED"},
                                headers=ADMIN)).json()
    assert pending["total"] == 0


@pytest.mark.parametrize("body", [
    {},
    {"customer_id": "c", "currency": "euro"},
    {"customer_id": "c", "currency": 5},
    {"customer_id": "c", "shipping_address": {"name": "x"}},
    {"customer_id": "c", "unknown": 1},
])
async def test_bad_create_bodies_are_422(client: httpx.AsyncClient, body: dict) -> None:
    response = await client.post("/api/orders", json=body, headers=SERVICE)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("lines", [[], [{"sku": "A", "quantity": -1, "unit_price_minor": 1}],
                                   [{"sku": "A", "quantity": 1, "unit_price_minor": 1.5}],
                                   [{"sku": "A", "quantity": "2", "unit_price_minor": 1}]])
async def test_bad_lines_are_422(client: httpx.AsyncClient, lines: list) -> None:
    order = await new_order(client)
    response = await client.post(f"/api/orders/{order['id']}/lines", json={"lines": lines}, headers=SERVICE)
    assert response.status_code == 422, response.text


async def test_unknown_order_404_and_no_token_401(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/orders/nope", headers=SERVICE)).status_code == 404
    response = await client.get("/api/orders/nope")
    assert response.status_code == 401 and response.headers["content-type"] == "application/problem+json"


async def test_idempotency_replay_and_mismatch(client: httpx.AsyncClient) -> None:
    headers = {**SERVICE, "Idempotency-Key": "order-key-1"}
    body = {"customer_id": "idem", "currency": "EUR"}
    first = await client.post("/api/orders", json=body, headers=headers)
    again = await client.post("/api/orders", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    listing = (await client.get("/api/orders", params={"customer_id": "idem"}, headers=ADMIN)).json()
    assert listing["total"] == 1
    other = await client.post("/api/orders", json={**body, "currency": "USD"}, headers=headers)
    assert other.status_code == 422


async def test_idempotent_refusal_is_replayed(client: httpx.AsyncClient) -> None:
    order = await new_order(client)
    await client.post(f"/api/orders/{order['id']}/cancel", headers=SERVICE)
    headers = {**SERVICE, "Idempotency-Key": f"confirm-{order['id']}"}
    first = await client.post(f"/api/orders/{order['id']}/confirm", headers=headers)
    again = await client.post(f"/api/orders/{order['id']}/confirm", headers=headers)
    assert first.status_code == again.status_code == 409
    assert again.headers.get("idempotent-replayed") == "true"


async def test_nul_bytes_and_long_ids_are_4xx(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/orders/abc%00def", headers=SERVICE)).status_code == 400
    assert (await client.get("/api/orders", params={"customer_id": "a\x00b"}, headers=ADMIN)).status_code == 400
    response = await client.post("/api/orders", json={"customer_id": "c" * 65}, headers=SERVICE)
    assert response.status_code == 422


def one_line(sku: str) -> dict:
    return {"lines": [{"sku": sku, "quantity": 1, "unit_price_minor": 10}]}


async def order_with_a_line(client: httpx.AsyncClient) -> str:
    order = await new_order(client)
    await client.post(f"/api/orders/{order['id']}/lines", headers=SERVICE, json=one_line("X"))
    return str(order["id"])


async def test_concurrent_add_lines_keep_every_line_and_distinct_positions(
    served: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = served
    order = await new_order(client)
    two_lines = [{"lines": [{"sku": f"{sku}{i}", "quantity": 1, "unit_price_minor": 1} for sku in "AB"]}
                 for i in range(8)]
    answers = await asyncio.gather(*(client.post(f"/api/orders/{order['id']}/lines", headers=SERVICE, json=body)
                                     for body in two_lines))
    assert [a.status_code for a in answers] == [200] * 8
    # Each answer shows the lines added before it, then its own two: the adds were serialised.
    assert sorted(len(a.json()["lines"]) for a in answers) == list(range(2, 17, 2))
    final = (await client.get(f"/api/orders/{order['id']}", headers=SERVICE)).json()
    assert len(final["lines"]) == 16 and final["total_minor"] == 16
    async with app.state.db.transaction() as tx:
        positions = [row["position"] for row in await tx.fetch(
            select(OrderLine.position).where(OrderLine.order_id == order["id"]).order_by(OrderLine.position))]
    assert positions == list(range(1, 17))


async def test_lines_after_their_compensation_are_refused(client: httpx.AsyncClient) -> None:
    """The compensation fence: a late add_order_lines (the saga removed the lines while it still ran) is
    refused by the order service itself, though the order is still PENDING until its cancel arrives."""
    order_id = await order_with_a_line(client)
    removed = await client.delete(f"/api/orders/{order_id}/lines", headers=SERVICE)
    assert removed.status_code == 200 and removed.json()["lines"] == []
    late = await client.post(f"/api/orders/{order_id}/lines", headers=SERVICE, json=one_line("Y"))
    assert late.status_code == 409 and late.json()["code"] == "compensated", late.text
    final = (await client.get(f"/api/orders/{order_id}", headers=SERVICE)).json()
    assert final["status"] == "PENDING" and final["lines"] == []


async def test_confirm_racing_the_lines_compensation_never_confirms_an_empty_order(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(10):
        order_id = await order_with_a_line(client)
        confirm, remove = await asyncio.gather(
            client.post(f"/api/orders/{order_id}/confirm", headers=SERVICE),
            client.delete(f"/api/orders/{order_id}/lines", headers=SERVICE))
        final = (await client.get(f"/api/orders/{order_id}", headers=SERVICE)).json()
        if confirm.status_code == 200:
            assert remove.status_code == 409
            assert final["status"] == "CONFIRMED" and len(final["lines"]) == 1
        else:
            assert confirm.status_code == 409 and confirm.json()["order_status"] == "PENDING"
            assert remove.status_code == 200
            assert final["status"] == "PENDING" and final["lines"] == []


async def test_confirm_racing_cancel_has_one_winner(client: httpx.AsyncClient) -> None:
    for _ in range(10):
        order_id = await order_with_a_line(client)
        confirm, cancel = await asyncio.gather(
            client.post(f"/api/orders/{order_id}/confirm", headers=SERVICE),
            client.post(f"/api/orders/{order_id}/cancel", headers=SERVICE))
        assert sorted((confirm.status_code, cancel.status_code)) == [200, 409]
        final = (await client.get(f"/api/orders/{order_id}", headers=SERVICE)).json()
        assert final["status"] == ("CONFIRMED" if confirm.status_code == 200 else "CANCELLED")
        loser = cancel if confirm.status_code == 200 else confirm
        assert loser.json()["order_status"] == final["status"]


async def test_status_changes_touch_updated_at_and_line_changes_do_not(client: httpx.AsyncClient) -> None:
    order = await new_order(client)
    added = (await client.post(f"/api/orders/{order['id']}/lines", headers=SERVICE, json=one_line("X"))).json()
    assert added["updated_at"] == order["updated_at"]
    confirmed = (await client.post(f"/api/orders/{order['id']}/confirm", headers=SERVICE)).json()
    assert confirmed["updated_at"] > order["updated_at"] and confirmed["created_at"] == order["created_at"]
    again = (await client.post(f"/api/orders/{order['id']}/confirm", headers=SERVICE)).json()
    assert again == confirmed
