"""The CLI's view of the bus against a real nats-server: `events tail` shows what the services publish (live, or
the stream from its start, filtered by type and order), `events dead-letters` lists what a consumer gave up on and
replays it on its own subject, where the consumer applies it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.msg import Msg
from sqlalchemy import MetaData

from customer_cli.nats import OPERATOR_USER, NatsServer
from customer_cli.processes import ROOT
from shared.bus import Bus, Consumer, Outgoing, ensure_streams, inbox_table, publish_in_order
from shared.db import Database, Tx
from shared.events import (
    CONSUMERS,
    DEAD_LETTER_STREAM,
    CloudEvent,
    EventData,
    OrderConfirmed,
    OrderCreated,
    ShipmentCreated,
    ShipmentDelivered,
    envelope,
)
from tests.bus.conftest import BusClient, ConnectAs

CLI_TIMEOUT = 60


@dataclass(frozen=True)
class CliRun:
    returncode: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def json_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]


def _cli_env(server: NatsServer) -> dict[str, str]:
    """The CLI as an operator elsewhere runs it: the bus and the operator's credentials from the environment."""
    config = server.bus_config(OPERATOR_USER)
    return {**os.environ, "NATS_URL": config.url, "NATS_USER": config.user, "NATS_PASSWORD": config.password,
            "COLUMNS": "200", "NO_COLOR": "1"}


async def _start_cli(server: NatsServer, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "customer_cli", "events", *args, cwd=ROOT, env=_cli_env(server),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _finished(process: asyncio.subprocess.Process, before: bytes = b"") -> CliRun:
    stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    return CliRun(process.returncode or 0, stdout.decode(), (before + stderr).decode())


async def cli(server: NatsServer, *args: str) -> CliRun:
    """`customer-service events ARGS` in a process of its own, to its end."""
    return await _finished(await _start_cli(server, *args))


async def _following(process: asyncio.subprocess.Process) -> bytes:
    """Wait until a live tail says it follows (its subscription is on the server), or fail with what it said."""
    assert process.stderr is not None
    said = await asyncio.wait_for(process.stderr.readline(), CLI_TIMEOUT)
    assert said.startswith(b"Following "), said
    return said


async def _until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


def _order_event(data: EventData, order_id: str) -> Outgoing:
    event = envelope(data, order_id, time=datetime.now(UTC), order_id=order_id)
    return Outgoing(event.id, event.nats_subject, event.model_dump_json().encode())


def _parcel(model: type[ShipmentCreated] | type[ShipmentDelivered], order_id: str) -> Outgoing:
    shipment_id = f"ship-{order_id}"
    event = envelope(model(order_id=order_id, shipment_id=shipment_id, tracking_number="CS000000000001"),
                     shipment_id, time=datetime.now(UTC), order_id=order_id)
    return Outgoing(event.id, event.nats_subject, event.model_dump_json().encode())


def _created(order_id: str) -> Outgoing:
    return _order_event(OrderCreated(order_id=order_id, customer_id="customer-1", currency="EUR"), order_id)


def _confirmed(order_id: str) -> Outgoing:
    return _order_event(OrderConfirmed(order_id=order_id, customer_id="customer-1", total_minor=1250,
                                       currency="EUR"), order_id)


async def test_tail_shows_each_event_published_while_it_follows(nats_server: NatsServer,
                                                                connect_as: ConnectAs) -> None:
    orders = await connect_as("order_service")  # published as the service publishes: its own user
    await ensure_streams(orders.js)
    tail = await _start_cli(nats_server, "tail", "--count", "3")
    said = await _following(tail)
    assert b"events.>" in said and b"as operator" in said
    published = [_created("order-a"), _confirmed("order-a"), _created("order-b")]
    await publish_in_order(orders.js, published)
    run = await _finished(tail, said)
    assert run.returncode == 0, run.stderr
    lines = run.lines()
    assert len(lines) == 3, run.stdout
    # time, type, subject, orderid, the data in short (without the ids already shown)
    assert lines[0].split()[1:5] == ["order.created.v1", "order-a", "order-a", "customer_id=customer-1"]
    assert lines[1].split()[1:4] == ["order.confirmed.v1", "order-a", "order-a"]
    assert "total_minor=1250" in lines[1] and "currency=EUR" in lines[1]
    assert lines[2].split()[1:4] == ["order.created.v1", "order-b", "order-b"]
    assert lines[0].split()[0].endswith("Z")  # the event's own time, UTC


async def test_tail_from_the_start_filters_by_type_and_order(nats_server: NatsServer,
                                                              connect_as: ConnectAs) -> None:
    orders, shipments = await connect_as("order_service"), await connect_as("shipment_service")
    await ensure_streams(orders.js)
    mine, other = f"order-{uuid.uuid4().hex[:8]}", f"order-{uuid.uuid4().hex[:8]}"
    await publish_in_order(orders.js, [_created(other), _created(mine)])
    await publish_in_order(shipments.js, [_parcel(ShipmentCreated, mine)])
    await publish_in_order(orders.js, [_confirmed(other), _confirmed(mine)])

    # A family and an order: the stream read from its first message, in order; the others' events skipped.
    run = await cli(nats_server, "tail", "--from-start", "--type", "order", "--order", mine, "--count", "2", "--json")
    assert run.returncode == 0, run.stderr
    assert [(e["type"], e["orderid"]) for e in run.json_lines()] == [("order.created.v1", mine),
                                                                       ("order.confirmed.v1", mine)]
    assert CloudEvent.model_validate(run.json_lines()[1]).data["total_minor"] == 1250

    # One event type, any version; one version; every event of one family: nothing else in the window.
    for wanted in ("order.confirmed", "order.confirmed.v1"):
        run = await cli(nats_server, "tail", "--from-start", "--type", wanted, "--duration", "1.5", "--json")
        assert [(e["type"], e["orderid"]) for e in run.json_lines()] == [("order.confirmed.v1", other),
                                                                           ("order.confirmed.v1", mine)], wanted
    run = await cli(nats_server, "tail", "--from-start", "--type", "shipment", "--duration", "1.5")
    assert [line.split()[1] for line in run.lines()] == ["shipment.created.v1"]
    assert "ship-" in run.stdout and "tracking_number=CS000000000001" in run.stdout

    refused = await cli(nats_server, "tail", "--type", "parcel.lost")
    assert refused.returncode == 1 and "no event type 'parcel.lost'" in refused.stderr


async def test_a_dead_letter_is_listed_then_replayed_on_its_subject_and_applied(
        tmp_path: Path, nats_server: NatsServer, connect_as: ConnectAs, operator: BusClient) -> None:
    """order_service's parcel consumer (shared.bus.Consumer, its own user and durable) gives up on an event; the
    operator sees it in the list, replays it once the cause is gone, and the consumer applies it."""
    package, name = "order_service", "parcel"
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'order_service.db'}")
    metadata = MetaData()
    inbox_table(metadata)
    async with db.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    broken = True
    applied: list[str] = []

    async def follow_parcel(tx: Tx, received: list[CloudEvent]) -> None:
        if broken:
            raise RuntimeError("the order's database said no")
        tx.after_commit(lambda: applied.extend(event.id for event in received))

    bus = Bus(nats_server.bus_config(package))
    bus.start(Consumer(db, package, name, CONSUMERS[package][name], follow_parcel, max_deliver=1))
    shipments = await connect_as("shipment_service")
    await ensure_streams(shipments.js)
    delivered = _parcel(ShipmentDelivered, "order-a")
    try:
        await publish_in_order(shipments.js, [delivered])

        async def dead_lettered() -> bool:
            try:
                return await operator.stream_messages(DEAD_LETTER_STREAM) == 1
            except Exception:  # the stream is made by the consumer's bus when it connects
                return False

        await _until(dead_lettered, "the consumer's dead letter")

        listed = await cli(nats_server, "dead-letters", "--json")
        assert listed.returncode == 0, listed.stderr
        page = json.loads(listed.stdout)
        assert page["total"] == 1
        [letter] = page["items"]
        assert letter["consumer"] == "order_service_parcel" and letter["subject"] == delivered.subject
        assert letter["event"]["id"] == delivered.id and letter["event"]["orderid"] == "order-a"
        assert "the order's database said no" in letter["error"] and letter["deliveries"] == 1
        table = await cli(nats_server, "dead-letters")
        assert "order_service_parcel" in table.stdout and "shipment.delivered.v1" in table.stdout
        assert "1 in the stream" in table.stdout

        seen: list[Msg] = []

        async def heard(message: Msg) -> None:
            seen.append(message)

        await operator.nc.subscribe(delivered.subject, cb=heard)
        await operator.nc.flush()
        broken = False  # the cause is mended: the operator replays
        sequence = letter["sequence"]
        replayed = await cli(nats_server, "dead-letters", "--replay", str(sequence))
        assert replayed.returncode == 0, replayed.stderr
        assert f"Replayed dead letter {sequence}" in replayed.stdout and "deleted" in replayed.stdout

        async def republished() -> bool:
            return bool(seen)

        await _until(republished, "the event again on its own subject")
        again = seen[0]
        assert CloudEvent.model_validate_json(again.data).id == delivered.id  # the same event: consumers dedupe it
        assert (again.headers or {}).get("Nats-Msg-Id") == f"{delivered.id}:replay:{sequence}"

        async def consumed() -> bool:
            return applied == [delivered.id]

        await _until(consumed, "the consumer applying the replayed event")
        assert await operator.stream_messages(DEAD_LETTER_STREAM) == 0
        after = await cli(nats_server, "dead-letters", "--json")
        assert json.loads(after.stdout) == {"total": 0, "items": []}
        gone = await cli(nats_server, "dead-letters", "--replay", str(sequence))
        assert gone.returncode == 1 and f"no dead letter {sequence}" in gone.stderr
    finally:
        await bus.stop()
        await db.dispose()


async def test_a_bus_that_refuses_the_operator_is_said_in_a_line(nats_server: NatsServer) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "customer_cli", "events", "dead-letters", cwd=ROOT,
        env={**_cli_env(nats_server), "NATS_PASSWORD": "not-the-password"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    run = await _finished(process)
    assert run.returncode == 1
    assert "did not take the connection" in run.stderr and "Authorization Violation" in run.stderr
    assert "Traceback" not in run.stderr
