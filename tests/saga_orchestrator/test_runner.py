"""Driving sagas with scripted participants on real databases: steps, compensation, idempotency, recovery."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import pytest

from saga_orchestrator import service
from saga_orchestrator.domain import Saga, SagaStatus
from saga_orchestrator.index import SagaIndexStore, TooManyUnfinished
from saga_orchestrator.steps import CURRENT
from shared.auth import Identity
from shared.errors import Conflict, InvalidRequest
from tests.clock import WallClock
from tests.saga_orchestrator.conftest import ADDRESS, ReplicaFactory
from tests.saga_orchestrator.fakes import refused, transient

STEPS = [str(s.step) for s in CURRENT.steps]
ADMIN = Identity("admin-1", frozenset({"admin"}))


async def finished(replica, saga_id: str, seconds: float = 10) -> Saga:  # type: ignore[no-untyped-def]
    assert await replica.runner.wait(UUID(saga_id), seconds), "the saga did not finish"
    saga = await replica.orch.store.get(UUID(saga_id))
    assert saga is not None
    return saga


async def test_happy_path_saves_every_step_before_its_call(replicas: ReplicaFactory) -> None:
    replica = await replicas()
    saga_id = await replica.place()
    saga = await finished(replica, saga_id)
    assert saga.status == SagaStatus.COMPLETED
    step_calls = [c for c in replica.participants.calls if c.label != "catalogue"]
    assert [c.label for c in step_calls] == STEPS
    assert [c.key for c in step_calls] == [f"{saga_id}:{s}" for s in STEPS]
    # The start with the first attempt; each outcome with the next attempt; the last outcome with the end.
    assert len(replica.saves) == 1 + len(STEPS)
    events = [type(e).__name__ for e in (await replica.orch.store.history(UUID(saga_id)))[1]]
    assert events.count("AttemptStarted") == len(STEPS) and "AttemptFailed" not in events
    assert all(r.attempts == 1 for r in saga.steps.values())
    assert saga.total_minor == 2 * 8999 + 3499 and saga.lines[0]["weight_grams"] == 920
    payment = next(c for c in step_calls if c.label == "make_payment")
    assert payment.body == {"order_id": saga.order_id, "customer_id": "cust-1", "amount_minor": 21497,
                            "currency": "EUR", "payment_token": "tok_visa"}
    row = await replica.orch.index.get(UUID(saga_id))
    assert row is not None and row.status == "COMPLETED" and row.order_id == saga.order_id
    assert row.owner is None and row.lease_until is None


@pytest.mark.parametrize("failing", STEPS)
async def test_a_refusal_compensates_earlier_steps_in_reverse(replicas: ReplicaFactory, failing: str) -> None:
    replica = await replicas()
    replica.participants.failures[failing] = refused(402 if failing == "make_payment" else 409)
    saga_id = await replica.place(key=f"refuse-{failing}")
    saga = await finished(replica, saga_id)
    assert saga.status == SagaStatus.COMPENSATED
    done = STEPS[:STEPS.index(failing)]
    compensations = [c for c in replica.participants.calls if c.label.endswith(":compensate")]
    assert [c.label for c in compensations] == [f"{s}:compensate" for s in reversed(done)]
    assert all(c.key == f"{saga_id}:{c.label}" for c in compensations)
    assert saga.failure_reason is not None and saga.failure_reason.startswith(f"{failing} failed")
    if done:
        cancel = compensations[-1]
        assert cancel.path == f"/api/orders/{saga.order_id}/cancel" and "failed" in cancel.body["reason"]
    # The start; each step's outcome (with the next attempt); the failure (with the first compensation's attempt);
    # each compensation's outcome (the last one with the end).
    assert len(replica.saves) == 2 + 2 * len(done)


async def test_a_step_with_unknown_outcome_is_compensated_too(replicas: ReplicaFactory) -> None:
    replica = await replicas()
    replica.participants.failures["make_payment"] = transient()
    saga = await finished(replica, await replica.place(key="unknown-payment"))
    assert saga.status == SagaStatus.COMPENSATED
    labels = [c.label for c in replica.participants.calls if c.label.endswith(":compensate")]
    assert labels[0] == "make_payment:compensate"
    assert not saga.steps["make_payment"].outcome_known


async def test_an_order_of_unknown_outcome_is_found_by_replay_then_cancelled(replicas: ReplicaFactory) -> None:
    replica = await replicas()
    replica.participants.failures["create_order"] = transient()
    # The order was created after all; the replay under the same key returns it.
    saga_id = await replica.place(key="unknown-order")
    saga = await finished(replica, saga_id)
    assert saga.status == SagaStatus.COMPENSATED
    labels = [c.label for c in replica.participants.calls if c.label != "catalogue"]
    tries = saga.steps["create_order"].attempts
    assert tries >= 2 and labels == ["create_order"] * tries + ["create_order:replay", "create_order:compensate"]
    replay = next(c for c in replica.participants.calls if c.label == "create_order:replay")
    assert replay.key == f"{saga_id}:create_order"
    assert saga.order_id is not None and replica.participants.calls[-1].path.endswith(f"{saga.order_id}/cancel")


async def test_a_refused_replay_means_nothing_to_undo(replicas: ReplicaFactory) -> None:
    replica = await replicas()
    replica.participants.failures["create_order"] = transient()
    replica.participants.failures["create_order:replay"] = refused(409)
    saga = await finished(replica, await replica.place(key="unknown-order-2"))
    assert saga.status == SagaStatus.COMPENSATED and saga.order_id is None


async def test_compensation_that_keeps_failing_waits_for_an_operator(replicas: ReplicaFactory) -> None:
    replica = await replicas()
    replica.participants.failures["allocate_inventory"] = refused(409, "insufficient stock")
    replica.participants.failures["add_order_lines:compensate"] = transient()
    saga_id = await replica.place(key="comp-fails")
    saga = await finished(replica, saga_id)
    assert saga.status == SagaStatus.COMPENSATION_FAILED
    assert saga.steps["create_order"].compensation == "PENDING"  # strictly in reverse order: not yet
    listed, total = await service.list_sagas(replica.orch, ADMIN, "COMPENSATION_FAILED", 50, 0)
    assert saga_id in [s.saga_id for s in listed] and total >= 1
    with pytest.raises(Conflict):
        await service.retry_saga(replica.orch, ADMIN, UUID(await replica.place(key="other")))
    del replica.participants.failures["add_order_lines:compensate"]
    await service.retry_saga(replica.orch, ADMIN, UUID(saga_id))
    saga = await finished(replica, saga_id)
    assert saga.status == SagaStatus.COMPENSATED
    events = [type(e).__name__ for e in (await replica.orch.store.history(UUID(saga_id)))[1]]
    assert [e for e in events if not e.startswith("Attempt") and e != "SagaResumed"][-4:] == [
        "CompensationRetried", "CompensationSucceeded", "CompensationSucceeded", "SagaCompensated"]


async def test_transient_failures_that_clear_are_retried_by_the_client_not_the_saga(
        replicas: ReplicaFactory) -> None:
    replica = await replicas()
    saga_id = await replica.place(key="flaky")
    saga = await finished(replica, saga_id)
    assert saga.status == SagaStatus.COMPLETED


async def test_same_key_same_saga_and_a_different_body_is_refused(replicas: ReplicaFactory) -> None:
    replica = await replicas()
    first = await replica.place(key="same")
    again = await replica.place(key="same")
    assert first == again
    second = await replica.place(customer="cust-2", key="same")
    assert second != first  # keys are scoped by customer
    with pytest.raises(InvalidRequest):
        await replica.place(key="same", payment_token="tok_other")
    await finished(replica, first)
    await finished(replica, second)
    creates = [c for c in replica.participants.calls if c.label == "create_order"]
    assert len(creates) == 2  # one per customer


async def test_unknown_skus_and_mixed_currencies_are_refused_before_any_saga(replicas: ReplicaFactory) -> None:
    replica = await replicas()
    with pytest.raises(InvalidRequest) as unknown:
        await replica.place(key="bad-sku", lines=[{"sku": "KB-1", "quantity": 1}, {"sku": "NOPE", "quantity": 1}])
    assert unknown.value.extra["errors"][0]["loc"] == ["body", "lines", 1, "sku"]
    with pytest.raises(InvalidRequest):
        await replica.place(key="mixed", lines=[{"sku": "KB-1", "quantity": 1}, {"sku": "USD-1", "quantity": 1}])
    assert await replica.orch.index.find_by_key("cust-1", "bad-sku") is None


async def test_duplicate_skus_are_merged(replicas: ReplicaFactory) -> None:
    replica = await replicas()
    saga = await finished(replica, await replica.place(
        key="dupes", lines=[{"sku": "KB-1", "quantity": 1}, {"sku": "KB-1", "quantity": 2}]))
    assert saga.lines == [{"sku": "KB-1", "quantity": 3, "unit_price_minor": 8999, "weight_grams": 920}]


async def test_leases_are_exclusive_and_expire(replicas: ReplicaFactory) -> None:
    clock = WallClock()
    a = await replicas("owner-a", lease_clock=clock, lease_secs=0.5)
    b = await replicas("owner-b", lease_clock=clock, lease_secs=0.5)
    a.participants.delay = b.participants.delay = 5  # keep the saga from finishing
    saga_id = UUID(await a.place(key="lease"))
    assert not await b.orch.index.claim(saga_id)
    assert await a.orch.index.claim(saga_id)
    await a.runner.stop()  # a "crash": its lease is left to run out
    row = await a.orch.index.get(saga_id)
    assert row is not None and row.owner is None  # a clean stop releases it
    assert await b.orch.index.claim(saga_id)
    assert not await a.orch.index.renew(saga_id)
    assert not await a.orch.index.claim(saga_id)
    clock.advance(0.6)
    assert await a.orch.index.claim(saga_id)  # b's lease expired
    assert not await b.orch.index.renew(saga_id)


async def test_a_version_conflict_stops_the_slower_writer(replicas: ReplicaFactory) -> None:
    from saga_orchestrator.event_store import ConcurrentSagaUpdate

    replica = await replicas()
    replica.participants.delay = 5
    saga_id = UUID(await replica.place(key="conflict"))
    first = await replica.orch.store.get(saga_id)
    second = await replica.orch.store.get(saga_id)
    assert first is not None and second is not None
    for saga in (first, second):
        saga.step_succeeded("create_order", {"order_id": "o"}, 1, None)
        saga.start_step("add_order_lines")
    await replica.orch.store.save(first)
    with pytest.raises(ConcurrentSagaUpdate):
        await replica.orch.store.save(second)


def new_saga(key: str, customer_id: str = "cust-9") -> tuple[Saga, dict[str, Any]]:
    """A saga as a placement makes it, and its start request."""
    fields: dict[str, Any] = {
        "definition_version": 1, "customer_id": customer_id, "idempotency_key": key, "fingerprint": "f" * 64,
        "lines": [{"sku": "KB-1", "quantity": 1, "unit_price_minor": 8999, "weight_grams": 920}],
        "currency": "EUR", "total_minor": 8999, "total_weight_grams": 920,
        "shipping_address": ADDRESS, "payment_token": "tok_visa", "trace": {}}
    return Saga(**fields), fields


async def index_only(replica, key: str) -> Saga:  # type: ignore[no-untyped-def]
    """A saga indexed (leased to `replica`) and not yet saved: where a placement is between its two writes."""
    saga, fields = new_saga(key)
    assert await replica.orch.index.insert(saga, fields)
    return saga


async def test_a_customers_bound_on_unfinished_sagas_holds_across_replicas(replicas: ReplicaFactory) -> None:
    """Placements of one customer at two replicas at once: the count and the insert are one step for the fleet."""
    a, b = await replicas("host:8011"), await replicas("host:8012")
    customer = f"cust-{uuid4().hex[:8]}"
    placements = [new_saga(f"bound-{i}", customer) for i in range(8)]

    async def place(index: SagaIndexStore, saga: Saga, fields: dict[str, Any]) -> bool:
        try:
            return await index.insert(saga, fields, max_unfinished=2) is not None
        except TooManyUnfinished:
            return False

    indexed = await asyncio.gather(*(place((a if i % 2 else b).orch.index, saga, fields)
                                     for i, (saga, fields) in enumerate(placements)))
    assert sum(indexed) == 2
    assert sum((await a.orch.index.count_by_status(customer)).values()) == 2


async def test_a_saga_being_placed_here_is_not_resumed_by_this_replicas_recovery(replicas: ReplicaFactory) -> None:
    replica = await replicas("host:8009", lease_secs=60)
    placing = await index_only(replica, "placing")
    replica.runner.placing.add(placing.id)  # as place_customer_order holds it between the insert and the launch
    await replica.runner.recover_once()
    assert placing.id not in replica.runner._tasks
    replica.runner.placing.discard(placing.id)  # a placement that died between them: recovery's to start
    await replica.runner.recover_once()
    assert placing.id in replica.runner._tasks
    assert (await finished(replica, str(placing.id))).status == SagaStatus.COMPLETED


async def test_a_saga_indexed_but_never_saved_is_started_by_recovery(replicas: ReplicaFactory) -> None:
    clock = WallClock()
    crashed = await replicas("owner-crashed", lease_clock=clock, lease_secs=0.2)
    saga = await index_only(crashed, "lost")  # ... and the process died here
    clock.advance(0.3)  # its lease has run out
    survivor = await replicas("owner-survivor", lease_clock=clock)
    assert await survivor.runner.recover_once() >= 1
    recovered = await finished(survivor, str(saga.id))
    assert recovered.status == SagaStatus.COMPLETED


async def test_a_restarted_replica_resumes_its_own_sagas_at_once(replicas: ReplicaFactory) -> None:
    before = await replicas("host:8007", lease_secs=60)
    before.participants.hold = "allocate_inventory"
    saga_id = await before.place(key="resume")
    await asyncio.wait_for(before.participants.holding.wait(), 30)  # the third step is in flight ...
    driver = before.runner._tasks[UUID(saga_id)]
    driver.cancel()  # ... when its driver stops: its answer never arrives
    await asyncio.gather(driver, return_exceptions=True)
    row = await before.orch.index.get(UUID(saga_id))
    assert row is not None and row.status in ("STARTED", "RUNNING")
    after = await replicas("host:8007", lease_secs=60)
    after.participants.applied = before.participants.applied  # the services remember the keys
    assert await after.runner.recover_once() >= 1
    saga = await finished(after, saga_id)
    assert saga.status == SagaStatus.COMPLETED
    steps_succeeded = [type(e).__name__ for e in (await after.orch.store.history(UUID(saga_id)))[1]
                       ].count("StepSucceeded")
    assert steps_succeeded == 7


async def test_two_replicas_never_drive_the_same_saga(replicas: ReplicaFactory) -> None:
    # Deadlines count from each step's first attempt, made by a: longer than the test, so none runs out.
    a = await replicas("replica-a", lease_secs=2, step_deadline_secs=60)
    b = await replicas("replica-b", lease_secs=2, step_deadline_secs=60)
    shared_keys = a.participants.applied
    b.participants.applied = shared_keys
    a.participants.delay = b.participants.delay = 0.005
    # Sagas whose first driver died at once: both replicas race to recover them.
    ids = []
    for n in range(12):
        ids.append(await a.place(key=f"many-{n}"))
    await a.runner.stop()
    for saga_id in ids:
        await a.orch.index.release(UUID(saga_id))
    c = await replicas("replica-c", lease_secs=2, step_deadline_secs=60)
    c.participants.applied = shared_keys
    c.participants.delay = 0.005
    await asyncio.gather(b.runner.recover_once(), c.runner.recover_once())
    for saga_id in ids:
        saga = await finished(b, saga_id)
        assert saga.status == SagaStatus.COMPLETED
        events = [type(e).__name__ for e in (await b.orch.store.history(UUID(saga_id)))[1]]
        assert events.count("StepSucceeded") == 7 and events.count("SagaCompleted") == 1
    # a may have sent a step just before it "died" (b or c then replays it under the same key), but
    # b and c never both sent one: no saga was driven by two replicas at once.
    calls = [c.key for r in (b, c) for c in r.participants.calls if c.label != "catalogue"]
    assert len(calls) == len(set(calls))
    assert a.runner._tasks == {} and b.runner._tasks == {}


async def test_the_event_feed_is_ordered_with_a_cursor(replicas: ReplicaFactory) -> None:
    replica = await replicas()
    await finished(replica, await replica.place(key="feed"))
    first = await service.event_feed(replica.orch, 0, 3)
    assert [i.id for i in first] == sorted(i.id for i in first) and len(first) == 3
    assert first[0].type == "SagaStarted" and first[0].state["payment_token"] == "***"
    more = await service.event_feed(replica.orch, first[-1].id, 1000)
    assert more and more[0].id > first[-1].id
    assert "SagaCompleted" in {i.type for i in more}


async def test_the_saga_view_shows_steps_timings_and_history(replicas: ReplicaFactory) -> None:
    replica = await replicas()
    replica.participants.failures["assign_carrier"] = refused(409, "no carrier serves the country")
    saga_id = await replica.place(key="view")
    await finished(replica, saga_id)
    view = await service.get_saga(replica.orch, Identity("cust-1", frozenset({"customer"})), UUID(saga_id))
    steps = {s.step: s for s in view.steps}
    assert view.status == "COMPENSATED" and view.order_id
    assert steps["make_payment"].status == "SUCCEEDED" and steps["make_payment"].compensation is not None
    assert steps["make_payment"].compensation.status == "SUCCEEDED"
    assert steps["assign_carrier"].status == "FAILED" and "409" in (steps["assign_carrier"].last_error or "")
    assert steps["create_shipment"].status == "PENDING"
    started, ended = steps["create_order"].started_at, steps["create_order"].finished_at
    assert started is not None and ended is not None and started <= ended
    assert view.history[0].type == "SagaStarted" and view.history[0].data["payment_token"] == "***"
    assert view.history[-1].type == "SagaCompensated"
    from shared.errors import NotFound

    with pytest.raises(NotFound):
        await service.get_saga(replica.orch, Identity("someone-else", frozenset({"customer"})), UUID(saga_id))
