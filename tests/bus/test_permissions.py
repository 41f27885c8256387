"""Nothing anonymous on the bus, and each user only where it belongs: against a real nats-server with the fleet's
users (customer_cli/nats.py). A forged "payment captured" from order_service never reaches the stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy import MetaData, select

from customer_cli.nats import GATEWAY_USER, NATS_USERS, OPERATOR_USER, NatsServer
from shared.bus import Bus, Consumer, ensure_streams, inbox_table
from shared.db import Database, Tx
from shared.events import (
    CONSUMERS,
    DEAD_LETTER_STREAM,
    EVENTS_STREAM,
    CloudEvent,
    EventData,
    OrderCreated,
    PaymentCaptured,
    ShipmentDelivered,
    dead_letter_subject,
    durable_name,
    envelope,
)
from tests.bus.conftest import BusClient, ConnectAs

FORGED_CAPTURE = PaymentCaptured.nats_subject()  # events.payment.captured.v1


def _event(data: EventData, subject: str = "order-1") -> tuple[str, bytes]:
    event = envelope(data, subject, time=datetime.now(UTC), order_id=subject)
    return event.nats_subject, event.model_dump_json().encode()


def _order_created() -> tuple[str, bytes]:
    return _event(OrderCreated(order_id="order-1", customer_id="customer-1", currency="EUR"))


def _capture() -> tuple[str, bytes]:
    return _event(PaymentCaptured(order_id="order-1", payment_id="payment-1", amount_minor=1999, currency="EUR"))


def _delivered(order_id: str) -> tuple[str, bytes]:
    return _event(ShipmentDelivered(order_id=order_id, shipment_id=f"shipment-{order_id}",
                                    tracking_number="TRACK-1"), order_id)


async def _until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within}s: {what}")


async def _quiet(_error: Exception) -> None:
    """nats-py logs every refused connect from its default error callback: the refusal is what the test asserts."""


async def test_a_client_without_credentials_is_refused(nats_server: NatsServer) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_server.url, allow_reconnect=False, connect_timeout=2, error_cb=_quiet)


async def test_a_wrong_password_is_refused_and_each_users_own_is_accepted(nats_server: NatsServer,
                                                                           connect_as: ConnectAs) -> None:
    for user, password in (("order_service", "wrong-password"),
                           ("payment_service", nats_server.passwords["order_service"]),  # another's password
                           ("nobody", nats_server.passwords["operator"])):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(nats_server.url, user=user, password=password, allow_reconnect=False,
                               connect_timeout=2, error_cb=_quiet)
    for user in NATS_USERS:
        assert (await connect_as(user)).nc.is_connected, user


async def test_a_service_publishes_its_own_events_into_the_stream(connect_as: ConnectAs, operator: BusClient) -> None:
    orders = await connect_as("order_service")
    await ensure_streams(orders.js)  # a service's user may create the streams
    subject, body = _order_created()
    ack = await orders.js.publish(subject, body, stream=EVENTS_STREAM, headers={"Nats-Msg-Id": "event-1"})
    assert (ack.stream, ack.seq, ack.duplicate) == (EVENTS_STREAM, 1, None)
    stored = await operator.js.get_msg(EVENTS_STREAM, 1)
    assert stored.subject == "events.order.created.v1" and CloudEvent.model_validate_json(stored.data or b"").type \
        == OrderCreated.event_type()
    assert orders.violations() == []


async def test_a_forged_payment_captured_from_order_service_never_lands(connect_as: ConnectAs,
                                                                        operator: BusClient) -> None:
    orders = await connect_as("order_service")
    await ensure_streams(orders.js)
    subject, body = _capture()
    assert subject == FORGED_CAPTURE
    # Through JetStream: no PubAck comes (the server dropped it and said why to the error callback) …
    with pytest.raises(nats.errors.TimeoutError):
        await orders.js.publish(subject, body, stream=EVENTS_STREAM, timeout=1)
    assert "permissions violation for publish" in await orders.refusal(f'publish to "{FORGED_CAPTURE}"')
    # … and as a plain publish, fire and forget.
    orders.errors.clear()
    await orders.nc.publish(subject, body)
    await orders.refusal(FORGED_CAPTURE)
    assert await operator.stream_messages() == 0  # the stream never saw either
    # Deleting or purging the stream is no service's business either.
    with pytest.raises(nats.errors.TimeoutError):
        await orders.js.purge_stream(EVENTS_STREAM)
    await orders.refusal("$JS.API.STREAM.PURGE.EVENTS")
    with pytest.raises(nats.errors.TimeoutError):
        await orders.js.delete_stream(EVENTS_STREAM)
    await orders.refusal("$JS.API.STREAM.DELETE.EVENTS")
    # The real payment_service may: the stream has exactly its one capture.
    payments = await connect_as("payment_service")
    await payments.js.publish(subject, body, stream=EVENTS_STREAM)
    assert await operator.stream_messages() == 1 and payments.violations() == []


async def test_the_gateway_listens_to_every_event_and_publishes_none(connect_as: ConnectAs,
                                                                     operator: BusClient) -> None:
    gateway = await connect_as(GATEWAY_USER)
    heard: asyncio.Queue[Msg] = asyncio.Queue()

    async def hear(message: Msg) -> None:
        await heard.put(message)

    await gateway.nc.subscribe("events.>", cb=hear)
    await gateway.nc.flush()
    orders = await connect_as("order_service")
    await ensure_streams(orders.js)
    subject, body = _order_created()
    await orders.js.publish(subject, body, stream=EVENTS_STREAM)
    assert (await asyncio.wait_for(heard.get(), 5)).subject == subject
    assert gateway.violations() == []

    await gateway.nc.publish(subject, body)  # a forged order from the dashboard's side
    await gateway.refusal(f'publish to "{subject}"')
    assert await operator.stream_messages() == 1  # only order_service's
    # The dead letters (and anything but events and its own inbox) are not its to read.
    await gateway.nc.subscribe("deadletter.>")
    await gateway.refusal('subscription to "deadletter.>"')


async def _inbox_database(tmp_path: Path) -> Database:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'order_service.db'}")
    metadata = MetaData()
    inbox_table(metadata)
    async with db.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    return db


async def test_a_service_consumes_and_dead_letters_through_its_own_durable(
        tmp_path: Path, nats_server: NatsServer, connect_as: ConnectAs, operator: BusClient) -> None:
    """shared.bus.Consumer as order_service runs it (its user, its durable): an event applied and acked, a poison
    one dead-lettered on its own dead-letter subject. Every call it makes is one its permissions allow."""
    package, name = "order_service", "parcel"
    db = await _inbox_database(tmp_path)
    applied: list[str] = []

    async def follow_parcel(tx: Tx, received: list[CloudEvent]) -> None:
        for event in received:
            if event.orderid == "poison":
                raise ValueError("a parcel of no order")
        # What committed, as a real handler's effect.
        tx.after_commit(lambda: applied.extend(str(event.orderid) for event in received))

    consumer = Consumer(db, package, name, CONSUMERS[package][name], follow_parcel, max_deliver=1)
    bus = Bus(nats_server.bus_config(package))
    shipments = await connect_as("shipment_service")
    await ensure_streams(shipments.js)
    bus.start(consumer)
    try:
        for order_id in ("order-1", "poison", "order-2"):
            subject, body = _delivered(order_id)
            await shipments.js.publish(subject, body, stream=EVENTS_STREAM)

        async def settled() -> bool:
            try:
                info = await operator.js.consumer_info(EVENTS_STREAM, durable_name(package, name))
            except nats.js.errors.NotFoundError:
                return False
            return info.ack_floor.stream_seq == 3 and info.num_ack_pending == 0

        await _until(settled, "the durable's three deliveries acked or terminated")
        assert applied == ["order-1", "order-2"]
        async with db.transaction() as tx:
            inbox = await tx.fetch(select(inbox_table(MetaData()).c.consumer))
        assert {row["consumer"] for row in inbox} == {durable_name(package, name)} and len(inbox) == 2
        assert await operator.stream_messages(DEAD_LETTER_STREAM) == 1
        dead = await operator.js.get_msg(DEAD_LETTER_STREAM, 1)
        assert dead.subject == dead_letter_subject(package, name)
        assert CloudEvent.model_validate_json(dead.data or b"").orderid == "poison"
    finally:
        await bus.stop()
        await db.dispose()


async def test_a_service_cannot_create_or_read_another_services_durable(connect_as: ConnectAs,
                                                                        operator: BusClient) -> None:
    durable = durable_name("order_service", "parcel")
    config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT)
    payments = await connect_as("payment_service")
    await ensure_streams(payments.js)
    # Not order_service's durable …
    with pytest.raises(nats.errors.TimeoutError):
        await payments.js.pull_subscribe("events.shipment.>", durable=durable, stream=EVENTS_STREAM, config=config)
    await payments.refusal(f"$JS.API.CONSUMER.INFO.{EVENTS_STREAM}.{durable}")
    # … nor a durable of its own the catalogue does not give it.
    own = durable_name("payment_service", "shipments")
    with pytest.raises(nats.errors.TimeoutError):
        await payments.js.add_consumer(EVENTS_STREAM, ConsumerConfig(
            name=own, durable_name=own, filter_subject="events.shipment.>", ack_policy=AckPolicy.EXPLICIT))
    await payments.refusal(f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.{own}")
    assert [c.name for c in await operator.js.consumers_info(EVENTS_STREAM)] == []

    orders = await connect_as("order_service")
    parcel = await orders.js.pull_subscribe("events.shipment.>", durable=durable, stream=EVENTS_STREAM,
                                            config=config)
    shipments = await connect_as("shipment_service")
    subject, body = _delivered("order-1")
    await shipments.js.publish(subject, body, stream=EVENTS_STREAM)
    # Bound to order_service's durable, payment_service's pulls go nowhere: no message, nothing taken from it.
    stolen = await payments.js.pull_subscribe_bind(durable, stream=EVENTS_STREAM)
    with pytest.raises(nats.errors.TimeoutError):
        await stolen.fetch(1, timeout=1)
    await payments.refusal(f"$JS.API.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.{durable}")
    info = await operator.js.consumer_info(EVENTS_STREAM, durable)
    assert (info.num_pending, info.num_ack_pending, info.delivered.stream_seq) == (1, 0, 0)
    # order_service still gets it, and may acknowledge it.
    [message] = await parcel.fetch(1, timeout=5)
    assert message.subject == subject
    await message.ack_sync()
    assert orders.violations() == [] and (await operator.js.consumer_info(EVENTS_STREAM, durable)).num_ack_pending == 0


async def test_the_broker_killed_comes_back_on_its_port_with_its_stream(nats_server: NatsServer,
                                                                        connect_as: ConnectAs) -> None:
    """What the fault tests rely on: NatsServer.kill and start keep the port, the store and the users."""
    orders = await connect_as("order_service")
    await ensure_streams(orders.js)
    subject, body = _order_created()
    await orders.js.publish(subject, body, stream=EVENTS_STREAM)
    port = nats_server.port
    nats_server.kill()
    assert not nats_server.alive() and not nats_server.ready()
    nats_server.start()
    nats_server.wait_ready()
    assert nats_server.port == port
    operator = await connect_as(OPERATOR_USER)
    assert await operator.stream_messages() == 1
