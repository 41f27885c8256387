"""order_service on the bus: what it says happened (its outbox), and what it learns (the parcel, the timeline)."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from order_service import service
from order_service.app import create_app
from order_service.settings import Settings
from shared import events
from shared.bus import Handler, outbox
from shared.db import Database, utc_now
from tests.inprocess import ADMIN, SERVICE, bearer, service_fixtures

served, client = service_fixtures(create_app, Settings, "cs_unit_order_events")
LINES = {"lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_minor": 1250}]}


def database(served: tuple[FastAPI, httpx.AsyncClient]) -> Database:
    return served[0].state.db


async def outbox_of(db: Database, order_id: str) -> list[events.CloudEvent]:
    async with db.transaction() as tx:
        rows = await tx.fetch(select(outbox.c.envelope).order_by(outbox.c.position))
    every = [events.CloudEvent.model_validate(row["envelope"]) for row in rows]
    return [event for event in every if event.orderid == order_id]


async def confirmed_order(client: httpx.AsyncClient, customer: str = "customer-1") -> str:
    order = (await client.post("/api/orders", json={"customer_id": customer}, headers=SERVICE)).json()
    assert (await client.post(f"/api/orders/{order['id']}/lines", json=LINES, headers=SERVICE)).status_code == 200
    assert (await client.post(f"/api/orders/{order['id']}/confirm", headers=SERVICE)).status_code == 200
    return str(order["id"])


def parcel_event(model: type[events.ShipmentEvent], order_id: str, at_offset_secs: float = 0) -> events.CloudEvent:
    data = model(order_id=order_id, shipment_id="ship-1", tracking_number="TRK-1")
    return events.envelope(data, "ship-1", time=utc_now() + timedelta(seconds=at_offset_secs), order_id=order_id)


async def apply(db: Database, handler: Handler, event: events.CloudEvent) -> None:
    async with db.transaction() as tx:
        await handler(tx, [event])


async def status_of(client: httpx.AsyncClient, order_id: str) -> str:
    return str((await client.get(f"/api/orders/{order_id}", headers=SERVICE)).json()["status"])


async def test_every_change_is_an_event_in_its_transaction(served, client: httpx.AsyncClient) -> None:
    order_id = await confirmed_order(client)
    written = await outbox_of(database(served), order_id)
    assert [event.type for event in written] == ["order.created.v1", "order.line_added.v1", "order.confirmed.v1"]
    assert {event.subject for event in written} == {order_id}
    assert written[1].data["total_minor"] == 2500 and written[1].data["skus"] == ["SKU-1"]
    assert written[2].data == {"order_id": order_id, "customer_id": "customer-1", "total_minor": 2500,
                               "currency": "EUR"}
    # A refusal (lines on a confirmed order) and a repeated confirmation say nothing more.
    assert (await client.post(f"/api/orders/{order_id}/lines", json=LINES, headers=SERVICE)).status_code == 409
    assert (await client.post(f"/api/orders/{order_id}/confirm", headers=SERVICE)).status_code == 200
    assert len(await outbox_of(database(served), order_id)) == 3


async def test_compensation_removes_lines_and_cancels_with_events(served, client: httpx.AsyncClient) -> None:
    order = (await client.post("/api/orders", json={"customer_id": "customer-1"}, headers=SERVICE)).json()
    await client.post(f"/api/orders/{order['id']}/lines", json=LINES, headers=SERVICE)
    assert (await client.delete(f"/api/orders/{order['id']}/lines", headers=SERVICE)).status_code == 200
    assert (await client.post(f"/api/orders/{order['id']}/cancel", json={"reason": "card declined"},
                              headers=SERVICE)).status_code == 200
    written = await outbox_of(database(served), order["id"])
    assert [event.type for event in written][-2:] == ["order.line_removed.v1", "order.cancelled.v1"]
    assert written[-1].data == {"order_id": order["id"], "reason": "card declined"}


async def test_the_order_follows_its_parcel_forward_only(served, client: httpx.AsyncClient) -> None:
    db = database(served)
    order_id = await confirmed_order(client)
    await apply(db, service.follow_parcel, parcel_event(events.ShipmentCreated, order_id))
    assert await status_of(client, order_id) == "CONFIRMED"
    await apply(db, service.follow_parcel, parcel_event(events.ShipmentDispatched, order_id))
    assert await status_of(client, order_id) == "SHIPPED"
    await apply(db, service.follow_parcel, parcel_event(events.ShipmentDelivered, order_id))
    assert await status_of(client, order_id) == "DELIVERED"
    # Late and repeated events change nothing, and the order says each move once.
    await apply(db, service.follow_parcel, parcel_event(events.ShipmentInTransit, order_id))
    await apply(db, service.follow_parcel, parcel_event(events.ShipmentDelivered, order_id))
    assert await status_of(client, order_id) == "DELIVERED"
    said = [event.type for event in await outbox_of(db, order_id)]
    assert said[-2:] == ["order.shipped.v1", "order.delivered.v1"] and said.count("order.delivered.v1") == 1
    # A delivered order's lines are not the compensation's to remove.
    assert (await client.delete(f"/api/orders/{order_id}/lines", headers=SERVICE)).status_code == 409


async def test_a_parcel_event_before_the_confirmation_waits_and_a_cancelled_order_ignores_it(
        served, client: httpx.AsyncClient) -> None:
    db = database(served)
    order = (await client.post("/api/orders", json={"customer_id": "customer-1"}, headers=SERVICE)).json()
    with pytest.raises(service.OrderNotConfirmedYet):
        await apply(db, service.follow_parcel, parcel_event(events.ShipmentDispatched, order["id"]))
    await client.post(f"/api/orders/{order['id']}/cancel", json={"reason": "x"}, headers=SERVICE)
    await apply(db, service.follow_parcel, parcel_event(events.ShipmentDelivered, order["id"]))
    assert await status_of(client, order["id"]) == "CANCELLED"


async def test_the_timeline_is_the_orders_events_in_time_order_for_its_customer(
        served, client: httpx.AsyncClient) -> None:
    db = database(served)
    order_id = await confirmed_order(client, customer="customer-7")
    later = parcel_event(events.ShipmentDelivered, order_id, at_offset_secs=5)
    earlier = parcel_event(events.ShipmentCreated, order_id, at_offset_secs=1)
    for event in (later, earlier, later, *await outbox_of(db, order_id)):  # a repeat is kept once
        await apply(db, service.record_in_timeline, event)
    answer = await client.get(f"/api/orders/{order_id}/timeline", headers=bearer("customer-7"))
    assert answer.status_code == 200, answer.text
    types = [event["type"] for event in answer.json()["events"]]
    assert types == ["order.created.v1", "order.line_added.v1", "order.confirmed.v1", "shipment.created.v1",
                     "shipment.delivered.v1"]
    assert (await client.get(f"/api/orders/{order_id}/timeline", headers=ADMIN)).status_code == 200
    other = await client.get(f"/api/orders/{order_id}/timeline", headers=bearer("customer-8"))
    assert other.status_code == 404 and other.headers["content-type"] == "application/problem+json"


async def test_a_sagas_event_from_before_its_order_joins_the_orders_timeline(served, client: httpx.AsyncClient) -> None:
    db = database(served)
    order_id = await confirmed_order(client, customer="customer-9")
    saga_id = "3f1c0d4e-0000-4000-8000-000000000001"
    started = events.envelope(events.SagaStarted(saga_id=saga_id, customer_id="customer-9", definition_version=1),
                              saga_id, time=utc_now() - timedelta(seconds=1))
    stepped = events.envelope(events.SagaStepSucceeded(saga_id=saga_id, order_id=order_id, step="create_order",
                                                       attempts=1), saga_id, time=utc_now(), order_id=order_id)
    unrelated = events.envelope(events.SagaStarted(saga_id="another", customer_id="c", definition_version=1),
                                "another", time=utc_now())
    for event in (started, stepped, unrelated):
        await apply(db, service.record_in_timeline, event)
    answer = await client.get(f"/api/orders/{order_id}/timeline", headers=bearer("customer-9"))
    assert [event["type"] for event in answer.json()["events"]] == ["saga.started.v1", "saga.step_succeeded.v1"]
