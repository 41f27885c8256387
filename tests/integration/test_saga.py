"""placeCustomerOrder end to end: real processes, through the gateway, with failures injected at every step."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.compose import ComposeStack, Container
from tests.conftest import User, instances
from tests.fleet import Fleet, ServiceProcess

pytestmark = pytest.mark.integration

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
NOWHERE = {**ADDRESS, "country": "ZZ"}  # no carrier serves it
APP = "SAGA-ORCHESTRATOR"
STEPS = ["create_order", "add_order_lines", "allocate_inventory", "make_payment", "assign_carrier",
         "create_shipment", "confirm_order"]
# Short deadlines, so that failures that do not clear end within a test's patience.
SAGA_ENV = {
    "STEP_DEADLINE_SECS": "3",
    "STEP_ATTEMPT_TIMEOUT_SECS": "2",
    "COMPENSATION_DEADLINE_SECS": "3",
    "RETRY_INITIAL_SECS": "0.05",
    "RETRY_MAX_SECS": "0.5",
    "LEASE_SECS": "4",
    "RECOVERY_INTERVAL_SECS": "1",
}


@dataclass
class Catalogue:
    sku: str  # plenty of stock
    scarce_sku: str  # one unit
    price: int
    weight: int


def _wait_gateway_routes(api: httpx.Client, user: User, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.get("/api/customer-orders", headers=user.headers).status_code == 200:
            return
        time.sleep(0.2)
    raise TimeoutError("the gateway does not reach SAGA-ORCHESTRATOR")


@pytest.fixture(scope="module")
def orchestrator(stack: Fleet | ComposeStack, admin: User, gateway_url: str) -> Iterator[ServiceProcess | Container]:
    """The fleet's orchestrator, restarted with short deadlines for this module; restored afterwards. A compose
    stack runs with them already (tests/containers/compose.test.yml)."""
    with httpx.Client(base_url=gateway_url, timeout=30) as api:
        if isinstance(stack, ComposeStack):
            _wait_gateway_routes(api, admin)
            yield stack.processes["saga_orchestrator"]
            return
        proc = stack.replace("saga_orchestrator", **SAGA_ENV)
        _wait_gateway_routes(api, admin)
        yield proc
        stack.replace("saga_orchestrator")
        _wait_gateway_routes(api, admin)


@pytest.fixture(scope="module")
def catalogue(gateway_url: str, admin: User) -> Catalogue:
    return make_catalogue(gateway_url, admin)


def make_catalogue(gateway_url: str, admin: User) -> Catalogue:
    """A product with plenty of stock, one with a single unit, and a carrier for DE/FR/NL, new for the caller."""
    tag = uuid.uuid4().hex[:6].upper()
    with httpx.Client(base_url=gateway_url, timeout=30) as api:
        for sku, on_hand in ((f"SAGA-{tag}", 100_000), (f"SAGA-{tag}-SCARCE", 1)):
            response = api.post("/api/inventory/products", headers=admin.headers, json={
                "sku": sku, "name": "Saga widget", "unit_price_minor": 1250, "currency": "EUR",
                "weight_grams": 400, "on_hand": on_hand})
            assert response.status_code == 201, response.text
        response = api.post("/api/carriers", headers=admin.headers, json={
            "code": f"SAGA{tag}", "name": "Saga Parcel", "countries": ["DE", "FR", "NL"],
            "max_weight_grams": 1_000_000, "daily_capacity": 100_000, "base_price_minor": 0,
            "price_per_kg_minor": 0, "currency": "EUR"})
        assert response.status_code == 201, response.text
    return Catalogue(f"SAGA-{tag}", f"SAGA-{tag}-SCARCE", 1250, 400)


def order_body(catalogue: Catalogue, quantity: int = 2, token: str = "tok_visa", address: dict[str, str] | None = None,
               sku: str | None = None) -> dict[str, Any]:
    return {"lines": [{"sku": sku or catalogue.sku, "quantity": quantity}],
            "shipping_address": address or ADDRESS, "payment_token": token}


def place(api: httpx.Client, user: User, body: dict[str, Any], key: str | None = None,
          wait: int | None = 30) -> httpx.Response:
    headers = {**user.headers, "Idempotency-Key": key or str(uuid.uuid4())}
    if wait:
        headers["Prefer"] = f"wait={wait}"
    return api.post("/api/customer-orders", json=body, headers=headers)


def finished(api: httpx.Client, user: User, saga_id: str, timeout: float = 40) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = api.get(f"/api/customer-orders/{saga_id}", headers=user.headers)
        if response.status_code == 200 and response.json()["status"] in (
                "COMPLETED", "COMPENSATED", "COMPENSATION_FAILED"):
            return dict(response.json())
        if time.monotonic() > deadline:
            raise TimeoutError(f"saga {saga_id} did not finish: {response.text}")
        time.sleep(0.2)


def available(api: httpx.Client, sku: str) -> int:
    response = api.get(f"/api/inventory/products/{sku}")
    assert response.status_code == 200, response.text
    return int(response.json()["available"])


def payments(api: httpx.Client, admin: User, order_id: str) -> list[dict[str, Any]]:
    response = api.get("/api/payments", params={"order_id": order_id}, headers=admin.headers)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def event_types(saga: dict[str, Any]) -> list[str]:
    return [e["type"] for e in saga["history"]]


def steps_succeeded(saga: dict[str, Any]) -> list[str]:
    return [e["data"]["step"] for e in saga["history"] if e["type"] == "StepSucceeded"]


def compensated_in_order(saga: dict[str, Any]) -> list[str]:
    return [e["data"]["step"] for e in saga["history"] if e["type"] == "CompensationSucceeded"]


def assert_everything_given_back(api: httpx.Client, admin: User, customer: User, saga: dict[str, Any],
                                 catalogue: Catalogue, stock_before: int) -> None:
    assert available(api, catalogue.sku) == stock_before
    order_id = saga["order_id"]
    if order_id is None:
        return
    order = api.get(f"/api/orders/{order_id}", headers=customer.headers).json()
    assert order["status"] == "CANCELLED" and order["cancel_reason"], order
    for payment in payments(api, admin, order_id):
        assert payment["status"] == "REFUNDED" and payment["refunded_minor"] == payment["amount_minor"]
    assignment = api.get(f"/api/carriers/assignments/{order_id}", headers=admin.headers)
    assert assignment.status_code == 404 or assignment.json()["status"] != "ASSIGNED", assignment.text
    shipments = api.get("/api/shipments", params={"order_id": order_id}, headers=admin.headers).json()["items"]
    assert all(s["status"] == "CANCELLED" for s in shipments), shipments


# -- the happy path ------------------------------------------------------------------------------

def test_happy_path_confirms_the_order(orchestrator: ServiceProcess, stack: Fleet | ComposeStack, api: httpx.Client,
                                       admin: User, customer: User, catalogue: Catalogue) -> None:
    before = available(api, catalogue.sku)
    key = str(uuid.uuid4())
    request_id, trace_id = f"saga-{uuid.uuid4().hex}", uuid.uuid4().hex
    accepted = api.post("/api/customer-orders", json=order_body(catalogue, quantity=3), headers={
        **customer.headers, "Idempotency-Key": key, "X-Request-ID": request_id,
        "traceparent": f"00-{trace_id}-{'ab' * 8}-01"})
    assert accepted.status_code == 202, accepted.text
    saga_id = accepted.json()["saga_id"]
    assert accepted.headers["location"] == f"/api/customer-orders/{saga_id}"

    saga = finished(api, customer, saga_id)
    assert saga["status"] == "COMPLETED", saga
    assert [s["status"] for s in saga["steps"]] == ["SUCCEEDED"] * 7
    assert steps_succeeded(saga) == STEPS and event_types(saga)[-1] == "SagaCompleted"
    assert saga["total_minor"] == 3 * catalogue.price and saga["tracking_number"]

    order = api.get(f"/api/orders/{saga['order_id']}", headers=customer.headers).json()
    assert order["status"] == "CONFIRMED" and order["customer_id"] == customer.user_id
    assert order["total_minor"] == 3 * catalogue.price
    assert available(api, catalogue.sku) == before - 3
    charged = payments(api, admin, saga["order_id"])
    assert [(p["status"], p["amount_minor"]) for p in charged] == [("CAPTURED", 3 * catalogue.price)]
    assignment = api.get(f"/api/carriers/assignments/{saga['order_id']}", headers=admin.headers).json()
    assert assignment["status"] == "ASSIGNED" and assignment["carrier_code"] == saga["carrier_code"]
    shipments = api.get("/api/shipments", params={"order_id": saga["order_id"]}, headers=customer.headers).json()
    assert [s["tracking_number"] for s in shipments["items"]] == [saga["tracking_number"]]

    # The same key answers with the same saga, and never places a second order.
    again = place(api, customer, order_body(catalogue, quantity=3), key=key)
    assert again.status_code == 200 and again.json()["saga_id"] == saga_id
    assert again.headers["idempotent-replayed"] == "true"
    assert place(api, customer, order_body(catalogue, quantity=4), key=key).status_code == 422
    assert len(payments(api, admin, saga["order_id"])) == 1
    mine = api.get("/api/customer-orders", headers=customer.headers).json()
    assert [s["saga_id"] for s in mine["items"]] == [saga_id]
    # The step calls carried the original request's id and trace.
    for package in ("order_service", "inventory_service", "payment_service", "carrier_service", "shipment_service"):
        logs = "\n".join(p.logs() for p in instances(stack, package))
        assert request_id in logs and trace_id in logs, package


def test_requests_are_checked_before_a_saga_starts(orchestrator: ServiceProcess, api: httpx.Client,
                                                   customer: User, catalogue: Catalogue) -> None:
    no_key = api.post("/api/customer-orders", json=order_body(catalogue), headers=customer.headers)
    assert no_key.status_code == 400 and no_key.headers["content-type"].startswith("application/problem+json")
    bad: dict[str, Any]
    for bad in ({"lines": []}, {"lines": [{"sku": catalogue.sku, "quantity": 0}]},
                {"shipping_address": {"name": "Ada"}}, {"lines": [{"sku": "NO-SUCH-SKU-X", "quantity": 1}]}):
        response = place(api, customer, {**order_body(catalogue), **bad}, wait=None)
        assert response.status_code == 422, (bad, response.text)
    assert api.get("/api/customer-orders", headers=customer.headers).json()["total"] == 0


# -- a refusal at each step: compensate what was done, in reverse -------------------------------

REFUSALS = {
    "create_order": ("order_service", r"^/api/orders$"),
    "add_order_lines": ("order_service", r"/lines$"),
    "allocate_inventory": None,  # out of stock
    "make_payment": None,  # tok_chargeDeclined
    "assign_carrier": None,  # a country no carrier serves
    "create_shipment": ("shipment_service", r"^/api/shipments$"),
    "confirm_order": ("order_service", r"/confirm$"),
}


@pytest.mark.parametrize("failing", STEPS)
def test_a_refusal_compensates_in_reverse(orchestrator: ServiceProcess, api: httpx.Client, admin: User,
                                          customer: User, catalogue: Catalogue, faults: Any, failing: str) -> None:
    body = order_body(catalogue)
    fault = REFUSALS[failing]
    if fault is not None:
        faults(fault[0], fault[1], status=409, count=1)
    elif failing == "allocate_inventory":
        body = order_body(catalogue, quantity=2, sku=catalogue.scarce_sku)
    elif failing == "make_payment":
        body = order_body(catalogue, token="tok_chargeDeclined")
    else:
        body = order_body(catalogue, address=NOWHERE)
    before = available(api, catalogue.sku)
    response = place(api, customer, body)
    assert response.status_code == 200, response.text
    saga = response.json()
    assert saga["status"] == "COMPENSATED", saga
    done = STEPS[:STEPS.index(failing)]
    assert steps_succeeded(saga) == done
    step = next(s for s in saga["steps"] if s["step"] == failing)
    assert step["status"] == "FAILED" and step["outcome_known"] and step["attempts"] == 1
    assert compensated_in_order(saga) == [s for s in reversed(done) if s != "confirm_order"]
    assert saga["failure_reason"].startswith(f"{failing} failed")
    assert event_types(saga)[-1] == "SagaCompensated"
    assert_everything_given_back(api, admin, customer, saga, catalogue, before)
    if failing == "make_payment":
        assert "402" in saga["failure_reason"] and payments(api, admin, saga["order_id"]) == []
    if failing in ("create_shipment", "confirm_order"):
        refunded = payments(api, admin, saga["order_id"])
        assert len(refunded) == 1 and refunded[0]["status"] == "REFUNDED"


# -- transient failures --------------------------------------------------------------------------

def test_a_flaky_card_is_retried_and_charged_once(orchestrator: ServiceProcess, api: httpx.Client, admin: User,
                                                  customer: User, catalogue: Catalogue) -> None:
    saga = place(api, customer, order_body(catalogue, token="tok_flaky")).json()
    assert saga["status"] == "COMPLETED", saga
    payment_step = next(s for s in saga["steps"] if s["step"] == "make_payment")
    assert payment_step["attempts"] == 3 and payment_step["last_error"]
    assert len(payments(api, admin, saga["order_id"])) == 1


def test_503s_that_clear_are_retried(orchestrator: ServiceProcess, api: httpx.Client, customer: User,
                                     catalogue: Catalogue, faults: Any) -> None:
    faults("carrier_service", r"^/api/carriers/assignments$", status=503, count=2)
    saga = place(api, customer, order_body(catalogue)).json()
    assert saga["status"] == "COMPLETED", saga
    assert next(s for s in saga["steps"] if s["step"] == "assign_carrier")["attempts"] == 3


def test_a_failure_that_does_not_clear_compensates_after_the_deadline(
        orchestrator: ServiceProcess, api: httpx.Client, admin: User, customer: User, catalogue: Catalogue) -> None:
    before = available(api, catalogue.sku)
    saga = place(api, customer, order_body(catalogue, token="tok_processingError")).json()
    assert saga["status"] == "COMPENSATED", saga
    payment_step = next(s for s in saga["steps"] if s["step"] == "make_payment")
    # Retried until its deadline (when that falls is test_core's, with the saga's recorded times), then unknown.
    assert payment_step["status"] == "FAILED" and not payment_step["outcome_known"]
    assert payment_step["attempts"] > 1
    # The outcome was unknown, so the payment was compensated too (a no-op refund).
    assert compensated_in_order(saga) == ["make_payment", "allocate_inventory", "add_order_lines", "create_order"]
    assert_everything_given_back(api, admin, customer, saga, catalogue, before)


def test_a_step_that_keeps_timing_out_is_compensated(orchestrator: ServiceProcess, api: httpx.Client,
                                                     admin: User, customer: User, catalogue: Catalogue,
                                                     faults: Any) -> None:
    faults("shipment_service", r"^/api/shipments$", status=503, count=-1)
    before = available(api, catalogue.sku)
    saga = place(api, customer, order_body(catalogue)).json()
    assert saga["status"] == "COMPENSATED", saga
    assert compensated_in_order(saga)[0] == "create_shipment"
    assert_everything_given_back(api, admin, customer, saga, catalogue, before)


# -- compensation that keeps failing: an operator's retry ---------------------------------------

def test_a_compensation_that_keeps_failing_waits_for_an_operator(
        orchestrator: ServiceProcess, api: httpx.Client, admin: User, customer: User, catalogue: Catalogue,
        faults: Any, stack: Fleet | ComposeStack) -> None:
    faults("payment_service", r"/refund$", status=503, count=-1)
    before = available(api, catalogue.sku)
    saga = place(api, customer, order_body(catalogue, address=NOWHERE)).json()
    assert saga["status"] == "COMPENSATION_FAILED", saga
    refund = next(s for s in saga["steps"] if s["step"] == "make_payment")["compensation"]
    assert refund["status"] == "FAILED" and refund["last_error"]
    listed = api.get("/api/customer-orders", params={"status": "COMPENSATION_FAILED"}, headers=admin.headers).json()
    assert saga["saga_id"] in [s["saga_id"] for s in listed["items"]]
    retry_url = f"/api/customer-orders/{saga['saga_id']}/retry"
    assert api.post(retry_url, headers=customer.headers).status_code == 403

    for payment_service in instances(stack, "payment_service"):
        payment_service.clear_faults()
    retried = api.post(retry_url, headers=admin.headers)
    assert retried.status_code == 202, retried.text
    saga = finished(api, customer, saga["saga_id"])
    assert saga["status"] == "COMPENSATED", saga
    assert "CompensationRetried" in event_types(saga)
    assert_everything_given_back(api, admin, customer, saga, catalogue, before)


# -- crashes and replicas ------------------------------------------------------------------------

def test_killed_mid_saga_it_finishes_after_restart_and_charges_once(
        orchestrator: ServiceProcess, stack: Fleet | ComposeStack, api: httpx.Client, admin: User, customer: User,
        catalogue: Catalogue, faults: Any) -> None:
    faults("payment_service", r"^/api/payments$", status=0, count=1, delay_ms=1500)
    accepted = place(api, customer, order_body(catalogue), wait=None)
    assert accepted.status_code == 202, accepted.text
    saga_id = accepted.json()["saga_id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        saga = api.get(f"/api/customer-orders/{saga_id}", headers=customer.headers).json()
        if next(s for s in saga["steps"] if s["step"] == "make_payment")["status"] == "RUNNING":
            break
        time.sleep(0.05)
    time.sleep(0.3)  # the charge is in flight, held up by the delay
    stack.processes["saga_orchestrator"].kill()  # the process, or `docker kill` of the container
    stack.restart("saga_orchestrator")
    _wait_gateway_routes(api, admin)
    saga = finished(api, customer, saga_id)
    assert saga["status"] == "COMPLETED", saga
    assert steps_succeeded(saga) == STEPS
    charged = payments(api, admin, saga["order_id"])
    assert len(charged) == 1 and charged[0]["status"] == "CAPTURED"


def test_two_replicas_many_sagas_each_driven_once(orchestrator: ServiceProcess, fleet: Fleet, api: httpx.Client,
                                                  admin: User, customer: User, catalogue: Catalogue,
                                                  faults: Any, gateway_url: str) -> None:
    with fleet.extra("saga_orchestrator", "saga_orchestrator_2", env=SAGA_ENV) as second:
        fleet.wait_registered(APP, second.port)
        time.sleep(1.5)  # the gateway's copy of the registry refreshes every second
        # Slow carriers keep sagas in flight, so the second replica dies holding some of them.
        faults("carrier_service", r"^/api/carriers/assignments$", status=0, count=-1, delay_ms=300)

        def place_one(n: int) -> str:
            with httpx.Client(base_url=gateway_url, timeout=30) as client:
                response = place(client, customer, order_body(catalogue, quantity=1), key=f"many-{n}-{uuid.uuid4()}",
                                 wait=None)
                assert response.status_code == 202, response.text
                return str(response.json()["saga_id"])

        with ThreadPoolExecutor(max_workers=8) as pool:
            saga_ids = list(pool.map(place_one, range(30)))
        second.kill()  # its sagas' leases run out and the first replica takes them over
        sagas = [finished(api, customer, saga_id, timeout=60) for saga_id in saga_ids]
    assert {s["status"] for s in sagas} == {"COMPLETED"}
    for saga in sagas:
        assert steps_succeeded(saga) == STEPS, saga["history"]
        assert event_types(saga).count("SagaCompleted") == 1
        assert len(payments(api, admin, saga["order_id"])) == 1
    orders = {s["order_id"] for s in sagas}
    assert len(orders) == 30


def test_event_feed_for_admins(orchestrator: ServiceProcess, api: httpx.Client, admin: User,
                               customer: User) -> None:
    assert api.get("/api/customer-orders/events", headers=customer.headers).status_code == 403
    page = api.get("/api/customer-orders/events", params={"after": 0, "limit": 20}, headers=admin.headers).json()
    ids = [e["id"] for e in page["items"]]
    assert ids == sorted(ids) and page["next_after"] == ids[-1]
    assert page["items"][0]["type"] == "SagaStarted"
    nxt = api.get("/api/customer-orders/events", params={"after": ids[-1], "limit": 5}, headers=admin.headers).json()
    assert all(e["id"] > ids[-1] for e in nxt["items"])
