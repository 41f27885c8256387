"""payment_service rules, through its HTTP API on real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from payment_service.app import create_app
from payment_service.models import ChargeAttempt
from payment_service.settings import Settings
from tests.inprocess import ADMIN, PROBLEM, SERVICE, OutboxWatch, bearer, running_app, service_fixtures

served, client = service_fixtures(create_app, Settings, "cs_unit_payment", db_pool_size=20)


def new_order_id() -> str:
    return str(uuid.uuid4())


def charge_body(order_id: str | None = None, token: str = "tok_visa", amount: int = 5000,
                customer: str = "cust-1") -> dict:
    return {"order_id": order_id or new_order_id(), "customer_id": customer, "amount_minor": amount,
            "currency": "EUR", "payment_token": token}


async def charge(client: httpx.AsyncClient, body: dict, key: str | None = None) -> httpx.Response:
    headers = {**SERVICE, "Idempotency-Key": key} if key else SERVICE
    return await client.post("/api/payments", json=body, headers=headers)


async def paid(client: httpx.AsyncClient, amount: int = 5000, customer: str = "cust-1") -> dict:
    response = await charge(client, charge_body(amount=amount, customer=customer))
    assert response.status_code == 201, response.text
    return response.json()


async def attempts_of(app: FastAPI, order_id: str) -> int:
    async with app.state.db.transaction() as tx:
        return int(await tx.fetchval(select(func.count()).select_from(ChargeAttempt)
                                     .where(ChargeAttempt.order_id == order_id)))


async def payments_of_order(client: httpx.AsyncClient, order_id: str) -> int:
    listing = await client.get("/api/payments", params={"order_id": order_id}, headers=ADMIN)
    return int(listing.json()["total"])


# --- charging --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token,brand", [("tok_visa", "visa"), ("tok_mastercard", "mastercard")])
async def test_good_cards_are_captured(client: httpx.AsyncClient, token: str, brand: str) -> None:
    body = charge_body(token=token, amount=12345)
    response = await charge(client, body, key=f"{body['order_id']}:pay")
    assert response.status_code == 201, response.text
    payment = response.json()
    assert payment["status"] == "CAPTURED" and payment["amount_minor"] == 12345
    assert payment["refunded_minor"] == 0 and payment["order_id"] == body["order_id"]
    assert payment["card_brand"] == brand and payment["processor_reference"].startswith("ch_")
    read = await client.get(f"/api/payments/{payment['id']}", headers=SERVICE)
    assert read.status_code == 200 and read.json()["id"] == payment["id"]


@pytest.mark.parametrize("token,code", [("tok_chargeDeclined", "card_declined"),
                                        ("tok_chargeDeclinedInsufficientFunds", "insufficient_funds"),
                                        ("tok_doesNotExist", "invalid_token")])
async def test_declines_are_402_and_recorded_as_attempts(
    served: tuple[FastAPI, httpx.AsyncClient], token: str, code: str
) -> None:
    app, client = served
    body = charge_body(token=token)
    key = f"{body['order_id']}:pay"
    declined = await charge(client, body, key)
    assert declined.status_code == 402 and declined.headers["content-type"] == PROBLEM
    assert declined.json()["code"] == code
    replayed = await charge(client, body, key)
    assert replayed.status_code == 402 and replayed.headers.get("idempotent-replayed") == "true"
    assert replayed.json() == declined.json()
    assert await payments_of_order(client, body["order_id"]) == 0
    assert await attempts_of(app, body["order_id"]) == 1
    # A decline does not use the order up: another card may pay for it.
    assert (await charge(client, {**body, "payment_token": "tok_visa"})).status_code == 201


async def test_processing_error_is_503_every_time_and_never_stored(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = served
    body = charge_body(token="tok_processingError")
    key = f"{body['order_id']}:pay"
    for _ in range(3):
        response = await charge(client, body, key)
        assert response.status_code == 503 and response.headers["content-type"] == PROBLEM
        assert response.json()["code"] == "processing_error" and response.headers.get("retry-after") == "1"
        assert "idempotent-replayed" not in response.headers
    assert await attempts_of(app, body["order_id"]) == 3
    assert await payments_of_order(client, body["order_id"]) == 0


async def test_flaky_fails_twice_for_the_order_then_captures(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = served
    body = charge_body(token="tok_flaky")
    key = f"{body['order_id']}:pay"
    statuses = [(await charge(client, body, key)).status_code for _ in range(3)]
    assert statuses == [503, 503, 201]
    replay = await charge(client, body, key)
    assert replay.status_code == 201 and replay.headers.get("idempotent-replayed") == "true"
    assert await attempts_of(app, body["order_id"]) == 3
    assert await payments_of_order(client, body["order_id"]) == 1
    # The count is per order: another order starts again at its first attempt.
    assert (await charge(client, charge_body(token="tok_flaky"))).status_code == 503


async def test_an_order_is_charged_once(client: httpx.AsyncClient) -> None:
    body = charge_body()
    assert (await charge(client, body, "first")).status_code == 201
    second = await charge(client, body, "second")
    assert second.status_code == 409 and second.headers["content-type"] == PROBLEM
    assert (await charge(client, body)).status_code == 409
    assert await payments_of_order(client, body["order_id"]) == 1


async def test_idempotency_replay_and_mismatch(client: httpx.AsyncClient) -> None:
    body = charge_body()
    key = f"{body['order_id']}:pay"
    first = await charge(client, body, key)
    again = await charge(client, body, key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and again.headers.get("idempotent-replayed") == "true"
    other = await charge(client, {**body, "amount_minor": 1}, key)
    assert other.status_code == 422 and other.headers["content-type"] == PROBLEM


async def test_concurrent_charges_of_one_order_capture_once(client: httpx.AsyncClient) -> None:
    body = charge_body()
    outcomes = Counter(r.status_code for r in await asyncio.gather(
        *(charge(client, body, f"race-{i}") for i in range(10))))
    assert outcomes == Counter({201: 1, 409: 9})
    assert await payments_of_order(client, body["order_id"]) == 1



async def test_charging_a_paid_order_names_its_payment(client: httpx.AsyncClient) -> None:
    payment = await paid(client)
    refused = await charge(client, charge_body(payment["order_id"], token="tok_mastercard"))
    assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM
    problem = refused.json()
    assert (problem["order_id"], problem["payment_id"], problem["payment_status"]) == (
        payment["order_id"], payment["id"], "CAPTURED")
    assert "already has a payment (CAPTURED)" in problem["detail"]


async def test_a_refused_charge_leaves_the_order_free(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    # The decline rolls the order's claim back: a compensation then finds nothing, and claims it.
    app, client = served
    body = charge_body(token="tok_chargeDeclined")
    assert (await charge(client, body)).status_code == 402
    compensated = await client.post(f"/api/payments/orders/{body['order_id']}/refund", headers=SERVICE)
    assert compensated.json()["status"] == "NONE"
    assert (await charge(client, {**body, "payment_token": "tok_visa"})).status_code == 409
    assert await attempts_of(app, body["order_id"]) == 1

# --- refunds ---------------------------------------------------------------------------------------------


async def test_partial_then_full_refund(client: httpx.AsyncClient) -> None:
    payment = await paid(client, amount=1000)
    url = f"/api/payments/{payment['id']}/refunds"
    partial = await client.post(url, json={"amount_minor": 300, "reason": "damaged box"}, headers=ADMIN)
    assert partial.status_code == 201, partial.text
    assert partial.json()["payment_status"] == "PARTIALLY_REFUNDED" and partial.json()["payment_refunded_minor"] == 300
    # A partial refund is an operator's: the saga's service token refunds only through the compensation.
    assert (await client.post(url, json={"amount_minor": 1}, headers=SERVICE)).status_code == 403
    over = await client.post(url, json={"amount_minor": 701}, headers=ADMIN)
    assert over.status_code == 409 and over.json()["refundable_minor"] == 700
    rest = await client.post(url, json={"amount_minor": 700}, headers=ADMIN)
    assert rest.status_code == 201 and rest.json()["payment_status"] == "REFUNDED"
    again = await client.post(url, json={"amount_minor": 1}, headers=ADMIN)
    assert again.status_code == 409 and again.headers["content-type"] == PROBLEM
    final = (await client.get(f"/api/payments/{payment['id']}", headers=ADMIN)).json()
    assert final["refunded_minor"] == 1000 and [r["amount_minor"] for r in final["refunds"]] == [300, 700]


async def test_refund_of_unknown_payment_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/api/payments/{uuid.uuid4()}/refunds", json={"amount_minor": 1}, headers=ADMIN)
    assert response.status_code == 404 and response.headers["content-type"] == PROBLEM


async def test_concurrent_refunds_never_exceed_the_amount(client: httpx.AsyncClient) -> None:
    payment = await paid(client, amount=100)
    responses = await asyncio.gather(*(client.post(f"/api/payments/{payment['id']}/refunds",
                                                   json={"amount_minor": 30}, headers=ADMIN) for _ in range(10)))
    assert Counter(r.status_code for r in responses) == Counter({201: 3, 409: 7})
    final = (await client.get(f"/api/payments/{payment['id']}", headers=ADMIN)).json()
    assert (final["refunded_minor"], final["status"]) == (90, "PARTIALLY_REFUNDED")


async def test_refund_idempotency(client: httpx.AsyncClient) -> None:
    payment = await paid(client, amount=100)
    headers = {**ADMIN, "Idempotency-Key": f"refund-{payment['id']}"}
    url = f"/api/payments/{payment['id']}/refunds"
    first = await client.post(url, json={"amount_minor": 40}, headers=headers)
    again = await client.post(url, json={"amount_minor": 40}, headers=headers)
    assert first.json() == again.json() and again.headers.get("idempotent-replayed") == "true"
    assert (await client.get(f"/api/payments/{payment['id']}", headers=ADMIN)).json()["refunded_minor"] == 40


# --- compensation ----------------------------------------------------------------------------------------


async def test_compensation_refunds_the_rest_once(client: httpx.AsyncClient) -> None:
    payment = await paid(client, amount=1000)
    await client.post(f"/api/payments/{payment['id']}/refunds", json={"amount_minor": 250}, headers=ADMIN)
    url = f"/api/payments/orders/{payment['order_id']}/refund"
    first = await client.post(url, headers=SERVICE)
    assert first.status_code == 200, first.text
    assert first.json() == {"order_id": payment["order_id"], "status": "REFUNDED", "payment_id": payment["id"],
                            "amount_minor": 1000, "refunded_minor": 1000}
    second = await client.post(url, headers=SERVICE)
    assert second.status_code == 200 and second.json() == first.json()
    final = (await client.get(f"/api/payments/{payment['id']}", headers=ADMIN)).json()
    assert final["status"] == "REFUNDED" and [r["amount_minor"] for r in final["refunds"]] == [250, 750]


async def test_compensation_replays_with_its_key(client: httpx.AsyncClient) -> None:
    payment = await paid(client, amount=500)
    headers = {**SERVICE, "Idempotency-Key": f"saga-1:4:compensate:{payment['order_id']}"}
    url = f"/api/payments/orders/{payment['order_id']}/refund"
    first = await client.post(url, headers=headers)
    again = await client.post(url, headers=headers)
    assert first.json() == again.json() and again.headers.get("idempotent-replayed") == "true"
    assert len((await client.get(f"/api/payments/{payment['id']}", headers=ADMIN)).json()["refunds"]) == 1


async def test_compensation_without_payment_is_none_and_refuses_a_late_charge(client: httpx.AsyncClient) -> None:
    order_id = new_order_id()
    for _ in range(2):
        response = await client.post(f"/api/payments/orders/{order_id}/refund", headers=SERVICE)
        assert response.status_code == 200
        assert response.json() == {"order_id": order_id, "status": "NONE", "payment_id": None, "amount_minor": 0,
                                   "refunded_minor": 0}
    late = await charge(client, charge_body(order_id))
    assert late.status_code == 409 and late.json()["code"] == "compensated"  # the fence (shared/fence.py)
    assert await payments_of_order(client, order_id) == 0



async def test_concurrent_compensations_refund_once(client: httpx.AsyncClient) -> None:
    payment = await paid(client, amount=700)
    url = f"/api/payments/orders/{payment['order_id']}/refund"
    responses = await asyncio.gather(*(client.post(url, headers=SERVICE) for _ in range(8)))
    assert {r.status_code for r in responses} == {200}
    assert {(r.json()["status"], r.json()["refunded_minor"]) for r in responses} == {("REFUNDED", 700)}
    final = (await client.get(f"/api/payments/{payment['id']}", headers=ADMIN)).json()
    assert final["status"] == "REFUNDED" and [r["amount_minor"] for r in final["refunds"]] == [700]


async def test_a_charge_racing_its_compensation_is_refunded_or_refused(client: httpx.AsyncClient) -> None:
    for _ in range(10):
        body = charge_body()
        charged, compensated = await asyncio.gather(
            charge(client, body), client.post(f"/api/payments/orders/{body['order_id']}/refund", headers=SERVICE))
        assert compensated.status_code == 200
        if compensated.json()["status"] == "NONE":
            assert charged.status_code == 409 and "compensated" in charged.json()["detail"]
            assert await payments_of_order(client, body["order_id"]) == 0
        else:
            assert charged.status_code == 201 and compensated.json()["payment_id"] == charged.json()["id"]
            final = (await client.get(f"/api/payments/{charged.json()['id']}", headers=ADMIN)).json()
            assert (final["status"], final["refunded_minor"]) == ("REFUNDED", body["amount_minor"])

# --- events: every change is in the outbox, written with it (shared/bus.py) ----------------------------------


async def test_a_capture_is_one_event_and_a_refused_charge_none(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = served
    outbox = await OutboxWatch.of(app)
    body = charge_body(amount=4200)
    order_id = body["order_id"]
    for _ in range(2):  # the second is the first's answer replayed: no second charge, no second event
        response = await charge(client, body, f"{order_id}:pay")
        assert response.status_code == 201
    payment_id = response.json()["id"]
    assert await outbox.new() == [("payment.captured.v1", order_id, order_id, {
        "order_id": order_id, "payment_id": payment_id, "amount_minor": 4200, "currency": "EUR"})]
    refused = [await charge(client, body, f"{order_id}:again"),  # charged already
               await charge(client, charge_body(token="tok_processingError")),  # no outcome yet: the saga retries
               await charge(client, {**body, "amount_minor": 0})]
    assert [response.status_code for response in refused] == [409, 503, 422]
    assert await outbox.new() == []


@pytest.mark.parametrize("key", ["decline-key", None])
async def test_a_decline_is_one_event_kept_with_its_attempt(served: tuple[FastAPI, httpx.AsyncClient],
                                                            key: str | None) -> None:
    # The 402 rolls the request's transaction back; the attempt on file and its event are committed together
    # after it (DomainError.keeping), with the key's record when there is one, so a replay adds neither.
    app, client = served
    outbox = await OutboxWatch.of(app)
    body = charge_body(token="tok_chargeDeclinedInsufficientFunds", amount=990)
    order_id = body["order_id"]
    declined = await charge(client, body, key and f"{order_id}:{key}")
    assert declined.status_code == 402
    if key:
        assert (await charge(client, body, f"{order_id}:{key}")).headers.get("idempotent-replayed") == "true"
    async with app.state.db.autocommit() as tx:
        attempt_id = await tx.fetchval(select(ChargeAttempt.id).where(ChargeAttempt.order_id == order_id))
    assert await outbox.new() == [("payment.declined.v1", order_id, order_id, {
        "order_id": order_id, "attempt_id": attempt_id, "amount_minor": 990, "currency": "EUR",
        "code": "insufficient_funds"})]


async def test_refunds_are_events_in_part_and_in_full(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = served
    payment = await paid(client, amount=1000)
    order_id, payment_id = payment["order_id"], payment["id"]
    outbox = await OutboxWatch.of(app)

    def refunded(refund_id: str, amount: int, total: int, status: str, reason: str | None) -> tuple:
        return ("payment.refunded.v1", order_id, order_id, {
            "order_id": order_id, "payment_id": payment_id, "refund_id": refund_id, "amount_minor": amount,
            "currency": "EUR", "refunded_minor": total, "payment_status": status, "reason": reason})

    url = f"/api/payments/{payment_id}/refunds"
    headers = {**ADMIN, "Idempotency-Key": f"{payment_id}:refund"}
    for _ in range(2):  # an operator's partial refund, then its replay
        partial = await client.post(url, json={"amount_minor": 300, "reason": "damaged box"}, headers=headers)
        assert partial.status_code == 201
    assert await outbox.new() == [refunded(partial.json()["id"], 300, 300, "PARTIALLY_REFUNDED", "damaged box")]
    refused = [await client.post(url, json={"amount_minor": 701}, headers=ADMIN),
               await client.post(f"/api/payments/{uuid.uuid4()}/refunds", json={"amount_minor": 1}, headers=ADMIN),
               await client.post(url, json={"amount_minor": 0}, headers=ADMIN)]
    assert [response.status_code for response in refused] == [409, 404, 422]
    assert await outbox.new() == []

    compensation = f"/api/payments/orders/{order_id}/refund"
    key = {**SERVICE, "Idempotency-Key": f"saga-1:4:compensate:{order_id}"}
    for headers in (key, key, SERVICE):  # the compensation, its replay, and a repeat with nothing left to refund
        assert (await client.post(compensation, headers=headers)).json()["status"] == "REFUNDED"
    refunds = (await client.get(f"/api/payments/{payment_id}", headers=ADMIN)).json()["refunds"]
    assert await outbox.new() == [refunded(refunds[1]["id"], 700, 1000, "REFUNDED", "order compensated")]
    assert (await client.post(f"/api/payments/orders/{new_order_id()}/refund", headers=SERVICE)).json()[
        "status"] == "NONE"
    assert await outbox.new() == []


# --- reading and ownership -------------------------------------------------------------------------------


async def test_customers_see_only_their_own_payments(client: httpx.AsyncClient) -> None:
    mine = await paid(client, customer="alice")
    theirs = await paid(client, customer="bob")
    alice = bearer("alice")
    assert (await client.get(f"/api/payments/{mine['id']}", headers=alice)).status_code == 200
    hidden = await client.get(f"/api/payments/{theirs['id']}", headers=alice)
    assert hidden.status_code == 404 and hidden.headers["content-type"] == PROBLEM
    listing = (await client.get("/api/payments", params={"customer_id": "bob"}, headers=alice)).json()
    assert listing["total"] >= 1 and {p["customer_id"] for p in listing["items"]} == {"alice"}
    by_order = (await client.get("/api/payments", params={"order_id": theirs["order_id"]}, headers=alice)).json()
    assert by_order["total"] == 0


async def test_list_filters_and_pagination(client: httpx.AsyncClient) -> None:
    customer = f"paged-{uuid.uuid4().hex[:8]}"
    payments = [await paid(client, amount=100, customer=customer) for _ in range(3)]
    await client.post(f"/api/payments/{payments[0]['id']}/refunds", json={"amount_minor": 100}, headers=ADMIN)
    page = (await client.get("/api/payments", params={"customer_id": customer, "limit": 2}, headers=ADMIN)).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    refunded = (await client.get("/api/payments", params={"customer_id": customer, "status": "REFUNDED"},
                                 headers=ADMIN)).json()
    assert [p["id"] for p in refunded["items"]] == [payments[0]["id"]]


async def test_unknown_payment_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/api/payments/{uuid.uuid4()}", headers=ADMIN)).status_code == 404


# --- who may call what -----------------------------------------------------------------------------------


async def test_no_token_is_401(client: httpx.AsyncClient) -> None:
    payment = await paid(client)
    for method, path, body in [("POST", "/api/payments", charge_body()), ("GET", "/api/payments", None),
                               ("GET", f"/api/payments/{payment['id']}", None),
                               ("POST", f"/api/payments/{payment['id']}/refunds", {"amount_minor": 1}),
                               ("POST", f"/api/payments/orders/{payment['order_id']}/refund", None)]:
        response = await client.request(method, path, json=body)
        assert response.status_code == 401 and response.headers["content-type"] == PROBLEM, (method, path)


async def test_customers_cannot_charge_or_refund(client: httpx.AsyncClient) -> None:
    payment = await paid(client, customer="cust-1")
    customer = bearer("cust-1")
    for path, body in [("/api/payments", charge_body(customer="cust-1")),
                       (f"/api/payments/{payment['id']}/refunds", {"amount_minor": 1}),
                       (f"/api/payments/orders/{payment['order_id']}/refund", None)]:
        response = await client.post(path, json=body, headers=customer)
        assert response.status_code == 403 and response.headers["content-type"] == PROBLEM, path
    assert (await client.get(f"/api/payments/{payment['id']}", headers=ADMIN)).json()["refunded_minor"] == 0


# --- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [
    {"order_id": None}, {"customer_id": None}, {"amount_minor": None}, {"currency": None}, {"payment_token": None},
    {"amount_minor": 0}, {"amount_minor": -5}, {"amount_minor": 10.5}, {"amount_minor": 10.0},
    {"amount_minor": "100"}, {"amount_minor": True}, {"amount_minor": 10**13},
    {"currency": "eur"}, {"currency": "EURO"}, {"payment_token": ""}, {"payment_token": "tok visa"},
    {"payment_token": "t" * 65}, {"order_id": "x" * 65}, {"order_id": ""}, {"customer_id": "a\u0000b"},
    {"customer_id": "c" * 65}, {"extra": 1},
])
async def test_bad_charges_are_422(client: httpx.AsyncClient, change: dict) -> None:
    body = {**charge_body(), **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = await charge(client, body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("body", [{}, {"amount_minor": 0}, {"amount_minor": -1}, {"amount_minor": 1.5},
                                  {"amount_minor": "5"}, {"amount_minor": 5, "extra": 1},
                                  {"amount_minor": 5, "reason": ""}])
async def test_bad_refunds_are_422(client: httpx.AsyncClient, body: dict) -> None:
    payment = await paid(client)
    response = await client.post(f"/api/payments/{payment['id']}/refunds", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/payments/a%00b"), ("GET", "/api/payments/not%20an%20id"),
    ("GET", "/api/payments?status=LOST"), ("GET", "/api/payments?limit=0"), ("GET", "/api/payments?offset=-1"),
    ("GET", "/api/payments?order_id=a%00b"), ("GET", "/api/payments?customer_id=a%00b"),
    ("POST", "/api/payments/orders/a%00b/refund"), ("POST", "/api/payments/a%00b/refunds"),
])
async def test_bad_ids_and_queries_are_422(client: httpx.AsyncClient, method: str, path: str) -> None:
    body = {"amount_minor": 1} if path.endswith("/refunds") else None
    response = await client.request(method, path, json=body, headers=ADMIN)
    # NUL bytes are refused up front by the shared request middleware (400); the rest by validation.
    assert response.status_code == (400 if "%00" in path else 422), response.text
    assert response.headers["content-type"] == PROBLEM


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/payments", content=b"not json",
                                 headers={**SERVICE, "Content-Type": "application/json"})
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM


async def test_attempts_are_kept_on_sqlite_too(tmp_path: Path) -> None:
    # SQLite has one writer: the failed attempt must be written after the charge's transaction, not beside it.
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/payment.db", eureka_server_url="")
    async with running_app(create_app, settings) as (app, client):
        body = charge_body(token="tok_flaky")
        statuses = [(await charge(client, body, "flaky-key")).status_code for _ in range(3)]
        assert statuses == [503, 503, 201]
        declined = charge_body(token="tok_chargeDeclined")
        assert (await charge(client, declined, "declined-key")).status_code == 402
        assert await attempts_of(app, body["order_id"]) == 3 and await attempts_of(app, declined["order_id"]) == 1
        none = await client.post(f"/api/payments/orders/{new_order_id()}/refund", headers=SERVICE)
        assert none.json()["status"] == "NONE"
