"""saga_orchestrator's HTTP API in this process (PostgreSQL, test tokens, scripted participants)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from fastapi import FastAPI

from saga_orchestrator.app import create_app
from saga_orchestrator.catalogue import Catalogue
from saga_orchestrator.settings import Settings
from tests.fleet import METRICS_HEADERS
from tests.inprocess import ADMIN, PROBLEM, bearer, fresh_database_url, running_app
from tests.saga_orchestrator.conftest import ADDRESS
from tests.saga_orchestrator.fakes import FakeParticipants, refused, transient

ALICE = bearer("alice")
BOB = bearer("bob")


def body(**overrides: object) -> dict[str, object]:
    value: dict[str, object] = {"lines": [{"sku": "KB-1", "quantity": 1}], "shipping_address": ADDRESS,
                                "payment_token": "tok_visa"}
    value.update(overrides)
    return value


def keyed(headers: dict[str, str], key: str | None = None, **extra: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key or str(uuid.uuid4()), **extra}


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, FakeParticipants]]:
    settings = Settings(database_url=fresh_database_url("cs_unit_saga_api"), eureka_server_url="",
                        step_deadline_secs=1, compensation_deadline_secs=1, recovery_interval_secs=0.2)
    async with running_app(create_app, settings) as (app, client):
        fake = FakeParticipants()
        orchestrator = app.state.orchestrator
        orchestrator.client = fake
        orchestrator.runner.participants = fake
        yield app, client, fake


@pytest.fixture
def client(served: tuple[FastAPI, httpx.AsyncClient, FakeParticipants]) -> httpx.AsyncClient:
    return served[1]


@pytest.fixture
def fake(served: tuple[FastAPI, httpx.AsyncClient, FakeParticipants]) -> FakeParticipants:
    served[2].failures.clear()
    return served[2]


async def test_the_key_is_required(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/customer-orders", json=body(), headers=ALICE)
    assert response.status_code == 400 and response.headers["content-type"] == PROBLEM
    assert "Idempotency-Key" in response.json()["detail"]
    assert (await client.post("/api/customer-orders", json=body(), headers={"Idempotency-Key": "x"})
            ).status_code == 401


@pytest.mark.parametrize("bad", [
    {"lines": []},
    {"lines": [{"sku": "KB-1", "quantity": 0}]},
    {"lines": [{"sku": "KB-1", "quantity": -2}]},
    {"shipping_address": {**ADDRESS, "country": "Germany"}},
    {"shipping_address": {"name": "Ada"}},
    {"payment_token": ""},
])
async def test_bad_requests_are_refused_before_any_saga(client: httpx.AsyncClient, bad: dict[str, object]) -> None:
    response = await client.post("/api/customer-orders", json=body(**bad), headers=keyed(ALICE))
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    assert response.json()["errors"]


async def test_unknown_skus_are_422_with_the_line(client: httpx.AsyncClient, fake: FakeParticipants) -> None:
    response = await client.post("/api/customer-orders", headers=keyed(ALICE),
                                 json=body(lines=[{"sku": "KB-1", "quantity": 1}, {"sku": "NOPE-1", "quantity": 1}]))
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "lines", 1, "sku"]


async def test_catalogue_down_is_503(served: tuple[FastAPI, httpx.AsyncClient, FakeParticipants],
                                     client: httpx.AsyncClient, fake: FakeParticipants) -> None:
    served[0].state.orchestrator.catalogue = Catalogue(2.0)  # nothing cached: the lookup must ask inventory
    fake.failures["catalogue"] = transient()
    response = await client.post("/api/customer-orders", json=body(), headers=keyed(ALICE))
    assert response.status_code == 503 and response.headers["content-type"] == PROBLEM


async def test_accepted_then_waited_for(client: httpx.AsyncClient, fake: FakeParticipants) -> None:
    key = str(uuid.uuid4())
    accepted = await client.post("/api/customer-orders", json=body(), headers=keyed(ALICE, key))
    assert accepted.status_code == 202, accepted.text
    saga = accepted.json()
    assert saga["status"] in ("STARTED", "RUNNING", "COMPLETED")
    assert accepted.headers["location"] == saga["status_url"] == f"/api/customer-orders/{saga['saga_id']}"
    waited = await client.post("/api/customer-orders", json=body(), headers=keyed(ALICE, key, Prefer="wait=5"))
    assert waited.status_code == 200, waited.text
    assert waited.headers["idempotent-replayed"] == "true" and waited.headers["preference-applied"] == "wait=5"
    view = waited.json()
    assert view["saga_id"] == saga["saga_id"] and view["status"] == "COMPLETED"
    assert [s["status"] for s in view["steps"]] == ["SUCCEEDED"] * 7
    assert view["tracking_number"] and view["order_id"] and view["total_minor"] == 8999
    assert view["history"][0]["type"] == "SagaStarted" and view["history"][-1]["type"] == "SagaCompleted"
    other_body = await client.post("/api/customer-orders", json=body(payment_token="tok_mastercard"),
                                   headers=keyed(ALICE, key))
    assert other_body.status_code == 422


@pytest.mark.parametrize("token", ["tok_visa", "tok_chargeDeclined"])
async def test_the_waited_for_answer_is_the_stored_saga(client: httpx.AsyncClient, fake: FakeParticipants,
                                                        token: str) -> None:
    """A `Prefer: wait` answer is rendered from the driving replica's memory: it must equal the stored saga."""
    if token == "tok_chargeDeclined":
        fake.failures["make_payment"] = refused(402, "card_declined")
    waited = await client.post("/api/customer-orders", json=body(payment_token=token),
                               headers=keyed(ALICE, Prefer="wait=5"))
    assert waited.status_code == 200, waited.text
    stored = await client.get(waited.json()["status_url"], headers=ALICE)
    assert stored.status_code == 200
    assert waited.json() == stored.json()
    assert waited.json()["status"] in ("COMPLETED", "COMPENSATED")


async def test_wait_is_capped_and_answers_202_while_running(client: httpx.AsyncClient,
                                                            fake: FakeParticipants) -> None:
    fake.delay = 0.5
    try:
        response = await client.post("/api/customer-orders", json=body(),
                                     headers=keyed(ALICE, Prefer="respond-async, wait=1"))
    finally:
        fake.delay = 0
    assert response.status_code == 202 and response.json()["status"] in ("STARTED", "RUNNING")


async def test_refusal_ends_compensated(client: httpx.AsyncClient, fake: FakeParticipants) -> None:
    fake.failures["make_payment"] = refused(402, "card_declined")
    response = await client.post("/api/customer-orders", json=body(payment_token="tok_chargeDeclined"),
                                 headers=keyed(ALICE, Prefer="wait=5"))
    view = response.json()
    assert response.status_code == 200 and view["status"] == "COMPENSATED"
    assert "402" in view["failure_reason"]
    compensated = [s["step"] for s in view["steps"] if s["compensation"]]
    assert compensated == ["create_order", "add_order_lines", "allocate_inventory"]


async def test_customers_see_only_their_own_sagas(client: httpx.AsyncClient, fake: FakeParticipants) -> None:
    mine = (await client.post("/api/customer-orders", json=body(), headers=keyed(BOB, Prefer="wait=5"))).json()
    saga_url = f"/api/customer-orders/{mine['saga_id']}"
    assert (await client.get(saga_url, headers=BOB)).status_code == 200
    assert (await client.get(saga_url, headers=ALICE)).status_code == 404
    assert (await client.get(saga_url, headers=ADMIN)).status_code == 200
    assert (await client.get("/api/customer-orders/not-a-uuid", headers=BOB)).status_code == 404
    listing = (await client.get("/api/customer-orders", headers=BOB)).json()
    assert listing["total"] >= 1 and {s["customer_id"] for s in listing["items"]} == {"bob"}
    everyone = (await client.get("/api/customer-orders?limit=500", headers=ADMIN)).json()
    assert {"alice", "bob"} <= {s["customer_id"] for s in everyone["items"]}
    completed = (await client.get("/api/customer-orders?status=COMPLETED", headers=ADMIN)).json()
    assert completed["items"] and {s["status"] for s in completed["items"]} == {"COMPLETED"}
    assert (await client.get("/api/customer-orders?status=NOPE", headers=ADMIN)).status_code == 422


async def test_event_feed_is_for_admins(client: httpx.AsyncClient, fake: FakeParticipants) -> None:
    assert (await client.get("/api/customer-orders/events", headers=ALICE)).status_code == 403
    page = (await client.get("/api/customer-orders/events?after=0&limit=5", headers=ADMIN)).json()
    ids = [e["id"] for e in page["items"]]
    assert ids == sorted(ids) and len(ids) == 5 and page["next_after"] == ids[-1]
    assert page["items"][0]["type"] == "SagaStarted" and page["items"][0]["state"]["payment_token"] == "***"
    following = (await client.get(f"/api/customer-orders/events?after={ids[-1]}&limit=5", headers=ADMIN)).json()
    assert following["items"][0]["id"] > ids[-1]


async def test_retry_is_for_admins_and_failed_compensations(client: httpx.AsyncClient,
                                                            fake: FakeParticipants) -> None:
    fake.failures["allocate_inventory"] = refused(409, "insufficient stock")
    fake.failures["create_order:compensate"] = transient()
    stuck = (await client.post("/api/customer-orders", json=body(), headers=keyed(ALICE, Prefer="wait=5"))).json()
    assert stuck["status"] == "COMPENSATION_FAILED"
    retry_url = f"/api/customer-orders/{stuck['saga_id']}/retry"
    assert (await client.post(retry_url, headers=ALICE)).status_code == 403
    fake.failures.clear()
    retried = await client.post(retry_url, headers=ADMIN)
    assert retried.status_code == 202 and retried.json()["status"] == "COMPENSATING"
    again = await client.post(retry_url, headers=ADMIN)
    assert again.status_code == 409
    for _ in range(50):
        view = (await client.get(f"/api/customer-orders/{stuck['saga_id']}", headers=ADMIN)).json()
        if view["status"] == "COMPENSATED":
            break
        await asyncio.sleep(0.1)
    assert view["status"] == "COMPENSATED"
    assert (await client.post(retry_url, headers=ADMIN)).status_code == 409


async def test_metrics_count_sagas(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics", headers=METRICS_HEADERS)).text
    assert "saga_finished_total" in text and "saga_step_duration_seconds_bucket" in text


# -- the created-time window and the counts --------------------------------------------------------------------

STATUSES = ["STARTED", "RUNNING", "COMPLETED", "COMPENSATING", "COMPENSATED", "COMPENSATION_FAILED"]


def fresh_customer() -> dict[str, str]:
    return bearer(f"carol-{uuid.uuid4().hex[:8]}")


async def three_finished_sagas(client: httpx.AsyncClient, fake: FakeParticipants,
                               customer: dict[str, str]) -> list[dict[str, object]]:
    """A declined saga, then two completed ones; as listed, oldest first."""
    fake.failures["make_payment"] = refused(402, "card_declined")
    declined = await client.post("/api/customer-orders", json=body(payment_token="tok_chargeDeclined"),
                                 headers=keyed(customer, Prefer="wait=5"))
    assert declined.json()["status"] == "COMPENSATED"
    fake.failures.clear()
    for _ in range(2):
        placed = await client.post("/api/customer-orders", json=body(), headers=keyed(customer, Prefer="wait=5"))
        assert placed.json()["status"] == "COMPLETED"
    listing = (await client.get("/api/customer-orders", headers=customer)).json()
    assert listing["total"] == 3
    return list(reversed(listing["items"]))


async def listed(client: httpx.AsyncClient, headers: dict[str, str], **params: str | int) -> tuple[list[str], int]:
    response = await client.get("/api/customer-orders", headers=headers, params=params)
    assert response.status_code == 200, response.text
    page = response.json()
    return [s["saga_id"] for s in page["items"]], page["total"]


async def test_the_created_time_window_narrows_the_list_and_its_total(client: httpx.AsyncClient,
                                                                      fake: FakeParticipants) -> None:
    carol = fresh_customer()
    first, second, third = await three_finished_sagas(client, fake, carol)
    ids = [str(s["saga_id"]) for s in (third, second, first)]  # newest first, as listed
    t0, t1, t2 = (str(s["created_at"]) for s in (first, second, third))

    assert await listed(client, carol, created_after=t1) == (ids[:2], 2)  # the start is included
    assert await listed(client, carol, created_before=t1) == (ids[2:], 1)  # the end is not
    assert await listed(client, carol, created_after=t1, created_before=t2) == ([ids[1]], 1)
    assert await listed(client, carol, created_after=t0, created_before=t0) == ([], 0)
    assert await listed(client, carol, created_after=t0, limit=1, offset=1) == ([ids[1]], 3)
    assert await listed(client, carol, created_after=t0, status="COMPLETED") == (ids[:2], 2)
    assert await listed(client, carol, created_after=t1, status="COMPENSATED") == ([], 0)
    # The same instant in another timezone (its "+" percent-encoded by httpx).
    later_offset = datetime.fromisoformat(t1).astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    assert "+05:30" in later_offset
    assert await listed(client, carol, created_after=later_offset) == (ids[:2], 2)
    # An admin's window sees these three and nothing else (no other test places sagas meanwhile).
    end = (datetime.fromisoformat(t2) + timedelta(microseconds=1)).isoformat()
    assert await listed(client, ADMIN, created_after=t0, created_before=end) == (ids, 3)
    # Another customer's window over the same time shows none of them.
    assert await listed(client, ALICE, created_after=t0, created_before=end) == ([], 0)


async def test_stats_count_every_status_of_the_callers_sagas(client: httpx.AsyncClient,
                                                              fake: FakeParticipants) -> None:
    carol = fresh_customer()
    first, second, third = await three_finished_sagas(client, fake, carol)
    t0, t1, t2 = (str(s["created_at"]) for s in (first, second, third))
    zero = dict.fromkeys(STATUSES, 0)

    stats = (await client.get("/api/customer-orders/stats", headers=carol)).json()
    assert stats == {"counts": {**zero, "COMPLETED": 2, "COMPENSATED": 1}, "total": 3,
                     "created_after": None, "created_before": None}
    windowed = (await client.get("/api/customer-orders/stats", headers=carol, params={"created_after": t1})).json()
    assert windowed["counts"] == {**zero, "COMPLETED": 2} and windowed["total"] == 2
    assert datetime.fromisoformat(windowed["created_after"]) == datetime.fromisoformat(t1)
    before = (await client.get("/api/customer-orders/stats", headers=carol, params={"created_before": t1})).json()
    assert before["counts"] == {**zero, "COMPENSATED": 1} and before["total"] == 1

    # A customer counts only their own sagas; an admin counts everyone's.
    stranger = (await client.get("/api/customer-orders/stats", headers=fresh_customer())).json()
    assert stranger["counts"] == zero and stranger["total"] == 0
    end = (datetime.fromisoformat(t2) + timedelta(microseconds=1)).isoformat()
    everyone = (await client.get("/api/customer-orders/stats", headers=ADMIN,
                                 params={"created_after": t0, "created_before": end})).json()
    assert everyone["counts"] == {**zero, "COMPLETED": 2, "COMPENSATED": 1}
    overall = (await client.get("/api/customer-orders/stats", headers=ADMIN)).json()
    assert overall["total"] == sum(overall["counts"].values()) >= 3
    assert overall["total"] == (await listed(client, ADMIN, limit=1))[1]
    assert (await client.get("/api/customer-orders/stats")).status_code == 401


@pytest.mark.parametrize("path", ["/api/customer-orders", "/api/customer-orders/stats"])
@pytest.mark.parametrize("param", ["created_after", "created_before"])
@pytest.mark.parametrize("bad", [
    "2026-05-01T12:00:00",  # naive
    "2026-05-01",  # a date, no time or timezone
    "yesterday",
    "1777777777",  # Unix time is not ISO 8601
    "2026-13-01T00:00:00Z",
    "2026-05-01T12:00:00 02:00",  # an offset's "+" left unencoded in the URL arrives as a space
    "0001-01-01T00:00:00+01:00",  # before the first representable instant in UTC
])
async def test_bad_timestamps_are_422(client: httpx.AsyncClient, path: str, param: str, bad: str) -> None:
    response = await client.get(path, headers=ADMIN, params={param: bad})
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM, response.text
    assert response.json()["errors"][0]["loc"] == ["query", param]


@pytest.mark.parametrize("path", ["/api/customer-orders", "/api/customer-orders/stats"])
async def test_a_window_that_ends_before_it_starts_is_422(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers=ADMIN, params={"created_after": "2026-05-02T00:00:00Z",
                                                              "created_before": "2026-05-01T00:00:00Z"})
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    assert response.json()["errors"][0]["loc"] == ["query", "created_before"]


async def test_stats_and_the_window_are_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    stats = document["paths"]["/api/customer-orders/stats"]["get"]
    assert stats["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SagaStats"}
    assert set(document["components"]["schemas"]["SagaStatusCounts"]["required"]) == set(STATUSES)
    listing = {p["name"] for p in document["paths"]["/api/customer-orders"]["get"]["parameters"]}
    assert {"status", "limit", "offset", "created_after", "created_before"} <= listing
    assert {p["name"] for p in stats["parameters"]} >= {"created_after", "created_before"}
