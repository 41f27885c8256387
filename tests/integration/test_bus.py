"""The event bus through the real fleet: a real nats-server, every service's relay and order_service's consumers.

The first test runs against a compose stack too (it only talks to the gateway); the fault tests take the broker
down, kill a relay between its publish and its delete, kill a consumer between its commit and its ack, send a
poison message and run two replicas of one outbox — each asserts the trace the fault must leave (a backlog, a
dropped duplicate, a repeat, a dead letter, both replicas' relays publishing), so a fault that missed fails it.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import httpx
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from customer_cli.fleet import METRICS_HEADERS
from shared import events
from shared.bus import BusConfig, Outgoing, connect, publish_in_order
from shared.db import utc_now
from tests.compose import ComposeStack
from tests.conftest import User
from tests.fleet import Fleet, ServiceProcess
from tests.integration.test_saga import Catalogue, make_catalogue, order_body, place

pytestmark = pytest.mark.integration
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 45) -> T:
    """Until `probe` returns something true; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def catalogue(gateway_url: str, admin: User) -> Catalogue:
    return make_catalogue(gateway_url, admin)


def completed_order(api: httpx.Client, customer: User, catalogue: Catalogue) -> str:
    saga = place(api, customer, order_body(catalogue, quantity=1))
    assert saga.status_code == 200 and saga.json()["status"] == "COMPLETED", saga.text
    return str(saga.json()["order_id"])


def shipment_of(api: httpx.Client, admin: User, order_id: str) -> dict[str, Any]:
    found = api.get("/api/shipments", params={"order_id": order_id}, headers=admin.headers).json()["items"]
    assert len(found) == 1, found
    return dict(found[0])


def progress(api: httpx.Client, admin: User, order_id: str, *statuses: str) -> None:
    shipment = shipment_of(api, admin, order_id)
    for status in statuses:
        answer = api.post(f"/api/shipments/{shipment['id']}/status", json={"status": status}, headers=admin.headers)
        assert answer.status_code == 200, answer.text


def order_status(api: httpx.Client, customer: User, order_id: str) -> str:
    return str(api.get(f"/api/orders/{order_id}", headers=customer.headers).json()["status"])


def timeline(api: httpx.Client, user: User, order_id: str) -> list[str]:
    answer = api.get(f"/api/orders/{order_id}/timeline", headers=user.headers)
    assert answer.status_code == 200, answer.text
    return [event["type"] for event in answer.json()["events"]]


# -- end to end (a local fleet or a compose stack) -------------------------------------------------------------

def test_a_delivered_parcel_delivers_its_order_and_the_timeline_tells_the_whole_story(
        api: httpx.Client, admin: User, customer: User, catalogue: Catalogue, register: Callable[[], User]) -> None:
    order_id = completed_order(api, customer, catalogue)
    progress(api, admin, order_id, "DISPATCHED")
    wait_for("the order SHIPPED", lambda: order_status(api, customer, order_id) == "SHIPPED")
    progress(api, admin, order_id, "IN_TRANSIT", "DELIVERED")
    wait_for("the order DELIVERED", lambda: order_status(api, customer, order_id) == "DELIVERED")

    expected = {"saga.step_succeeded.v1", "order.created.v1", "order.line_added.v1", "stock.allocated.v1",
                "payment.captured.v1", "carrier.assigned.v1", "shipment.created.v1", "order.confirmed.v1",
                "saga.completed.v1", "shipment.dispatched.v1", "order.shipped.v1", "shipment.in_transit.v1",
                "shipment.delivered.v1", "order.delivered.v1"}
    def whole_story() -> list[str] | None:
        types = timeline(api, customer, order_id)
        return types if expected <= set(types) else None

    told = wait_for("every service's events in the timeline", whole_story)
    assert told.index("order.created.v1") < told.index("stock.allocated.v1") < told.index("payment.captured.v1")
    assert told.index("shipment.dispatched.v1") < told.index("order.shipped.v1") < told.index("order.delivered.v1")
    assert told.count("order.delivered.v1") == 1
    assert "saga.started.v1" in told  # published before the order existed, joined to it through the saga
    # Another customer does not learn the order exists; an admin sees it.
    assert api.get(f"/api/orders/{order_id}/timeline", headers=register().headers).status_code == 404
    assert timeline(api, admin, order_id) == told


@pytest.fixture
def register(api: httpx.Client) -> Callable[[], User]:
    from tests.conftest import register_customer
    return lambda: register_customer(api)


# -- faults (a local fleet only: they stop and kill processes) -------------------------------------------------

@pytest.fixture(scope="module")
def fleet_only(stack: Fleet | ComposeStack) -> Fleet:
    if isinstance(stack, ComposeStack):
        pytest.skip("the bus's fault tests stop and kill local processes")
    return stack


def metric(proc: ServiceProcess, sample: str) -> float:
    """A sample's value on the process's /metrics (`name`: summed over its labels; or `name{label="value"}`)."""
    text = httpx.get(f"{proc.url}/metrics", headers=METRICS_HEADERS, timeout=10).text
    any_labels = "" if "{" in sample else r"(?:\{[^}]*\})?"
    pattern = "^" + re.escape(sample) + any_labels + r" ([0-9.e+-]+)$"
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


async def _stream(config: BusConfig, stream: str, after: int = 0) -> list[tuple[int, str, bytes, dict[str, str]]]:
    """The stream's messages after sequence `after`: (sequence, subject, body, headers), read in batches."""
    nc = await connect(config, reconnect_forever=False)
    try:
        js = nc.jetstream()
        last = (await js.stream_info(stream)).state.last_seq
        found: list[tuple[int, str, bytes, dict[str, str]]] = []
        if last <= after:
            return found
        reader = await js.pull_subscribe("", stream=stream, config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1, ack_policy=AckPolicy.NONE,
            inactive_threshold=30))
        while not found or found[-1][0] < last:
            for message in await reader.fetch(batch=500, timeout=10):
                found.append((message.metadata.sequence.stream, message.subject, message.data or b"",
                              dict(message.headers or {})))
        return found
    finally:
        await nc.close()


def on_the_bus(fleet: Fleet, order_id: str) -> list[tuple[int, events.CloudEvent]]:
    """The EVENTS stream's messages about one order, in stream order."""
    messages = asyncio.run(_stream(fleet.bus_config("operator"), events.EVENTS_STREAM))
    found = []
    for seq, _subject, body, _headers in messages:
        try:
            event = events.CloudEvent.model_validate_json(body)
        except ValueError:
            continue  # the poison test's message
        if event.orderid == order_id:
            found.append((seq, event))
    return found


def confirmed_on_the_bus(fleet: Fleet, order_id: str) -> bool:
    return any(event.type == "order.confirmed.v1" for _, event in on_the_bus(fleet, order_id))


def assert_once_and_in_order(found: list[tuple[int, events.CloudEvent]]) -> None:
    ids = [event.id for _, event in found]
    assert len(ids) == len(set(ids)), "an event is on the bus twice"
    order_events = [event.type for _, event in found if event.source.endswith("/order_service")]
    assert order_events[:3] == ["order.created.v1", "order.line_added.v1", "order.confirmed.v1"], order_events


def test_the_broker_down_orders_still_complete_then_everything_drains_in_order_once(
        fleet_only: Fleet, api: httpx.Client, customer: User, catalogue: Catalogue) -> None:
    fleet = fleet_only
    order_service = fleet.processes["order_service"]
    broker = fleet.nats
    assert broker is not None
    broker.stop()
    try:
        with ThreadPoolExecutor(4) as pool:
            placed = list(pool.map(lambda _: completed_order(api, customer, catalogue), range(6)))
        # Each order said it was created, given lines and confirmed: all of it waits in the outbox, counted.
        wait_for("the outbox's backlog shown", partial(backlog_at_least, order_service, 3 * len(placed)))
        assert httpx.get(f"{order_service.url}/ready").status_code == 200
    finally:
        broker.start()
        broker.wait_ready()
    for proc in fleet.processes.values():
        if proc.package != "gateway":
            wait_for(f"{proc.name}'s outbox drained", partial(drained, proc))
    for order_id in placed:
        wait_for("the order's events in its timeline", partial(told_completed, api, customer, order_id))
        assert_once_and_in_order(on_the_bus(fleet, order_id))


def backlog_at_least(proc: ServiceProcess, count: int) -> bool:
    return metric(proc, "events_outbox_backlog") >= count


def drained(proc: ServiceProcess) -> bool:
    return metric(proc, "events_outbox_backlog") == 0


def told_completed(api: httpx.Client, user: User, order_id: str) -> bool:
    told = timeline(api, user, order_id)
    return "saga.completed.v1" in told and "order.confirmed.v1" in told


def bus_fault(proc: ServiceProcess, **fault: Any) -> None:
    answer = httpx.post(f"{proc.url}/_faults/bus", json=fault, timeout=10)
    assert answer.status_code == 204, answer.text


def killed_then_restarted(fleet: Fleet, proc: ServiceProcess) -> ServiceProcess:
    wait_for(f"{proc.name} killed by the fault", lambda: not proc.alive(), timeout=30)
    return fleet.restart(proc.name)


def test_a_relay_killed_between_publish_and_delete_publishes_again_and_the_bus_drops_the_duplicate(
        fleet_only: Fleet, api: httpx.Client, customer: User) -> None:
    fleet = fleet_only
    order_service = fleet.processes["order_service"]
    bus_fault(order_service, crash_after_publish=True)
    created = api.post("/api/orders", json={"currency": "EUR"}, headers=customer.headers)
    assert created.status_code == 201, created.text
    order_id = created.json()["id"]
    restarted = killed_then_restarted(fleet, order_service)
    wait_for("the duplicate dropped", lambda: metric(restarted, "events_duplicates_total") >= 1)
    found = on_the_bus(fleet, order_id)
    assert [event.type for _, event in found] == ["order.created.v1"]
    wait_for("the outbox drained", lambda: metric(restarted, "events_outbox_backlog") == 0)


def test_a_consumer_killed_before_its_ack_gets_the_event_again_and_changes_nothing(
        fleet_only: Fleet, api: httpx.Client, admin: User, customer: User, catalogue: Catalogue) -> None:
    fleet = fleet_only
    order_id = completed_order(api, customer, catalogue)
    bus_fault(fleet.processes["order_service"], crash_before_ack="parcel")
    progress(api, admin, order_id, "DISPATCHED")
    restarted = killed_then_restarted(fleet, fleet.processes["order_service"])
    repeats = 'events_repeats_total{consumer="order_service_parcel"}'
    wait_for("the event delivered again", lambda: metric(restarted, repeats) >= 1)
    # (through the gateway, which may take a moment to route to the restarted instance)
    wait_for("the order SHIPPED", lambda: order_status(api, customer, order_id) == "SHIPPED")

    def shipped() -> list[events.CloudEvent]:
        return [event for _, event in on_the_bus(fleet, order_id) if event.type == "order.shipped.v1"]

    # The order said so once: its outbox row, committed before the kill, published by the restarted relay.
    assert len(wait_for("order.shipped on the bus", shipped)) == 1
    wait_for("the outbox drained", lambda: metric(restarted, "events_outbox_backlog") == 0)
    assert len(shipped()) == 1


def test_a_poison_message_is_dead_lettered_and_the_rest_keep_flowing(
        fleet_only: Fleet, api: httpx.Client, admin: User, customer: User, catalogue: Catalogue) -> None:
    fleet = fleet_only
    order_id = completed_order(api, customer, catalogue)
    poison_id = f"poison-{uuid.uuid4()}"
    good = events.envelope(events.ShipmentDispatched(order_id=order_id, shipment_id="s-1", tracking_number="T-1"),
                           "s-1", time=utc_now(), order_id=order_id)

    async def publish() -> None:
        nc = await connect(fleet.bus_config("shipment_service"), reconnect_forever=False)
        try:
            js = nc.jetstream()
            await js.publish(events.ShipmentDelivered.nats_subject(), b'{"not": "a cloud event"}',
                             headers={"Nats-Msg-Id": poison_id})
            await publish_in_order(js, [Outgoing(good.id, good.nats_subject, good.model_dump_json().encode())])
        finally:
            await nc.close()

    asyncio.run(publish())
    wait_for("the good event applied", lambda: order_status(api, customer, order_id) == "SHIPPED")

    def dead_letters() -> set[str]:
        letters = asyncio.run(_stream(fleet.bus_config("operator"), events.DEAD_LETTER_STREAM))
        return {headers.get("CS-Consumer", "") for _, _, body, headers in letters if b"not" in body}

    assert wait_for("the poison dead-lettered by both consumers",
                    lambda: (found := dead_letters()) >= {"order_service_parcel", "order_service_timeline"} and found)


def test_two_replicas_never_publish_one_outbox_out_of_order(
        fleet_only: Fleet, api: httpx.Client, customer: User, catalogue: Catalogue) -> None:
    fleet = fleet_only
    first = fleet.processes["order_service"]
    with fleet.extra("order_service", "order_service-2") as second:
        fleet.wait_routable()
        before = {proc.name: metric(proc, "events_published_total") for proc in (first, second)}
        with ThreadPoolExecutor(8) as pool:
            placed = list(pool.map(lambda _: completed_order(api, customer, catalogue), range(24)))
        for order_id in placed:
            wait_for("the order's confirmation on the bus", partial(confirmed_on_the_bus, fleet, order_id))
            assert_once_and_in_order(on_the_bus(fleet, order_id))
        published = {proc.name: metric(proc, "events_published_total") - before[proc.name] for proc in (first, second)}
        assert all(count > 0 for count in published.values()), f"one relay did all the work: {published}"


@pytest.fixture(autouse=True)
def _no_fault_left(stack: Fleet | ComposeStack) -> Iterator[None]:
    yield
    if isinstance(stack, Fleet):
        for proc in stack.processes.values():
            if proc.alive() and proc.package != "gateway":
                httpx.post(f"{proc.url}/_faults/bus", json={}, timeout=10)
