"""The saga's rules (`core`) alone: no database, no HTTP, no clock; property-based over answer sequences and crashes.

A simulated driver does what the runner does: it asks `advance`, saves the pending events before each call
(and at the end), sleeps through a `Wait` by moving its clock, and answers each call from a script drawn by
hypothesis. A crash loses the events not saved yet and the answer of the call in flight; the saga is
rebuilt from the saved events, later (after its lease ran out), as another replica would.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.application import project_aggregate
from hypothesis import given, settings
from hypothesis import strategies as st

from saga_orchestrator import core
from saga_orchestrator.core import Answer, AnswerKind, Call, Done, Wait
from saga_orchestrator.domain import CompensationStatus, Phase, Saga, SagaStatus, StepStatus
from saga_orchestrator.steps import CURRENT, SagaDefinition, StepDefinition, StepKind

POLICY = core.Policy(step_deadline_secs=10, compensation_deadline_secs=60, attempt_timeout_secs=5,
                     retry_initial_secs=0.1, retry_max_secs=2)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
LEASE = timedelta(seconds=15)  # a crashed driver's saga is taken up again this much later
BODIES: dict[str, dict[str, Any]] = {
    "create_order": {"id": "o-1"}, "add_order_lines": {"total_minor": 100},
    "allocate_inventory": {"total_weight_grams": 500}, "make_payment": {"id": "p-1", "amount_minor": 100},
    "assign_carrier": {"id": "a-1", "carrier_code": "DHL", "price_minor": 5},
    "create_shipment": {"id": "s-1", "tracking_number": "T1"}, "confirm_order": {"status": "CONFIRMED"},
}


def new_saga(key: str = "k-1") -> Saga:
    saga = Saga(definition_version=CURRENT.version, customer_id="c-1", idempotency_key=key, fingerprint="f",
                lines=[{"sku": "KB-1", "quantity": 1, "unit_price_minor": 100, "weight_grams": 500}],
                currency="EUR", total_minor=100, total_weight_grams=500,
                shipping_address=ADDRESS, payment_token="tok", trace={})
    saga.start_step(CURRENT.first().step)
    return saga


@dataclass(frozen=True)
class Reply:
    """How the participant answers one attempt, how long it takes, and whether the driver dies waiting."""

    kind: AnswerKind
    secs: float = 0.01
    crash: bool = False


@dataclass(frozen=True)
class Sent:
    call: Call
    at: datetime
    compensating: bool  # the saga was compensating when it was sent
    resumed: bool  # the first call of a driver that took the saga up after a crash


@dataclass
class Run:
    """What a simulated run did: every call that reached a participant, and the history that was saved."""

    saga: Saga
    sent: list[Sent] = field(default_factory=list)
    saved: list[Any] = field(default_factory=list)
    # (the call in flight at a crash, the resumed driver's first call or None)
    resumes: list[tuple[Call, Call | None]] = field(default_factory=list)
    answered: set[tuple[str, Phase]] = field(default_factory=set)  # (key, phase) answered 2xx
    now: datetime = T0

    def save(self) -> None:
        self.saved.extend(self.saga.collect_events())

    def attempts(self, step: str) -> int:
        return sum(1 for s in self.sent if s.call.step == step)

    def at(self, step: str, phase: Phase) -> list[datetime]:
        return [s.at for s in self.sent if s.call.step == step and s.call.phase == phase]

    def labels(self) -> list[str]:
        return [s.call.label for s in self.sent]

    def events(self, name: str) -> list[Any]:
        return [e for e in self.saved if type(e).__name__ == name]


def simulate(replies: list[Reply], definition: SagaDefinition = CURRENT, lease: timedelta = LEASE,
             max_actions: int = 3000) -> Run:
    """Drive to the end as the runner does; once `replies` run out, every further attempt succeeds."""
    run = Run(new_saga())
    script = iter(replies)
    action = core.advance(run.saga, definition, POLICY, run.now)
    resumed = False
    for _ in range(max_actions):
        if isinstance(action, Wait):
            assert action.until > run.now, "a wait must move time forward"
            run.now = action.until
            action = core.advance(run.saga, definition, POLICY, run.now)
            continue
        run.save()  # before the call is sent, and at the end
        if isinstance(action, Done):
            return run
        if action.phase != Phase.REPLAY:  # a replay repeats the action's key on purpose
            assert (action.idempotency_key, action.phase) not in run.answered, f"{action.label} sent again"
        reply = next(script, Reply(AnswerKind.OK))
        run.sent.append(Sent(action, run.now, run.saga.status == SagaStatus.COMPENSATING, resumed))
        resumed = False
        run.now += timedelta(seconds=min(reply.secs, action.timeout_secs))
        if reply.crash:
            # The answer dies with the driver, and whatever it had not saved. Another takes the saga up later.
            run.now += lease
            run.saga = replayed(run)
            lost, action = action, core.advance(run.saga, definition, POLICY, run.now)
            run.resumes.append((lost, action if isinstance(action, Call) else None))
            resumed = True
            continue
        if reply.kind == AnswerKind.OK:
            run.answered.add((action.idempotency_key, action.phase))
        body = BODIES[action.step] if reply.kind == AnswerKind.OK else {"detail": "no"}
        answer = Answer(reply.kind, 200 if reply.kind == AnswerKind.OK else 503, body, f"{reply.kind} answer")
        action = core.advance(run.saga, definition, POLICY, run.now, answer)
    raise AssertionError("the saga did not end")


def replayed(run: Run) -> Saga:
    """The saga as its saved history tells it (what another replica would load)."""
    saga = project_aggregate(None, run.saved)
    assert saga is not None
    return saga


kinds = st.sampled_from([AnswerKind.OK, AnswerKind.REFUSED, AnswerKind.TRANSIENT])
# Any answer, any duration up to past the attempt timeout, and one crash in ten.
replies = st.lists(st.builds(Reply, kinds, st.floats(min_value=0, max_value=6), st.integers(0, 9).map(
    lambda n: n == 0)), max_size=60)
# Mostly transient answers and crashes: deadlines and resumes are what is exercised.
flaky = st.lists(st.one_of(st.just(Reply(AnswerKind.TRANSIENT, 0.5)), st.just(Reply(AnswerKind.TRANSIENT, 5)),
                           st.builds(Reply, kinds, st.floats(min_value=0, max_value=6), st.just(True))),
                 max_size=120)
EXAMPLES = settings(max_examples=300, deadline=None)


# -- every run ends, and its end is consistent -----------------------------------------------------


@EXAMPLES
@given(replies)
def test_every_answer_sequence_ends_consistently(script: list[Reply]) -> None:
    run = simulate(script)
    saga = replayed(run)  # what was saved is the whole story: nothing rests in memory only
    assert saga.is_terminal and saga.status == run.saga.status
    if saga.status == SagaStatus.COMPLETED:
        assert all(r.status == StepStatus.SUCCEEDED for r in saga.steps.values())
        assert len(saga.steps) == len(CURRENT.steps)
        assert not any(s.compensating for s in run.sent)
        return
    assert saga.failure_reason
    # Undone latest first, the pivot never; every step that did or may have taken effect is in the plan.
    order = [str(d.step) for d in CURRENT.steps]
    undone = list(dict.fromkeys(s.call.step for s in run.sent if s.compensating))
    assert undone == sorted(undone, key=order.index, reverse=True)
    assert "confirm_order" not in undone
    for name, record in saga.steps.items():
        if record.needs_compensation and name != "confirm_order":
            assert record.compensation is not None, name
        if saga.status == SagaStatus.COMPENSATED and record.compensation is not None:
            assert record.compensation == CompensationStatus.SUCCEEDED


@EXAMPLES
@given(replies)
def test_every_attempt_that_reached_a_participant_is_in_the_history(script: list[Reply]) -> None:
    run = simulate(script)
    saga = replayed(run)
    for name, record in saga.steps.items():
        assert record.attempts == sum(1 for s in run.sent if s.call.step == name and not s.compensating)
        assert record.compensation_attempts == sum(1 for s in run.sent if s.call.step == name and s.compensating)
    assert Counter(e.step for e in run.events("AttemptStarted")) == Counter(s.call.step for s in run.sent)


# -- deadlines count from the first attempt, recorded in the history -------------------------------


@EXAMPLES
@given(flaky)
def test_a_deadline_holds_across_resumes(script: list[Reply]) -> None:
    run = simulate(script)
    firsts: dict[tuple[str, Phase, bool], datetime] = {}
    for sent in run.sent:
        call = sent.call
        first = firsts.setdefault((call.step, call.phase, sent.compensating), sent.at)
        limit = timedelta(seconds=POLICY.step_deadline_secs if call.phase == Phase.ACTION
                          else POLICY.compensation_deadline_secs)
        # No attempt starts after its phase's deadline, however often the saga was resumed in between, and
        # none is given longer than what is left of it; but the call whose answer died with its driver is
        # asked once more by the next one (under its key it fetches what the participant did).
        if sent.resumed and sent.at >= first + limit:
            assert sent.call.timeout_secs == POLICY.attempt_timeout_secs
            continue
        assert sent.at < first + limit, (call.label, sent.at - first)
        assert sent.at + timedelta(seconds=call.timeout_secs) <= first + limit + timedelta(
            seconds=core.MIN_ATTEMPT_SECS), call.label


def test_a_permanently_failing_payment_ends_within_its_deadline_and_one_retry_interval() -> None:
    run = simulate([Reply(AnswerKind.OK)] * 3 + [Reply(AnswerKind.TRANSIENT, 0.2)] * 1000)
    payments = run.at("make_payment", Phase.ACTION)
    failed = run.events("StepFailed")[0]
    assert failed.step == "make_payment" and "gave up after" in failed.error
    assert failed.timestamp - payments[0] <= timedelta(seconds=POLICY.step_deadline_secs + POLICY.retry_max_secs)
    assert run.saga.steps["make_payment"].attempts == len(payments) > 3


def test_a_resumed_step_keeps_its_deadline() -> None:
    # Today's runner restarted the deadline at every resume: each resume retried for another 10 s.
    run = simulate([Reply(AnswerKind.OK)] * 3 + [Reply(AnswerKind.TRANSIENT, 8, crash=True)]
                   + [Reply(AnswerKind.TRANSIENT, 0.1)] * 100)
    # Resumed 20 s later, past its 10 s deadline: the lost call once more (it may have succeeded), then given up.
    assert len(run.at("make_payment", Phase.ACTION)) == 2
    record = run.saga.steps["make_payment"]
    assert record.status == StepStatus.FAILED and not record.outcome_known and record.attempts == 2
    until_failed = run.saved[:run.saved.index(run.events("StepFailed")[0])]
    failures = [e.error for e in until_failed if type(e).__name__ == "AttemptFailed"]
    assert failures == [core.LOST_ANSWER, "transient answer"]


def test_a_step_whose_driver_died_is_asked_again_not_given_up() -> None:
    run = simulate([Reply(AnswerKind.OK)] * 3 + [Reply(AnswerKind.OK, 8, crash=True)])
    assert run.saga.status == SagaStatus.COMPLETED and run.saga.steps["make_payment"].attempts == 2


# -- a resumed saga repeats at most the call in flight ---------------------------------------------


@EXAMPLES
@given(replies)
def test_a_resume_repeats_at_most_the_call_in_flight(script: list[Reply]) -> None:
    # `simulate` checks besides that no request answered 2xx is ever sent again.
    run = simulate(script)
    saga = replayed(run)
    for lost, first in run.resumes:
        if first is None or (first.step, first.phase) == (lost.step, lost.phase):
            assert first is None or first.idempotency_key == lost.idempotency_key
            continue
        # Something else came first only because the lost call's phase is over (its deadline passed): the
        # pivot's replay, a replay's or the step's end, or the compensation's.
        record = saga.steps[lost.step]
        assert first.phase == Phase.REPLAY or record.status == StepStatus.FAILED or record.replayed \
            or record.compensation is not None, (lost, first)


def test_a_crash_mid_step_repeats_that_step_only() -> None:
    # Today's runner saved at checkpoints up to 2 s apart: a replica that lived less redid create_order.
    run = simulate([Reply(AnswerKind.OK)] * 3 + [Reply(AnswerKind.OK, crash=True)], lease=timedelta(seconds=2))
    assert run.labels()[:6] == ["create_order", "add_order_lines", "allocate_inventory", "make_payment",
                                "make_payment", "assign_carrier"]
    assert run.saga.status == SagaStatus.COMPLETED and run.saga.steps["make_payment"].attempts == 2
    assert len(run.events("SagaStarted")) == 1 and len(run.events("StepSucceeded")) == len(CURRENT.steps)


# -- kinds: replay before compensating, the pivot, retriable ---------------------------------------


def test_a_replay_before_compensate_step_of_unknown_outcome_is_replayed_first() -> None:
    run = simulate([Reply(AnswerKind.OK)] * 4 + [Reply(AnswerKind.TRANSIENT, 3)] * 10)
    labels = run.labels()
    after = labels[len(labels) - labels[::-1].index("assign_carrier"):]
    replays = after.index("assign_carrier:compensate")
    assert replays >= 1 and set(after[:replays]) == {"assign_carrier:replay"}  # nothing undone before it settles
    replay = next(s.call for s in run.sent if s.call.label == "assign_carrier:replay")
    assert replay.idempotency_key.endswith(":assign_carrier")  # the action's own key: it replays, never repeats
    assert run.saga.status == SagaStatus.COMPENSATED


def test_the_pivot_is_settled_before_anything_is_undone() -> None:
    run = simulate([Reply(AnswerKind.OK)] * 6 + [Reply(AnswerKind.TRANSIENT, 3)] * 4)
    assert "confirm_order:replay" in run.labels() and not any(s.compensating for s in run.sent)
    assert run.saga.status == SagaStatus.COMPLETED


def test_the_pivot_refused_on_its_replay_compensates_the_rest() -> None:
    run = simulate([Reply(AnswerKind.OK)] * 6 + [Reply(AnswerKind.TRANSIENT, 3)] * 4 + [Reply(AnswerKind.REFUSED)])
    undone = [s.call.step for s in run.sent if s.call.phase == Phase.COMPENSATION]
    assert undone == [d.step for d in reversed(CURRENT.steps[:6])]
    assert run.saga.status == SagaStatus.COMPENSATED and run.saga.steps["confirm_order"].compensation is None


def test_an_order_of_unknown_outcome_is_found_by_replay_before_its_cancellation() -> None:
    run = simulate([Reply(AnswerKind.TRANSIENT, 3)] * 4)
    assert run.labels()[-2:] == ["create_order:replay", "create_order:compensate"]
    assert run.sent[-1].call.path == "/api/orders/o-1/cancel"


def test_an_order_whose_replay_keeps_failing_waits_for_an_operator() -> None:
    run = simulate([Reply(AnswerKind.TRANSIENT, 3)] * 1000)
    assert run.saga.status == SagaStatus.COMPENSATION_FAILED
    assert "create_order:compensate" not in run.labels()  # nothing to address it by


RETRIABLE = SagaDefinition(version=99, steps=(
    *CURRENT.steps[:5],
    StepDefinition(CURRENT.steps[5].step, StepKind.PIVOT, CURRENT.steps[5].action, None, CURRENT.steps[5].results),
    StepDefinition(CURRENT.steps[6].step, StepKind.RETRIABLE, CURRENT.steps[6].action, None,
                   CURRENT.steps[6].results),
))


def test_a_retriable_step_is_retried_past_any_deadline_until_it_succeeds() -> None:
    replies_ = [Reply(AnswerKind.OK)] * 6 + [Reply(AnswerKind.TRANSIENT, 5), Reply(AnswerKind.REFUSED, 5)] * 30
    run = simulate(replies_, definition=RETRIABLE)
    assert run.saga.status == SagaStatus.COMPLETED
    assert run.attempts("confirm_order") == 61


def test_a_definition_is_compensatable_steps_then_a_pivot_then_retriable_ones() -> None:
    steps = CURRENT.steps
    with pytest.raises(ValueError, match="in that order"):
        SagaDefinition(version=98, steps=(RETRIABLE.steps[6], *steps[1:]))
    with pytest.raises(ValueError, match="needs compensation"):
        StepDefinition(steps[0].step, StepKind.COMPENSATABLE, steps[0].action, None)
    with pytest.raises(ValueError, match="has no compensation"):
        StepDefinition(steps[6].step, StepKind.PIVOT, steps[6].action, steps[0].compensation)


# -- retries ---------------------------------------------------------------------------------------


def test_retries_back_off_exponentially_with_a_jitter_spread_over_sagas() -> None:
    saga, other = new_saga(), new_saga("k-2")
    delays = [core.retry_delay(POLICY, saga, "make_payment", n).total_seconds() for n in range(1, 12)]
    caps = [min(POLICY.retry_max_secs, POLICY.retry_initial_secs * 2 ** (n - 1)) for n in range(1, 12)]
    assert all(0 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert delays == [core.retry_delay(POLICY, saga, "make_payment", n).total_seconds() for n in range(1, 12)]
    assert delays != [core.retry_delay(POLICY, other, "make_payment", n).total_seconds() for n in range(1, 12)]


def test_an_operator_retry_gives_the_compensation_a_fresh_deadline() -> None:
    run = simulate([Reply(AnswerKind.OK)] * 2 + [Reply(AnswerKind.REFUSED)] + [Reply(AnswerKind.TRANSIENT, 5)] * 1000)
    assert run.saga.status == SagaStatus.COMPENSATION_FAILED
    run.saga.retry_compensation("admin")
    action = core.advance(run.saga, CURRENT, POLICY, run.now + timedelta(hours=1))
    assert isinstance(action, Call) and action.label == "add_order_lines:compensate"
    assert action.timeout_secs == POLICY.attempt_timeout_secs
