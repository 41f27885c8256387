"""The saga aggregate and the step table: transitions, grouping of events, compensation plans (no I/O).

The saga is moved forward by its rules (`core.advance`), never by a copy of them here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from saga_orchestrator import core
from saga_orchestrator.core import Answer, AnswerKind, Call
from saga_orchestrator.domain import (
    CompensationStatus,
    Saga,
    SagaStateError,
    SagaStatus,
    StepStatus,
    saga_id_for,
)
from saga_orchestrator.steps import CURRENT, DEFINITIONS, SagaStep, StepKind, definition

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}


def start_request(**overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "definition_version": CURRENT.version, "customer_id": "cust-1", "idempotency_key": "key-1",
        "fingerprint": "f" * 64, "currency": "EUR", "total_minor": 2 * 8999, "total_weight_grams": 1840,
        "lines": [{"sku": "KB-1", "quantity": 2, "unit_price_minor": 8999, "weight_grams": 920}],
        "shipping_address": ADDRESS, "payment_token": "tok_visa", "trace": {"request_id": "r1"},
    }
    request.update(overrides)
    return request


def new_saga() -> Saga:
    saga = Saga(**start_request())
    saga.start_step(CURRENT.first().step)
    return saga


def event_names(saga: Saga) -> list[str]:
    return [type(e).__name__ for e in saga.collect_events()]


POLICY = core.Policy(step_deadline_secs=10, compensation_deadline_secs=60, attempt_timeout_secs=5,
                     retry_initial_secs=0.1, retry_max_secs=2)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


# What the participants answer where later steps read it.
BODIES: dict[str, dict[str, Any]] = {"create_order": {"id": "o-1"}, "assign_carrier": {"carrier_code": "DHL"}}


def succeed(saga: Saga, step: str, body: dict[str, Any] | None = None) -> None:
    """The step's attempt (as the rules make it), answered 2xx with `body` (the participant's response)."""
    if not any(r.in_flight for r in saga.steps.values()):
        call = core.advance(saga, CURRENT, POLICY, NOW)
        assert isinstance(call, Call) and call.step == step, call
    assert saga.steps[step].in_flight
    core.advance(saga, CURRENT, POLICY, NOW, Answer(AnswerKind.OK, 200, body or {}))


def test_saga_id_is_derived_from_customer_and_key() -> None:
    saga = new_saga()
    assert saga.id == saga_id_for("cust-1", "key-1")
    assert saga_id_for("cust-2", "key-1") != saga.id
    assert event_names(saga) == ["SagaStarted", "StepStarted"]
    assert saga.status == SagaStatus.STARTED and saga.current_step == "create_order"
    assert saga.definition_version == CURRENT.version


def test_happy_path_is_one_group_of_events_per_transition() -> None:
    saga = new_saga()
    assert isinstance(core.advance(saga, CURRENT, POLICY, NOW), Call)
    groups = [event_names(saga)]
    results = {"create_order": {"id": "o-1"}, "assign_carrier": {"carrier_code": "DHL"},
               "create_shipment": {"tracking_number": "T1"}}
    for step in CURRENT.steps:
        succeed(saga, step.step, results.get(step.step))
        groups.append(event_names(saga))
    assert len(groups) == 8  # the saves of a saga that completes
    assert groups[0] == ["SagaStarted", "StepStarted", "AttemptStarted"]  # an attempt is saved before it is sent
    assert groups[1] == ["StepSucceeded", "StepStarted", "AttemptStarted"]
    assert groups[-1] == ["StepSucceeded", "SagaCompleted"]
    assert saga.status == SagaStatus.COMPLETED and saga.is_terminal
    assert saga.order_id == "o-1" and saga.results()["tracking_number"] == "T1"
    assert all(r.status == StepStatus.SUCCEEDED for r in saga.steps.values())


def test_refusal_compensates_succeeded_steps_latest_first() -> None:
    saga = new_saga()
    for step in ("create_order", "add_order_lines", "allocate_inventory"):
        succeed(saga, step, {"id": "o-1"} if step == "create_order" else {})
    saga.collect_events()
    saga.step_failed("make_payment", "402 card declined", final=True, attempts=1)
    plan = core.compensation_plan(saga, CURRENT)
    assert plan == ["allocate_inventory", "add_order_lines", "create_order"]
    saga.start_compensation("make_payment failed: 402 card declined", plan)
    assert event_names(saga) == ["StepFailed", "CompensationStarted"]
    assert saga.status == SagaStatus.COMPENSATING
    for name in plan:
        assert saga.next_compensation() == name
        saga.compensation_succeeded(name, attempts=1)
    saga.finish_compensation()
    assert saga.status == SagaStatus.COMPENSATED
    assert saga.steps["make_payment"].compensation is None
    assert saga.context()["failure_reason"].startswith("make_payment failed")


def test_unknown_outcome_compensates_the_failed_step_too() -> None:
    saga = new_saga()
    succeed(saga, "create_order", {"id": "o-1"})
    saga.step_failed("add_order_lines", "gave up: timeout", final=False, attempts=4)
    assert saga.steps_to_compensate() == ["add_order_lines", "create_order"]


def test_finish_step_has_no_compensation() -> None:
    saga = new_saga()
    for step in CURRENT.steps[:-1]:
        succeed(saga, step.step, BODIES.get(step.step, {}))
    saga.step_failed("confirm_order", "timeout", final=False, attempts=3)
    plan = core.compensation_plan(saga, CURRENT)
    assert plan[0] == "create_shipment" and "confirm_order" not in plan and len(plan) == 6


def test_nothing_to_compensate_when_the_first_step_is_refused() -> None:
    saga = new_saga()
    saga.step_failed("create_order", "409 refused", final=True, attempts=1)
    saga.start_compensation("create_order failed", core.compensation_plan(saga, CURRENT))
    saga.finish_compensation()
    assert saga.status == SagaStatus.COMPENSATED
    assert event_names(saga)[-3:] == ["StepFailed", "CompensationStarted", "SagaCompensated"]


def test_failed_compensation_then_operator_retry() -> None:
    saga = new_saga()
    succeed(saga, "create_order", {"id": "o-1"})
    succeed(saga, "add_order_lines")
    saga.step_failed("allocate_inventory", "409 out of stock", final=True, attempts=1)
    saga.start_compensation("out of stock", ["add_order_lines", "create_order"])
    saga.compensation_failed("add_order_lines", "503", attempts=7)
    saga.finish_compensation()
    assert saga.status == SagaStatus.COMPENSATION_FAILED and saga.is_terminal
    assert saga.steps["add_order_lines"].compensation == CompensationStatus.FAILED
    saga.retry_compensation(requested_by="admin-1")
    assert saga.status == SagaStatus.COMPENSATING and saga.next_compensation() == "add_order_lines"
    saga.compensation_succeeded("add_order_lines", attempts=1)
    saga.compensation_succeeded("create_order", attempts=1, learned={"order_id": "o-1"})
    saga.finish_compensation()
    assert saga.status == SagaStatus.COMPENSATED
    assert saga.steps["add_order_lines"].compensation_attempts == 8


def test_commands_out_of_turn_are_refused() -> None:
    saga = new_saga()
    with pytest.raises(SagaStateError):
        saga.step_succeeded("add_order_lines", {}, 1, None)
    with pytest.raises(SagaStateError):
        saga.complete()
    with pytest.raises(SagaStateError):
        saga.retry_compensation("admin")
    succeed(saga, "create_order", {"id": "o-1"})
    with pytest.raises(SagaStateError):
        saga.start_step("create_order")
    with pytest.raises(SagaStateError):  # a step is under way
        saga.start_compensation("why", [])


def test_the_step_table() -> None:
    assert [s.step for s in CURRENT.steps] == list(SagaStep)
    assert len(CURRENT.steps) == 7 and CURRENT.steps[-1].compensation is None
    assert all(s.compensation is not None for s in CURRENT.steps[:6])
    assert {s.step: s.kind for s in CURRENT.steps if s.kind != StepKind.COMPENSATABLE} == {
        "create_order": StepKind.REPLAY_BEFORE_COMPENSATE, "assign_carrier": StepKind.REPLAY_BEFORE_COMPENSATE,
        "create_shipment": StepKind.REPLAY_BEFORE_COMPENSATE, "confirm_order": StepKind.PIVOT}
    assert definition(CURRENT.version) is CURRENT and set(DEFINITIONS) == {1}
    with pytest.raises(LookupError):
        definition(99)
    assert CURRENT.after("create_shipment") is not None and CURRENT.after("confirm_order") is None


def test_step_calls_are_built_from_the_saga_context() -> None:
    saga = new_saga()
    succeed(saga, "create_order", {"id": "o-1"})
    succeed(saga, "add_order_lines", {"total_minor": 17998})
    succeed(saga, "allocate_inventory", {"total_weight_grams": 1900})
    context = saga.context()
    Built = dict[str, tuple[str, str, dict[str, Any] | None]]
    built: Built = {str(s.step): (s.action.method, s.action.render_path(context), s.action.render_body(context))
             for s in CURRENT.steps if s.step != "create_shipment"}
    assert built["create_order"] == ("POST", "/api/orders", {
        "customer_id": "cust-1", "currency": "EUR", "shipping_address": ADDRESS})
    assert built["add_order_lines"] == ("POST", "/api/orders/o-1/lines", {
        "lines": [{"sku": "KB-1", "quantity": 2, "unit_price_minor": 8999}]})
    assert built["allocate_inventory"][2] == {"order_id": "o-1", "lines": [{"sku": "KB-1", "quantity": 2}]}
    assert built["make_payment"][2] == {"order_id": "o-1", "customer_id": "cust-1", "amount_minor": 17998,
                                        "currency": "EUR", "payment_token": "tok_visa"}
    assert built["assign_carrier"][2] == {"order_id": "o-1", "country": "DE", "weight_grams": 1900}
    assert built["confirm_order"] == ("POST", "/api/orders/o-1/confirm", None)
    compensations = {s.step: (s.compensation.method, s.compensation.render_path(context))
                     for s in CURRENT.steps if s.compensation}
    assert compensations == {
        "create_order": ("POST", "/api/orders/o-1/cancel"),
        "add_order_lines": ("DELETE", "/api/orders/o-1/lines"),
        "allocate_inventory": ("POST", "/api/inventory/allocations/o-1/release"),
        "make_payment": ("POST", "/api/payments/orders/o-1/refund"),
        "assign_carrier": ("POST", "/api/carriers/assignments/o-1/release"),
        "create_shipment": ("POST", "/api/shipments/orders/o-1/cancel"),
    }
    with pytest.raises(KeyError):  # the shipment needs the carrier, not known yet
        CURRENT.get("create_shipment").action.render_body(context)
    assert CURRENT.get("assign_carrier").extract_results(
        {"id": "a1", "carrier_code": "DHL", "price_minor": 599, "extra": 1}) == {
        "assignment_id": "a1", "carrier_code": "DHL", "shipping_price_minor": 599}


def test_unknown_order_id_cannot_address_the_cancellation() -> None:
    saga = new_saga()
    with pytest.raises(KeyError):
        CURRENT.get("create_order").compensation.render_path(saga.context())  # type: ignore[union-attr]
