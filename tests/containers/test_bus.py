"""The event bus in the compose stack: the stack's own NATS container carries every service's events, each service
connected as its own user and nobody else let in; stopped in the middle of work, orders still complete, the events
wait in the outboxes, and they arrive once NATS is back — recreated on its volume, its stream kept.

Runs only where CI's container phase enables it (CONTAINER_TESTS=1, GATEWAY_URL at the stack's gateway): it stops
and recreates the stack's NATS container. tests/integration/test_bus.py's end-to-end test runs against the stack too
(the timeline through the gateway); these look at the broker itself, through Docker.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from customer_cli.fleet import COMPONENTS
from tests.compose import ComposeStack, Container, docker
from tests.conftest import User
from tests.integration.test_bus import completed_order, order_status, progress, timeline, wait_for
from tests.integration.test_saga import Catalogue, make_catalogue

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("CONTAINER_TESTS") != "1",
                       reason="stops and recreates the stack's NATS: only in CI's container phase (CONTAINER_TESTS=1)"),
]

# The services that publish (a relay each) or consume; the gateway listens for the dashboard's live view.
PUBLISHERS = sorted(package for package, component in COMPONENTS.items() if component.database)
PARCEL_CONSUMERS = ("order_service_parcel", "order_service_timeline")

# Run inside a service's container (its image has nats-py): who the bus lets in, and what it lets them publish.
_BUS_PROBE = """
import asyncio, json, sys
import nats
url, user, password, forged = sys.argv[1:5]

async def connect(**credentials):
    errors = []
    async def heard(error):
        errors.append(str(error))
    prefix = "_INBOX_" + credentials.get("user", "anonymous")
    nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3,
                            error_cb=heard, inbox_prefix=prefix.encode(), **credentials)
    return nc, errors

async def refused(**credentials):
    try:
        nc, _ = await connect(**credentials)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    await nc.close()
    return None

async def main():
    found = {"anonymous": await refused(), "wrong password": await refused(user=user, password=password + "x")}
    nc, errors = await connect(user=user, password=password)
    await nc.publish(forged, b"{}")
    await nc.flush(timeout=3)
    for _ in range(60):  # the server's refusal comes back asynchronously: up to 3 s
        if errors:
            break
        await asyncio.sleep(0.05)
    found["forged publish"] = errors[0] if errors else None
    await nc.close()
    print(json.dumps(found))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def catalogue(gateway_url: str, admin: User) -> Catalogue:
    return make_catalogue(gateway_url, admin)


def nats_container(compose: ComposeStack) -> str:
    (container_id,) = compose.compose("ps", "-q", "nats").split()
    return container_id


def monitor(compose: ComposeStack, path: str) -> dict[str, Any]:
    """An answer of NATS's monitoring port, asked inside its container (wget: busybox's in the official image,
    Debian's in CI's stand-in); the port is published nowhere."""
    out = docker("exec", nats_container(compose), "wget", "-q", "-O", "-", f"http://127.0.0.1:8222{path}")
    return dict(json.loads(out))


def events_stream(compose: ComposeStack) -> dict[str, Any]:
    """The EVENTS stream's state, and its consumers by name."""
    jsz = monitor(compose, "/jsz?accounts=true&streams=true&consumers=true")
    streams = [stream for account in jsz.get("account_details", []) for stream in account.get("stream_detail", [])]
    (events,) = [stream for stream in streams if stream["name"] == "EVENTS"]
    return {**events["state"], "consumers": {c["name"]: c for c in events.get("consumer_detail", [])}}


def consumers_idle(compose: ComposeStack) -> bool:
    """order_service's consumers have every event of the stream applied and acknowledged."""
    found = events_stream(compose)["consumers"]
    return all(name in found and found[name]["num_pending"] == 0 and found[name]["num_ack_pending"] == 0
               for name in PARCEL_CONSUMERS)


def connected_users(compose: ComposeStack) -> set[str]:
    return {c.get("authorized_user", "") for c in monitor(compose, "/connz?auth=true&limit=1024")["connections"]}


def backlog(container: Container, admin: User) -> float:
    """The service's events_outbox_backlog (events written, not yet on the bus), from its /metrics (an admin's)."""
    status, text = container.request("GET", "/metrics", headers=admin.headers)
    assert status == 200, text
    found = re.findall(r"^events_outbox_backlog ([0-9.e+-]+)$", text, re.MULTILINE)
    assert found, "no events_outbox_backlog on /metrics"
    return float(found[0])


def timeline_holding(api: httpx.Client, user: User, order_id: str, *types: str) -> list[str]:
    """The order's timeline (its event types, in order) once it holds every one of `types`."""
    def probe() -> list[str] | None:
        told = timeline(api, user, order_id)
        return told if set(types) <= set(told) else None
    return wait_for(f"{', '.join(types)} on the order's timeline", probe)


def test_every_service_is_on_the_stacks_nats_as_its_own_user_and_the_events_cross_it(
        compose: ComposeStack, api: httpx.Client, admin: User, customer: User, catalogue: Catalogue) -> None:
    wait_for("every service connected to NATS as its own user",
             lambda: {*PUBLISHERS, "gateway"} <= connected_users(compose), timeout=60)
    before = events_stream(compose)
    order_id = completed_order(api, customer, catalogue)
    progress(api, admin, order_id, "DISPATCHED", "IN_TRANSIT", "DELIVERED")
    wait_for("the order DELIVERED (the shipment's events through NATS to order_service)",
             lambda: order_status(api, customer, order_id) == "DELIVERED")
    # (order.delivered is order_service's own event: its outbox, the relay and the timeline's consumer after the status)
    told = timeline_holding(api, customer, order_id, "saga.completed.v1", "payment.captured.v1",
                            "shipment.delivered.v1", "order.delivered.v1")
    assert told.count("shipment.delivered.v1") == 1 and told.count("order.delivered.v1") == 1
    wait_for("order_service's consumers caught up", lambda: consumers_idle(compose))
    after = events_stream(compose)
    # Every event of the timeline went through this broker's stream (plus the events without an order).
    assert after["last_seq"] - before["last_seq"] >= len(told), (before, after, told)


def test_nobody_reaches_the_bus_without_credentials_or_publishes_another_services_events(
        compose: ComposeStack) -> None:
    """A neighbour on the stack's network (here: inside order_service's container) is refused anonymously and with a
    wrong password; order_service's own user may not publish a payment's event (a forged "payment captured")."""
    neighbour = compose.replicas("order_service")[0]
    out = docker("exec", neighbour.container_id, "sh", "-c",
                 'exec python -c "$0" nats://nats:4222 "$NATS_USER" "$NATS_PASSWORD" events.payment.captured.v1',
                 _BUS_PROBE, timeout=60)
    found = json.loads(out)
    assert "Authorization Violation" in (found["anonymous"] or ""), found
    assert "Authorization Violation" in (found["wrong password"] or ""), found
    assert "permissions violation" in (found["forged publish"] or "").lower(), found


@pytest.fixture
def nats_restored(compose: ComposeStack) -> Iterator[None]:
    """NATS running again after the test, whatever happened in it (the rest of the phase needs it)."""
    yield
    compose.compose("up", "-d", "--no-deps", "--wait", "--wait-timeout", "120", "nats", timeout=180)


def test_nats_stopped_orders_complete_and_the_held_events_arrive_once_it_is_back_on_its_volume(
        compose: ComposeStack, nats_restored: None, api: httpx.Client, admin: User, customer: User,
        catalogue: Catalogue) -> None:
    wait_for("order_service's consumers caught up", lambda: consumers_idle(compose))
    before = events_stream(compose)
    old_container = nats_container(compose)
    compose.compose("stop", "nats")

    # The saga needs no bus: the order completes, and an operator moves its parcel all the way.
    order_id = completed_order(api, customer, catalogue)
    progress(api, admin, order_id, "DISPATCHED", "IN_TRANSIT", "DELIVERED")
    # The trace of the fault: the shipment's events wait in its outbox, so the order has not moved, and every
    # service still answers ready.
    (shipments,) = compose.replicas("shipment_service")
    wait_for("the shipment's events held in its outbox", lambda: backlog(shipments, admin) >= 3)
    assert order_status(api, customer, order_id) == "CONFIRMED"
    for package in [*PUBLISHERS, "gateway"]:
        for replica in compose.replicas(package):
            assert replica.request("GET", "/ready")[0] == 200, replica.name

    # A new NATS container on the same volume: the stream it had, and then everything that was held.
    compose.compose("up", "-d", "--no-deps", "--force-recreate", "--wait", "--wait-timeout", "120", "nats",
                    timeout=180)
    assert nats_container(compose) != old_container
    wait_for("the order DELIVERED once NATS is back", lambda: order_status(api, customer, order_id) == "DELIVERED",
             timeout=90)
    wait_for("the shipment's outbox drained", lambda: backlog(shipments, admin) == 0)
    told = timeline_holding(api, customer, order_id, "saga.completed.v1", "payment.captured.v1",
                            "shipment.dispatched.v1", "order.delivered.v1")
    assert told.count("shipment.delivered.v1") == 1 and told.count("order.delivered.v1") == 1
    after = events_stream(compose)
    assert after["first_seq"] == before["first_seq"], (before, after)  # the volume kept the stream
    assert after["last_seq"] - before["last_seq"] >= len(told), (before, after)
