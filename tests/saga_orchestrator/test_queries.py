"""The saga queries of the service layer on SQLite and PostgreSQL: the created-time window, the counts by status."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import pytest

from saga_orchestrator import service
from saga_orchestrator.domain import SagaStatus
from saga_orchestrator.schemas import SagaStatusCounts
from shared.auth import Identity
from shared.errors import InvalidRequest
from tests.saga_orchestrator.conftest import ReplicaFactory
from tests.saga_orchestrator.fakes import refused

ADMIN = Identity("admin-1", frozenset({"admin"}))


def customer(name: str) -> Identity:
    return Identity(name, frozenset({"customer"}))


async def test_the_window_and_the_counts_agree_with_the_list(replicas: ReplicaFactory) -> None:
    replica = await replicas()
    replica.participants.failures["make_payment"] = refused(402, "card_declined")
    ids = [await replica.place(customer="dora", key="declined", payment_token="tok_chargeDeclined")]
    for saga_id in ids:
        assert await replica.runner.wait(UUID(saga_id), 10)
    replica.participants.failures.clear()
    ids += [await replica.place(customer="dora", key=f"k-{i}") for i in range(2)]
    ids.append(await replica.place(customer="emil", key="k-emil"))
    for saga_id in ids:
        assert await replica.runner.wait(UUID(saga_id), 10)

    dora = customer("dora")
    rows, total = await service.list_sagas(replica.orch, dora, None, 50, 0)
    assert total == 3 and [r.saga_id for r in rows] == ids[2::-1]
    t0, t1, t2 = (r.created_at for r in reversed(rows))
    assert t0 < t1 < t2 and t1.tzinfo is not None

    async def window(identity: Identity, after: datetime | None, before: datetime | None,
                     status: str | None = None) -> list[str]:
        rows, total = await service.list_sagas(replica.orch, identity, status, 50, 0, after, before)
        assert total == len(rows)
        return [r.saga_id for r in rows]

    assert await window(dora, t1, None) == [ids[2], ids[1]]
    assert await window(dora, None, t1) == [ids[0]]
    assert await window(dora, t1, t2) == [ids[1]]
    assert await window(dora, t0, None, "COMPENSATED") == [ids[0]]
    assert await window(ADMIN, t0, None) == ids[::-1]
    assert await window(ADMIN, t2 + timedelta(microseconds=1), None) == [ids[3]]

    stats = await service.saga_stats(replica.orch, dora)
    assert stats.total == 3 and stats.counts.model_dump() == {
        **dict.fromkeys(map(str, SagaStatus), 0), "COMPLETED": 2, "COMPENSATED": 1}
    assert (await service.saga_stats(replica.orch, dora, created_after=t1)).counts.COMPENSATED == 0
    assert (await service.saga_stats(replica.orch, customer("emil"))).total == 1
    assert (await service.saga_stats(replica.orch, ADMIN, created_after=t0)).total == 4
    with pytest.raises(InvalidRequest):
        await service.saga_stats(replica.orch, ADMIN, created_after=t2, created_before=t1)


def test_the_counts_name_every_status() -> None:
    assert list(SagaStatusCounts.model_fields) == [str(s) for s in SagaStatus]
