"""shipment_service rules, through its HTTP API on real PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

from shipment_service import service
from shipment_service.app import create_app
from shipment_service.settings import Settings
from tests.inprocess import ADMIN, SERVICE, OutboxWatch, Served, bearer, changed, service_fixtures

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
ALICE = bearer("alice")
BOB = bearer("bob")
TRACKING = re.compile(r"^CS[A-Z2-7]{12}$")


served, client = service_fixtures(create_app, Settings, "cs_unit_shipment")


async def new_shipment(client: httpx.AsyncClient, customer: str = "cust-1", order_id: str | None = None,
                       headers: dict[str, str] = SERVICE) -> dict:
    body = {"order_id": order_id or str(uuid.uuid4()), "customer_id": customer, "carrier_code": "DHL",
            "address": ADDRESS}
    response = await client.post("/api/shipments", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def set_status(client: httpx.AsyncClient, shipment_id: str, status: str, note: str | None = None,
                     headers: dict[str, str] = ADMIN) -> httpx.Response:
    body = {"status": status} if note is None else {"status": status, "note": note}
    return await client.post(f"/api/shipments/{shipment_id}/status", json=body, headers=headers)


async def test_create_gives_tracking_number_and_history(client: httpx.AsyncClient) -> None:
    shipment = await new_shipment(client, order_id="order-create")
    assert shipment["status"] == "CREATED" and shipment["order_id"] == "order-create"
    assert TRACKING.match(shipment["tracking_number"]), shipment["tracking_number"]
    assert shipment["address"]["country"] == "DE" and shipment["carrier_code"] == "DHL"
    assert [h["status"] for h in shipment["history"]] == ["CREATED"]
    got = await client.get(f"/api/shipments/{shipment['id']}", headers=SERVICE)
    assert got.status_code == 200 and got.json() == shipment


async def test_tracking_numbers_are_unique(client: httpx.AsyncClient) -> None:
    numbers = {(await new_shipment(client))["tracking_number"] for _ in range(25)}
    assert len(numbers) == 25


@pytest.fixture
def colliding_numbers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Make the generator hand out the numbers queued in the list first, then random ones."""
    queued: list[str] = []
    real = service.new_tracking_number
    monkeypatch.setattr(service, "new_tracking_number", lambda: queued.pop(0) if queued else real())
    yield queued


async def test_tracking_number_collision_is_retried(client: httpx.AsyncClient,
                                                    colliding_numbers: list[str]) -> None:
    taken = (await new_shipment(client))["tracking_number"]
    colliding_numbers.extend([taken, taken])
    shipment = await new_shipment(client)
    assert TRACKING.match(shipment["tracking_number"]) and shipment["tracking_number"] != taken
    assert colliding_numbers == []


async def test_endless_collisions_are_503_not_500(client: httpx.AsyncClient,
                                                  colliding_numbers: list[str]) -> None:
    taken = (await new_shipment(client))["tracking_number"]
    colliding_numbers.extend([taken] * 10)
    response = await client.post("/api/shipments", headers=SERVICE, json={
        "order_id": "unlucky", "customer_id": "c", "carrier_code": "DHL", "address": ADDRESS})
    assert response.status_code == 503 and response.headers["content-type"] == "application/problem+json"


async def test_one_live_shipment_per_order(client: httpx.AsyncClient) -> None:
    first = await new_shipment(client, order_id="order-live")
    second = await client.post("/api/shipments", headers={**SERVICE, "Idempotency-Key": "other-key"}, json={
        "order_id": "order-live", "customer_id": "cust-1", "carrier_code": "UPS", "address": ADDRESS})
    assert second.status_code == 409 and second.json()["shipment_id"] == first["id"]
    assert second.headers["content-type"] == "application/problem+json"
    cancelled = await client.post(f"/api/shipments/{first['id']}/cancel", headers=SERVICE)
    assert cancelled.status_code == 200
    again = await new_shipment(client, order_id="order-live")
    assert again["id"] != first["id"]


async def test_concurrent_creates_for_one_order_keep_one(client: httpx.AsyncClient) -> None:
    body = {"order_id": "order-race", "customer_id": "c", "carrier_code": "DHL", "address": ADDRESS}
    responses = await asyncio.gather(*[
        client.post("/api/shipments", json=body, headers={**SERVICE, "Idempotency-Key": f"race-{i}"})
        for i in range(6)
    ])
    assert sorted(r.status_code for r in responses) == [201] + [409] * 5, [r.text for r in responses]


async def test_full_journey_and_history_notes(client: httpx.AsyncClient) -> None:
    shipment = await new_shipment(client)
    for status in ("DISPATCHED", "IN_TRANSIT", "DELIVERED"):
        response = await set_status(client, shipment["id"], status, note=f"scan {status.lower()}")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == status
    history = response.json()["history"]
    assert [h["status"] for h in history] == ["CREATED", "DISPATCHED", "IN_TRANSIT", "DELIVERED"]
    assert history[-1]["note"] == "scan delivered" and history[0]["note"] is None
    assert history[0]["at"] <= history[-1]["at"]


@pytest.mark.parametrize(("path", "target"), [
    ([], "IN_TRANSIT"), ([], "DELIVERED"), ([], "CREATED"),
    (["DISPATCHED"], "DISPATCHED"), (["DISPATCHED"], "CREATED"), (["DISPATCHED"], "CANCELLED"),
    (["DISPATCHED"], "DELIVERED"), (["DISPATCHED", "IN_TRANSIT"], "DISPATCHED"),
    (["DISPATCHED", "IN_TRANSIT", "DELIVERED"], "CANCELLED"),
    (["DISPATCHED", "IN_TRANSIT", "DELIVERED"], "IN_TRANSIT"),
    (["CANCELLED"], "DISPATCHED"), (["CANCELLED"], "CREATED"),
])
async def test_illegal_transitions_are_409(client: httpx.AsyncClient, path: list[str], target: str) -> None:
    shipment = await new_shipment(client)
    for status in path:
        assert (await set_status(client, shipment["id"], status)).status_code == 200
    response = await set_status(client, shipment["id"], target)
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["shipment_status"] == (path[-1] if path else "CREATED")


async def test_cancel_before_dispatch_only(client: httpx.AsyncClient) -> None:
    shipment = await new_shipment(client)
    cancelled = await client.post(f"/api/shipments/{shipment['id']}/cancel", json={"reason": "changed mind"},
                                  headers=SERVICE)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    assert cancelled.json()["history"][-1]["note"] == "changed mind"
    again = await client.post(f"/api/shipments/{shipment['id']}/cancel", headers=SERVICE)
    assert again.status_code == 200 and len(again.json()["history"]) == 2

    dispatched = await new_shipment(client)
    await set_status(client, dispatched["id"], "DISPATCHED")
    refused = await client.post(f"/api/shipments/{dispatched['id']}/cancel", headers=SERVICE)
    assert refused.status_code == 409 and refused.json()["shipment_status"] == "DISPATCHED"


async def test_compensation_cancels_by_order(client: httpx.AsyncClient) -> None:
    shipment = await new_shipment(client, order_id="order-comp")
    headers = {**SERVICE, "Idempotency-Key": "saga-9:create_shipment:compensate"}
    first = await client.post("/api/shipments/orders/order-comp/cancel", headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "CANCELLED" and first.json()["shipment"]["id"] == shipment["id"]
    cancelled = first.json()["shipment"]
    assert cancelled["status"] == "CANCELLED" and cancelled["updated_at"] > shipment["updated_at"]
    assert cancelled["history"][0] == shipment["history"][0]
    assert [(h["status"], h["note"]) for h in cancelled["history"]] == [("CREATED", None),
                                                                        ("CANCELLED", "order compensated")]
    assert (await client.get(f"/api/shipments/{shipment['id']}", headers=SERVICE)).json() == cancelled
    replayed = await client.post("/api/shipments/orders/order-comp/cancel", headers=headers)
    assert replayed.json() == first.json() and replayed.headers.get("idempotent-replayed") == "true"
    other_key = await client.post("/api/shipments/orders/order-comp/cancel", headers=SERVICE)
    assert other_key.status_code == 200 and other_key.json() == {"order_id": "order-comp", "status": "NONE",
                                                                 "shipment": None}


async def test_compensation_without_shipment_is_none(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/shipments/orders/never-shipped/cancel", json={"reason": "saga failed"},
                                 headers=SERVICE)
    assert response.status_code == 200 and response.json()["status"] == "NONE"


async def test_shipment_after_the_compensation_is_refused(client: httpx.AsyncClient) -> None:
    """The compensation fence: a late create_shipment (the saga timed out waiting for it and cancelled the
    order's shipment) is refused by the shipment service itself: nothing ships for a cancelled order."""
    compensated = await client.post("/api/shipments/orders/order-late/cancel", headers=SERVICE)
    assert compensated.status_code == 200 and compensated.json()["status"] == "NONE"
    body = {"order_id": "order-late", "customer_id": "cust-1", "carrier_code": "DHL", "address": ADDRESS}
    late = await client.post("/api/shipments", json=body, headers=SERVICE)
    assert late.status_code == 409, late.text
    assert late.json()["code"] == "compensated" and late.json()["order_id"] == "order-late"
    listed = await client.get("/api/shipments", params={"order_id": "order-late"}, headers=SERVICE)
    assert listed.json()["total"] == 0


async def test_compensation_after_dispatch_is_409(client: httpx.AsyncClient) -> None:
    shipment = await new_shipment(client, order_id="order-gone")
    await set_status(client, shipment["id"], "DISPATCHED")
    response = await client.post("/api/shipments/orders/order-gone/cancel", headers=SERVICE)
    assert response.status_code == 409 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["shipment_status"] == "DISPATCHED" and shipment["id"] in response.json()["detail"]


async def test_concurrent_compensations_cancel_once(client: httpx.AsyncClient) -> None:
    shipment = await new_shipment(client, order_id="order-comp-race")
    responses = await asyncio.gather(*[
        client.post("/api/shipments/orders/order-comp-race/cancel", json={"reason": f"saga failed {i}"},
                    headers={**SERVICE, "Idempotency-Key": f"comp-race-{i}"})
        for i in range(6)
    ])
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert sorted(r.json()["status"] for r in responses) == ["CANCELLED"] + ["NONE"] * 5
    got = (await client.get(f"/api/shipments/{shipment['id']}", headers=SERVICE)).json()
    assert [h["status"] for h in got["history"]] == ["CREATED", "CANCELLED"]


async def test_customers_see_and_cancel_only_their_own(client: httpx.AsyncClient) -> None:
    mine = await new_shipment(client, customer="alice")
    theirs = await new_shipment(client, customer="bob")
    assert (await client.get(f"/api/shipments/{mine['id']}", headers=ALICE)).status_code == 200
    assert (await client.get(f"/api/shipments/{theirs['id']}", headers=ALICE)).status_code == 404
    tracked = await client.get(f"/api/shipments/tracking/{mine['tracking_number'].lower()}", headers=ALICE)
    assert tracked.status_code == 200 and tracked.json()["id"] == mine["id"]
    hidden = await client.get(f"/api/shipments/tracking/{theirs['tracking_number']}", headers=ALICE)
    assert hidden.status_code == 404
    listing = (await client.get("/api/shipments", params={"customer_id": "bob"}, headers=ALICE)).json()
    assert listing["total"] >= 1 and {s["customer_id"] for s in listing["items"]} == {"alice"}

    assert (await client.post(f"/api/shipments/{theirs['id']}/cancel", headers=ALICE)).status_code == 404
    # Not on its own, even their own: the order would stay paid with its stock reserved (issue 15, item 10).
    own = await client.post(f"/api/shipments/{mine['id']}/cancel", headers=ALICE)
    assert own.status_code == 409 and own.json()["shipment_status"] == "CREATED"
    assert (await client.get(f"/api/shipments/{mine['id']}", headers=ALICE)).json()["status"] == "CREATED"
    assert (await client.get(f"/api/shipments/{theirs['id']}", headers=BOB)).json()["status"] == "CREATED"


async def test_customers_cannot_create_or_move_shipments(client: httpx.AsyncClient) -> None:
    body = {"order_id": "o-cust", "customer_id": "alice", "carrier_code": "DHL", "address": ADDRESS}
    assert (await client.post("/api/shipments", json=body, headers=ALICE)).status_code == 403
    mine = await new_shipment(client, customer="alice")
    assert (await set_status(client, mine["id"], "DISPATCHED", headers=ALICE)).status_code == 403
    # Nor does the saga's service token: no step of the saga moves a parcel (an operator's action).
    assert (await set_status(client, mine["id"], "DISPATCHED", headers=SERVICE)).status_code == 403
    assert (await client.post(f"/api/shipments/orders/{mine['order_id']}/cancel", headers=ALICE)).status_code == 403
    assert (await set_status(client, mine["id"], "DISPATCHED", headers=ADMIN)).status_code == 200


async def test_no_token_is_401(client: httpx.AsyncClient) -> None:
    for response in (await client.get("/api/shipments"), await client.get("/api/shipments/x"),
                     await client.post("/api/shipments", json={}), await client.post("/api/shipments/x/cancel"),
                     await client.get("/api/shipments/tracking/CSAAAAAAAAAAAA")):
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"


async def test_unknown_ids_are_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/shipments/nope", headers=SERVICE)).status_code == 404
    assert (await client.get("/api/shipments/tracking/CSAAAAAAAAAAAA", headers=SERVICE)).status_code == 404
    assert (await client.post("/api/shipments/nope/cancel", headers=SERVICE)).status_code == 404
    assert (await set_status(client, "nope", "DISPATCHED")).status_code == 404


async def test_list_filters_and_pagination(client: httpx.AsyncClient) -> None:
    shipments = [await new_shipment(client, customer="paged") for _ in range(3)]
    await set_status(client, shipments[0]["id"], "DISPATCHED")
    page = (await client.get("/api/shipments", params={"customer_id": "paged", "limit": 2}, headers=ADMIN)).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    dispatched = (await client.get("/api/shipments", params={"customer_id": "paged", "status": "DISPATCHED"},
                                   headers=ADMIN)).json()
    assert [s["id"] for s in dispatched["items"]] == [shipments[0]["id"]]
    by_order = (await client.get("/api/shipments", params={"order_id": shipments[1]["order_id"]},
                                 headers=SERVICE)).json()
    assert [s["id"] for s in by_order["items"]] == [shipments[1]["id"]]
    for params in ({"status": "LOST"}, {"limit": 0}, {"limit": "many"}, {"offset": -1}):
        assert (await client.get("/api/shipments", params=params, headers=ADMIN)).status_code == 422


async def test_idempotency_replay_and_mismatch(client: httpx.AsyncClient) -> None:
    headers = {**SERVICE, "Idempotency-Key": "saga-3:create_shipment"}
    body = {"order_id": "order-idem", "customer_id": "idem", "carrier_code": "DHL", "address": ADDRESS}
    first = await client.post("/api/shipments", json=body, headers=headers)
    again = await client.post("/api/shipments", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and again.headers.get("idempotent-replayed") == "true"
    other = await client.post("/api/shipments", json={**body, "carrier_code": "UPS"}, headers=headers)
    assert other.status_code == 422
    listing = (await client.get("/api/shipments", params={"order_id": "order-idem"}, headers=ADMIN)).json()
    assert listing["total"] == 1


async def test_idempotent_status_change_is_replayed_not_reapplied(client: httpx.AsyncClient) -> None:
    shipment = await new_shipment(client)
    headers = {**ADMIN, "Idempotency-Key": f"dispatch-{shipment['id']}"}
    first = await set_status(client, shipment["id"], "DISPATCHED", headers=headers)
    again = await set_status(client, shipment["id"], "DISPATCHED", headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    assert len(again.json()["history"]) == 2


# --- events: every change is in the outbox, written with it (shared/bus.py) ----------------------------------


def parcel_event(kind: str, shipment: dict, note: str | None = None) -> tuple:
    """What a shipment event says: about the shipment (its subject), for its order (orderid)."""
    return (f"shipment.{kind}.v1", shipment["id"], shipment["order_id"], {
        "order_id": shipment["order_id"], "shipment_id": shipment["id"],
        "tracking_number": shipment["tracking_number"], "note": note})


async def test_a_parcels_journey_is_one_event_per_status(served: Served) -> None:
    app, client = served
    outbox = await OutboxWatch.of(app)
    order_id = str(uuid.uuid4())
    body = {"order_id": order_id, "customer_id": "alice", "carrier_code": "DHL", "address": ADDRESS}
    key = {**SERVICE, "Idempotency-Key": f"{order_id}:create_shipment"}
    for _ in range(2):  # the step, then its replay
        created = await client.post("/api/shipments", json=body, headers=key)
        assert created.status_code == 201
    shipment = created.json()
    assert await outbox.new() == [parcel_event("created", shipment)]
    for status, kind in (("DISPATCHED", "dispatched"), ("IN_TRANSIT", "in_transit"), ("DELIVERED", "delivered")):
        headers = {**ADMIN, "Idempotency-Key": f"{shipment['id']}:{status}"}
        for _ in range(2):  # an operator's scan, then its replay
            assert (await set_status(client, shipment["id"], status, f"scan {kind}", headers)).status_code == 200
        assert await outbox.new() == [parcel_event(kind, shipment, f"scan {kind}")]
    refused = [
        await set_status(client, shipment["id"], "CANCELLED"),  # delivered is final
        await set_status(client, "nope", "DISPATCHED"),
        await set_status(client, shipment["id"], "LOST"),
        await client.post(f"/api/shipments/{shipment['id']}/cancel", headers=SERVICE),
        await client.post(f"/api/shipments/orders/{order_id}/cancel", headers=SERVICE),  # gone: not cancellable
        await client.post("/api/shipments", json=body, headers=SERVICE),  # a live shipment already
    ]
    assert [response.status_code for response in refused] == [409, 404, 422, 409, 409, 409]
    assert await outbox.new() == []


async def test_cancellations_are_events_once(served: Served) -> None:
    app, client = served
    by_operator = await new_shipment(client)
    by_saga = await new_shipment(client)
    outbox = await OutboxWatch.of(app)
    for _ in range(2):  # the second finds it cancelled already: nothing changes, nothing is said
        cancelled = await client.post(f"/api/shipments/{by_operator['id']}/cancel", json={"reason": "address unknown"},
                                      headers=ADMIN)
        assert cancelled.json()["status"] == "CANCELLED"
    assert await outbox.new() == [parcel_event("cancelled", by_operator, "address unknown")]

    compensation = f"/api/shipments/orders/{by_saga['order_id']}/cancel"
    key = {**SERVICE, "Idempotency-Key": f"{by_saga['order_id']}:create_shipment:compensate"}
    answers = await asyncio.gather(*(client.post(compensation, headers=headers)
                                     for headers in (key, SERVICE, SERVICE, SERVICE)))
    assert sorted(answer.json()["status"] for answer in answers) == ["CANCELLED", "NONE", "NONE", "NONE"]
    assert (await client.post(compensation, headers=key)).headers.get("idempotent-replayed") == "true"
    assert await outbox.new() == [parcel_event("cancelled", by_saga, "order compensated")]
    never = await client.post("/api/shipments/orders/never-shipped-either/cancel", headers=SERVICE)
    assert never.json()["status"] == "NONE"
    assert await outbox.new() == []


@pytest.mark.parametrize("change", [
    {"order_id": None}, {"customer_id": None}, {"carrier_code": None}, {"address": None},
    {"order_id": ""}, {"order_id": 12}, {"customer_id": "   "}, {"customer_id": 7}, {"carrier_code": "dhl"},
    {"carrier_code": ""}, {"address": {"name": "x"}}, {"address": {**ADDRESS, "country": "Germany"}},
    {"address": {**ADDRESS, "country": "de"}}, {"address": "1 Main St"}, {"extra": 1},
])
async def test_bad_create_bodies_are_422(client: httpx.AsyncClient, change: dict) -> None:
    body: dict = {"order_id": str(uuid.uuid4()), "customer_id": "c", "carrier_code": "DHL", "address": ADDRESS}
    response = await client.post("/api/shipments", json=changed(body, change), headers=SERVICE)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("body", [{}, {"status": "LOST"}, {"status": "dispatched"}, {"status": 3},
                                  {"status": "DISPATCHED", "note": "x" * 501},
                                  {"status": "DISPATCHED", "extra": 1}])
async def test_bad_status_bodies_are_422(client: httpx.AsyncClient, body: dict) -> None:
    shipment = await new_shipment(client)
    response = await client.post(f"/api/shipments/{shipment['id']}/status", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text


async def test_bad_cancel_bodies_are_422(client: httpx.AsyncClient) -> None:
    shipment = await new_shipment(client)
    for body in ({"reason": ""}, {"reason": 5}, {"why": "x"}):
        response = await client.post(f"/api/shipments/{shipment['id']}/cancel", json=body, headers=SERVICE)
        assert response.status_code == 422, response.text
        response = await client.post(f"/api/shipments/orders/{shipment['order_id']}/cancel", json=body,
                                     headers=SERVICE)
        assert response.status_code == 422, response.text
    assert (await client.post("/api/shipments", content=b"{", headers={**SERVICE,
            "content-type": "application/json"})).status_code == 422
