"""The bench's DBOS peer (bench/dbos_peer.py) against the real fleet: one saga of each outcome ends right.

The peer runs as its own process with its DBOS system database on the test PostgreSQL; its outcomes are
checked by the fleet's invariant checker (orders, payments, stock, carrier assignments, shipments).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from bench.dbos_peer import PeerProcess
from bench.sagas import saga_context
from bench.stack import Customer, Stack
from customer_cli.invariants import check_invariants
from saga_orchestrator.steps import CURRENT
from tests.conftest import User
from tests.fleet import DB_SUFFIX, PG_URL_BASE, SERVICES, Fleet, free_port, recreate_databases

pytestmark = pytest.mark.integration

DB_NAME = "cs_test_dbos_peer"


@pytest.fixture(scope="module")
def peer(fleet: Fleet) -> Iterator[PeerProcess]:
    recreate_databases([DB_NAME])
    services = {SERVICES[name]: proc.url for name, proc in fleet.processes.items()}
    url = PG_URL_BASE.replace("+asyncpg", "")
    process = PeerProcess(f"{url}/{DB_NAME}{DB_SUFFIX}", services, fleet.processes["auth_service"].url,
                          fleet.service_secret, fleet.workdir / "dbos_peer.log", free_port())
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def stack(fleet: Fleet, admin: User) -> Stack:
    """One customer, one product with ample stock, a carrier for DE only (so that TV, which no carrier of any test
    or seed serves, finds none: the suite shares one fleet)."""
    tag = uuid.uuid4().hex[:6].upper()
    with httpx.Client(base_url=fleet.gateway_url, timeout=30) as api:
        product = {"sku": f"PEER-{tag}", "name": "Peer widget", "unit_price_minor": 1990, "currency": "EUR",
                   "weight_grams": 300, "on_hand": 1000}
        assert api.post("/api/inventory/products", headers=admin.headers, json=product).status_code == 201
        carrier = {"code": f"PEER{tag}", "name": "Peer Parcel", "countries": ["DE"], "max_weight_grams": 100_000,
                   "daily_capacity": 1000, "base_price_minor": 0, "price_per_kg_minor": 0, "currency": "EUR"}
        assert api.post("/api/carriers", headers=admin.headers, json=carrier).status_code == 201
        email, password = f"peer-{tag.lower()}@example.com", "peer password long enough"
        user = api.post("/api/auth/register", json={"email": email, "password": password})
        assert user.status_code == 201, user.text
    stack = Stack(fleet.gateway_url, {}, {}, None, tag=tag)
    stack.customers.append(Customer(email, password, str(user.json()["id"])))
    stack.skus.append(product)
    return stack


def _run(peer: PeerProcess, context: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{peer.url}/sagas", json={"saga_id": context["saga_id"], "context": context}, timeout=60)
    assert response.status_code == 200, response.text
    outcome: dict[str, Any] = response.json()
    return outcome


def _address(country: str) -> dict[str, str]:
    return {"name": "Peer", "line1": "1 Peer Street", "city": "Peertown", "postal_code": "10115", "country": country}


def test_one_saga_of_each_outcome_ends_right_through_the_peer(peer: PeerProcess, stack: Stack, admin: User) -> None:
    since = datetime.now(UTC)
    completed = _run(peer, saga_context(stack, 0, shipping=_address("DE")))
    assert completed["status"] == "COMPLETED", completed
    # No carrier serves TV: the fifth step is refused, the four before it are undone, latest first.
    compensated = _run(peer, saga_context(stack, 0, shipping=_address("TV")))
    assert compensated["status"] == "COMPENSATED", compensated
    assert compensated["failure_reason"].startswith("assign_carrier failed"), compensated

    sku = stack.skus[0]["sku"]
    report = check_invariants(stack.gateway_url, admin.token, sagas=peer.sagas(), since=since,
                              initial_stock={sku: 1000}, allow_compensation_failed=False)
    assert report.ok, report.render()
    assert report.counts["saga:COMPLETED"] == 1 and report.counts["saga:COMPENSATED"] == 1, report.render()
    assert report.counts["orders:CONFIRMED"] == 1 and report.counts["orders:CANCELLED"] == 1, report.render()
    assert report.counts["refunded_minor"] == stack.skus[0]["unit_price_minor"], report.render()

    # A saga id run again answers with its recorded outcome: no call is repeated.
    again = _run(peer, {**saga_context(stack, 0, shipping=_address("DE")), "saga_id": completed["saga_id"]})
    assert again == completed


def test_the_peer_calls_under_the_sagas_idempotency_keys(peer: PeerProcess, stack: Stack, fleet: Fleet) -> None:
    """The same call under `<saga_id>:create_order` replays the peer's answer: the peer used the saga's key."""
    context = saga_context(stack, 0, shipping=_address("DE"))
    outcome = _run(peer, context)
    assert outcome["status"] == "COMPLETED", outcome
    with httpx.Client(timeout=30) as client:
        token = client.post(f"{fleet.processes['auth_service'].url}/api/auth/token", data={
            "grant_type": "client_credentials", "client_id": "saga-orchestrator",
            "client_secret": fleet.service_secret})
        assert token.status_code == 200, token.text
        create = CURRENT.steps[0].action
        # The body as the peer's aiohttp client serialized it (the key's fingerprint is of the bytes).
        replay = client.post(f"{fleet.processes['order_service'].url}{create.path}",
                             content=json.dumps(create.render_body(context)),
                             headers={"Authorization": f"Bearer {token.json()['access_token']}",
                                      "Content-Type": "application/json",
                                      "Idempotency-Key": f"{context['saga_id']}:create_order"})
    assert replay.status_code in (200, 201), replay.text
    assert replay.json()["id"] == outcome["order_id"]
