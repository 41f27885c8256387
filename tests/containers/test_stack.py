"""The compose stack changed under load: `--scale order_service=3` behind the gateway, and two orchestrator
replicas with one container killed (`docker kill`) in the middle of a load of sagas, every saga finishing.

Runs only where CI's container phase enables it (CONTAINER_TESTS=1, with GATEWAY_URL at the stack's gateway and
the stack started with tests/containers/compose.test.yml): it scales and kills containers of the stack it runs
against, and leaves one replica of each as it found them.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.compose import ComposeStack, Container
from tests.conftest import User
from tests.integration.test_saga import (
    STEPS,
    Catalogue,
    event_types,
    finished,
    make_catalogue,
    order_body,
    payments,
    steps_succeeded,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("CONTAINER_TESTS") != "1",
                       reason="scales and kills containers: only in CI's container phase (CONTAINER_TESTS=1)"),
]


@pytest.fixture(scope="module")
def catalogue(gateway_url: str, admin: User) -> Catalogue:
    return make_catalogue(gateway_url, admin)


def requests_logged(container: Container, tag: str) -> int:
    """The requests a replica logged whose X-Request-ID starts with `tag`."""
    count = 0
    for line in container.logs().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("event") == "request" and str(record.get("request_id", "")).startswith(tag):
            count += 1
    return count


def get_orders(api: httpx.Client, user: User, request_id: str) -> None:
    response = api.get("/api/orders", headers={**user.headers, "X-Request-ID": request_id})
    assert response.status_code == 200, response.text


@pytest.fixture
def three_order_replicas(compose: ComposeStack) -> Iterator[list[Container]]:
    with compose.scaled("order_service", 3) as replicas:
        yield replicas


def test_three_order_replicas_share_the_gateways_requests(
        compose: ComposeStack, three_order_replicas: list[Container], api: httpx.Client, admin: User) -> None:
    assert len(three_order_replicas) == 3
    assert len(compose.registered("ORDER-SERVICE")) == 3
    # Until the gateway's copy of the registry has all three: every replica has answered one request.
    warm = f"warm-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + 60
    n = 0
    while not all(requests_logged(c, warm) for c in three_order_replicas):
        assert time.monotonic() < deadline, "the gateway did not reach all three replicas"
        for _ in range(10):
            n += 1
            get_orders(api, admin, f"{warm}-{n}")
    tag = f"spread-{uuid.uuid4().hex[:8]}"
    for n in range(30):
        get_orders(api, admin, f"{tag}-{n}")
    deadline = time.monotonic() + 10  # a request's log line is written just after its response
    while sum(counts := [requests_logged(c, tag) for c in three_order_replicas]) < 30:
        assert time.monotonic() < deadline, counts
        time.sleep(0.2)
    assert sum(counts) == 30 and all(counts), counts


def place_until_accepted(gateway_url: str, user: User, body: dict[str, object], key: str) -> str:
    """POST the order as a client would while a replica dies: a 5xx is retried with the same Idempotency-Key."""
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        for _ in range(20):
            try:
                response = client.post("/api/customer-orders", json=body,
                                       headers={**user.headers, "Idempotency-Key": key})
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if response.status_code in (200, 202):
                return str(response.json()["saga_id"])
            # 409: the first attempt with this key is still being answered.
            assert response.status_code == 409 or response.status_code >= 500, response.text
            time.sleep(0.5)
    raise AssertionError(f"order {key} was never accepted")


@pytest.fixture
def two_orchestrators(compose: ComposeStack) -> Iterator[list[Container]]:
    with compose.scaled("saga_orchestrator", 2) as replicas:
        yield replicas


def test_an_orchestrator_container_killed_mid_load_and_every_saga_finishes_once(
        compose: ComposeStack, two_orchestrators: list[Container], gateway_url: str, api: httpx.Client,
        admin: User, customer: User, catalogue: Catalogue, faults: Any) -> None:
    assert len(two_orchestrators) == 2
    first, second = two_orchestrators
    # Slow carriers keep sagas in flight, so the killed replica dies holding some of them.
    faults("carrier_service", r"^/api/carriers/assignments$", status=0, count=-1, delay_ms=300)
    accepted: list[str] = []
    ten_accepted = threading.Event()
    lock = threading.Lock()

    def place_one(n: int) -> str:
        saga_id = place_until_accepted(gateway_url, customer, order_body(catalogue, quantity=1),
                                       f"kill-{n}-{uuid.uuid4()}")
        with lock:
            accepted.append(saga_id)
            if len(accepted) >= 10:
                ten_accepted.set()
        return saga_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(place_one, n) for n in range(30)]
        assert ten_accepted.wait(120), "ten orders were not accepted"
        second.kill()  # docker kill: its sagas' leases run out and the other replica takes them over
        saga_ids = [f.result() for f in futures]
    assert not second.alive()
    sagas = [finished(api, customer, saga_id, timeout=120) for saga_id in saga_ids]
    assert {s["status"] for s in sagas} == {"COMPLETED"}, [s["status"] for s in sagas]
    for saga in sagas:
        assert steps_succeeded(saga) == STEPS, saga["history"]
        assert event_types(saga).count("SagaCompleted") == 1
        assert len(payments(api, admin, saga["order_id"])) == 1
    assert len({s["order_id"] for s in sagas}) == 30
    assert first.alive()


def test_the_registry_refuses_anyone_without_its_credentials(compose: ComposeStack) -> None:
    """Issue 15 item 1 in containers: a neighbour on the stack's network cannot register a rogue instance or
    read the fleet's map without the registry's basic credentials (the real image's and the stand-in's)."""
    neighbour = compose.replicas("order_service")[0]
    rogue = {"instance": {"instanceId": "rogue:1", "hostName": "rogue", "app": "AUTH-SERVICE", "ipAddr": "10.9.9.9",
                          "status": "UP", "port": {"$": 8081, "@enabled": "true"},
                          "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                                             "name": "MyOwn"}}}
    password = os.environ.get("EUREKA_PASSWORD", "")
    for credentials in ("", "eureka:wrong@", "intruder:" + password + "@"):
        base = f"http://{credentials}eureka:8761/eureka"
        assert neighbour.request_from_here("POST", f"{base}/apps/AUTH-SERVICE", rogue)[0] == 401, credentials
        assert neighbour.request_from_here("GET", f"{base}/apps")[0] == 401, credentials
    assert all(i["instanceId"] != "rogue:1" for i in compose.registered("AUTH-SERVICE"))
    assert compose.registered("AUTH-SERVICE"), "the registry answers the right credentials"
