"""Fixtures of the saga unit tests: the event store and saga index on SQLite and PostgreSQL, scripted participants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import saga_orchestrator
from saga_orchestrator import service
from saga_orchestrator.event_store import SagaStore
from saga_orchestrator.index import SagaIndexStore
from saga_orchestrator.runner import SagaRunner
from saga_orchestrator.schemas import CustomerOrderCreate
from saga_orchestrator.settings import Settings
from shared.auth import Identity
from shared.db import Database, utc_now
from shared.migrations import upgrade_to_head
from tests.inprocess import fresh_database_url
from tests.saga_orchestrator.fakes import FakeParticipants

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}


def order(**overrides: Any) -> CustomerOrderCreate:
    body: dict[str, Any] = {"lines": [{"sku": "KB-1", "quantity": 2}, {"sku": "MS-1", "quantity": 1}],
                            "shipping_address": ADDRESS, "payment_token": "tok_visa"}
    body.update(overrides)
    return CustomerOrderCreate.model_validate(body)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('saga')}/saga.db"
    else:
        url = fresh_database_url(f"cs_unit_saga_{request.module.__name__.rsplit('.', 1)[-1]}")
    await asyncio.to_thread(upgrade_to_head, Path(saga_orchestrator.__file__).parent, url)
    return url


@dataclass
class Replica:
    """One orchestrator's worth of parts, without HTTP: store, index, runner, scripted participants."""

    orch: service.Orchestrator
    participants: FakeParticipants
    db: Database
    saves: list[int]

    @property
    def runner(self) -> SagaRunner:
        return self.orch.runner

    async def place(self, customer: str = "cust-1", key: str = "k-1", **overrides: Any) -> str:
        row, _ = await service.place_customer_order(self.orch, Identity(customer, frozenset({"customer"})), key,
                                                    order(**overrides), {"request_id": "req-1"})
        return row.saga_id


ReplicaFactory = Callable[..., Any]


@pytest.fixture
async def replicas(database_url: str) -> AsyncIterator[ReplicaFactory]:
    made: list[Replica] = []

    async def make(owner: str = "replica-a", lease_clock: Callable[[], datetime] = utc_now, **settings: Any) -> Replica:
        """`lease_clock`: what the replica's index counts its leases by (the runner keeps the real time)."""
        values: dict[str, Any] = {"database_url": database_url, "eureka_server_url": "", "step_deadline_secs": 1,
                                  "compensation_deadline_secs": 1, "lease_secs": 5, "recovery_interval_secs": 0.1}
        values.update(settings)
        config = Settings(**values)
        store = SagaStore(database_url, threads=2)
        await store.open()
        saves: list[int] = []
        real_save = store.save

        async def counting_save(saga: Any) -> None:
            await real_save(saga)
            saves.append(1)

        store.save = counting_save  # type: ignore[method-assign]
        db = Database(database_url)
        index = SagaIndexStore(db, owner=owner, lease_secs=config.lease_secs, clock=lease_clock)
        participants = FakeParticipants()
        runner = SagaRunner(store, index, participants, config)
        replica = Replica(service.Orchestrator(config, store, index, participants, runner),  # type: ignore[arg-type]
                          participants, db, saves)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        await replica.runner.stop()
        await replica.orch.store.close()
        await replica.db.dispose()
