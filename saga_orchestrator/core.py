"""The saga's rules, pure: given a saga and its definition, the next call; given its answer, the events that follow.

No database, no HTTP, no clock: the driver (`runner`) passes the time in and makes the calls. One function,
`advance`, holds every rule:

- the steps run in the table's order; a refusal, or a transient failure past the step's deadline, turns the
  saga to compensation, which undoes (latest first) every step that did or may have taken effect;
- each step's kind (`steps.StepKind`) says how: a compensatable step is undone, a replay-before-compensate
  step whose outcome is unknown is first replayed under its own key, the pivot's unknown outcome is settled
  by a replay before anything is undone, a retriable step is retried until it succeeds;
- every attempt is recorded as started before it is sent (`AttemptStarted`), so the history counts every
  request that may have reached a participant, and an attempt whose answer was never recorded (its driver
  died) counts as a transient failure: a resumed saga repeats at most that one call, under the same key;
- deadlines count from the first attempt of the phase (the step, its replay, its compensation), read from
  the saga's own events: they hold across crashes, whichever replica drives the saga. The one exception:
  the call whose answer was lost with its driver is made once more when the saga is resumed, even past the
  deadline, since under its key it only fetches what the participant did (a step whose driver died is not
  a step that failed). So a phase makes no attempt after its deadline but at most one per resume;
- retries back off exponentially with full jitter, the jitter derived from the saga's id and the attempt's
  number (deterministic, yet spread over sagas), and never wait past the deadline.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from saga_orchestrator.domain import Phase, Saga, SagaStatus, StepStatus, events_at
from saga_orchestrator.steps import SagaDefinition, ServiceCall, StepDefinition, StepKind

LOST_ANSWER = "no answer recorded: its driver stopped during the attempt"
# The shortest time an attempt is given, even at its deadline's edge.
MIN_ATTEMPT_SECS = 0.05


@dataclass(frozen=True)
class Policy:
    """Deadlines and backoff (from the orchestrator's settings)."""

    step_deadline_secs: float
    compensation_deadline_secs: float
    attempt_timeout_secs: float
    retry_initial_secs: float
    retry_max_secs: float


class AnswerKind(StrEnum):
    OK = "ok"
    REFUSED = "refused"  # a business refusal (4xx): the participant did not apply the request
    TRANSIENT = "transient"  # timeout, connection error, 5xx, request still in progress: may be retried


@dataclass(frozen=True)
class Answer:
    """One attempt's answer, as the step client classified it."""

    kind: AnswerKind
    status: int | None = None
    body: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Call:
    """The request to send now (its `AttemptStarted` is already among the saga's pending events)."""

    step: str
    phase: Phase
    app: str
    method: str
    path: str
    body: dict[str, Any] | None
    idempotency_key: str
    timeout_secs: float
    not_found_is_done: bool  # a compensation whose target is gone has nothing left to undo

    @property
    def label(self) -> str:
        """As on metrics and logs: "make_payment", "assign_carrier:replay", "make_payment:compensate"."""
        suffix = {Phase.ACTION: "", Phase.REPLAY: ":replay", Phase.COMPENSATION: ":compensate"}[self.phase]
        return f"{self.step}{suffix}"


@dataclass(frozen=True)
class Wait:
    """Nothing to send before `until` (a retry's backoff); then ask again."""

    until: datetime


@dataclass(frozen=True)
class Done:
    """The saga is terminal: nothing more to do."""


Action = Call | Wait | Done


def compensation_plan(saga: Saga, definition: SagaDefinition) -> list[str]:
    """The steps that did (or may have) taken effect and can be undone, latest first."""
    return [name for name in saga.steps_to_compensate() if definition.get(name).compensation is not None]


def retry_delay(policy: Policy, saga: Saga, step: str, failures: int) -> timedelta:
    """Exponential backoff with full jitter; the jitter is a hash of (saga, step, attempt), so retries of many
    sagas do not arrive in waves, and the same saga always waits the same (a resumed one included)."""
    cap = min(policy.retry_max_secs, policy.retry_initial_secs * 2 ** max(0, failures - 1))
    digest = hashlib.blake2b(f"{saga.id}:{step}:{failures}".encode(), digest_size=8).digest()
    return timedelta(seconds=cap * int.from_bytes(digest) / 2**64)


def advance(saga: Saga, definition: SagaDefinition, policy: Policy, now: datetime,
            answer: Answer | None = None) -> Action:
    """Record `answer` (to the attempt in flight), then decide what comes next, recording what that decides.

    Every change is an event on `saga` (pending until the driver saves it). A `Call`'s attempt is recorded
    as started: the driver saves before it sends. `answer` None with an attempt in flight means its answer
    was lost with a crash.
    """
    with events_at(now):
        if answer is not None:
            _record(saga, definition, policy, now, answer)
        while True:
            if saga.is_terminal:
                return Done()
            if saga.status == SagaStatus.COMPENSATING:
                action = _next_compensation(saga, definition, policy, now)
            else:
                action = _next_forward(saga, definition, policy, now)
            if action is not None:
                return action


# -- answers ----------------------------------------------------------------------------------------


def _record(saga: Saga, definition: SagaDefinition, policy: Policy, now: datetime, answer: Answer) -> None:
    name = _step_in_flight(saga)
    step = definition.get(name)
    record = saga.steps[name]
    phase = record.phase
    retried_anyway = step.kind == StepKind.RETRIABLE and answer.kind == AnswerKind.REFUSED
    if answer.kind == AnswerKind.TRANSIENT or retried_anyway:
        saga.attempt_failed(name, answer.error or "failed", now)
        return
    if saga.status != SagaStatus.COMPENSATING:  # the action, or the pivot's settling replay
        if answer.kind == AnswerKind.OK:
            _succeeded(saga, definition, step, answer.body)
        else:
            _failed(saga, definition, name, answer.error or "refused", final=True)
        return
    if phase == Phase.REPLAY:
        if answer.kind == AnswerKind.REFUSED:  # it never happened: nothing to undo
            saga.compensation_succeeded(name)
            _finish_if_done(saga)
        else:
            saga.replay_finished(name, step.extract_results(answer.body), None)
        return
    if answer.kind == AnswerKind.OK:
        saga.compensation_succeeded(name)
        _finish_if_done(saga)
    else:
        saga.compensation_failed(name, answer.error or "refused")
        saga.finish_compensation()


def _step_in_flight(saga: Saga) -> str:
    for name, record in saga.steps.items():
        if record.in_flight:
            return name
    raise ValueError(f"saga {saga.id} has no attempt in flight to record an answer for")


def _succeeded(saga: Saga, definition: SagaDefinition, step: StepDefinition, body: Any) -> None:
    saga.step_succeeded(step.step, step.extract_results(body))
    following = definition.after(step.step)
    if following is None:
        saga.complete()
    else:
        saga.start_step(following.step)


def _failed(saga: Saga, definition: SagaDefinition, name: str, error: str, final: bool) -> None:
    """`final`: refused, nothing happened; otherwise the outcome is unknown (compensated too)."""
    saga.step_failed(name, error, final=final)
    plan = compensation_plan(saga, definition)
    saga.start_compensation(reason=f"{name} failed: {error}", plan=plan)
    _finish_if_done(saga)


def _finish_if_done(saga: Saga) -> None:
    if saga.next_compensation() is None:
        saga.finish_compensation()


# -- what comes next --------------------------------------------------------------------------------


def _next_forward(saga: Saga, definition: SagaDefinition, policy: Policy, now: datetime) -> Action | None:
    name = saga.current_step
    if name is None:
        raise ValueError(f"saga {saga.id} is {saga.status} with no step under way")
    step = definition.get(name)
    record = saga.steps[name]
    lost = _lost_answer(saga, name, now)
    phase = record.phase or Phase.ACTION
    deadline = None if step.kind == StepKind.RETRIABLE else policy.step_deadline_secs
    if phase == Phase.ACTION and not lost and _expired(record.phase_started_at, deadline, now):
        if step.kind != StepKind.PIVOT:
            _failed(saga, definition, name, _gave_up(record.attempts, record.last_error), final=False)
            return None
        phase = Phase.REPLAY  # settle the pivot's outcome before anything is undone
    if phase == Phase.REPLAY:
        deadline = policy.compensation_deadline_secs
        if record.phase == Phase.REPLAY and not lost and _expired(record.phase_started_at, deadline, now):
            _failed(saga, definition, name, _gave_up(record.attempts, record.last_error), final=False)
            return None
    return _attempt(saga, definition, step, step.action, phase, f"{saga.id}:{name}", deadline, policy, now, lost)


def _next_compensation(saga: Saga, definition: SagaDefinition, policy: Policy, now: datetime) -> Action | None:
    name = saga.next_compensation()
    if name is None:
        saga.finish_compensation()
        return None
    step = definition.get(name)
    record = saga.steps[name]
    compensation = step.compensation
    if compensation is None:
        raise ValueError(f"step {name} has no compensation but is in saga {saga.id}'s plan")
    lost = _lost_answer(saga, name, now)
    context = saga.context()
    addressable = compensation.can_render(context)
    unknown = record.status == StepStatus.FAILED and not record.outcome_known
    deadline = policy.compensation_deadline_secs
    if not record.replayed and (not addressable or (step.kind == StepKind.REPLAY_BEFORE_COMPENSATE and unknown)):
        phase_started = record.phase_started_at if record.phase == Phase.REPLAY else None
        if lost or not _expired(phase_started, deadline, now):
            return _attempt(saga, definition, step, step.action, Phase.REPLAY, f"{saga.id}:{name}", deadline,
                            policy, now, lost)
        error = _gave_up(record.phase_attempts, record.compensation_error)
        if not addressable:  # what to undo cannot even be named: an operator must look
            saga.compensation_failed(name, error)
            saga.finish_compensation()
            return None
        # The participant keeps failing the replay: compensate all the same, as well as can be done.
        saga.replay_finished(name, {}, error)
        return None
    phase_started = record.phase_started_at if record.phase == Phase.COMPENSATION else None
    if not lost and _expired(phase_started, deadline, now):
        saga.compensation_failed(name, _gave_up(record.phase_attempts, record.compensation_error))
        saga.finish_compensation()
        return None
    return _attempt(saga, definition, step, compensation, Phase.COMPENSATION, f"{saga.id}:{name}:compensate",
                    deadline, policy, now, lost)


def _lost_answer(saga: Saga, name: str, now: datetime) -> bool:
    """An attempt is in flight with no answer to record: its driver died. Counted as a transient failure."""
    if not saga.steps[name].in_flight:
        return False
    saga.attempt_failed(name, LOST_ANSWER, now)
    return True


def _expired(started: datetime | None, deadline_secs: float | None, now: datetime) -> bool:
    return started is not None and deadline_secs is not None and now >= started + timedelta(seconds=deadline_secs)


def _gave_up(attempts: int, error: str | None) -> str:
    return f"gave up after {attempts} attempts: {error or 'failed'}"


def _attempt(saga: Saga, definition: SagaDefinition, step: StepDefinition, call: ServiceCall, phase: Phase,
             key: str, deadline_secs: float | None, policy: Policy, now: datetime, lost: bool) -> Action | None:
    """The next attempt of this phase: now, or after its backoff; None when a decision was recorded instead.
    `lost`: the previous attempt's answer died with its driver; it is asked again at once."""
    name = str(step.step)
    record = saga.steps[name]
    same_phase = record.phase == phase
    started = record.phase_started_at if same_phase else None
    remaining = deadline_secs  # a phase's first attempt: its deadline starts now
    if started is not None and deadline_secs is not None:
        remaining = (started + timedelta(seconds=deadline_secs) - now).total_seconds()
    if same_phase and not lost and record.phase_attempts and record.last_failed_at is not None:
        until = record.last_failed_at + retry_delay(policy, saga, name, record.phase_attempts)
        if remaining is not None:
            until = min(until, now + timedelta(seconds=remaining))
        if until > now:
            return Wait(until)
    context = saga.context()
    try:
        path = call.render_path(context)
        body = call.render_body(context)
    except (KeyError, TypeError, ValueError) as exc:
        # The saga's data cannot make this request: retrying cannot help, so it is final.
        error = f"cannot build the request: {exc!r}"
        if phase == Phase.COMPENSATION:
            saga.compensation_failed(name, error)
            saga.finish_compensation()
        elif saga.status == SagaStatus.COMPENSATING:
            saga.replay_finished(name, {}, error)
        else:
            _failed(saga, definition, name, error, final=True)
        return None
    timeout = policy.attempt_timeout_secs
    if remaining is not None and remaining > 0:
        timeout = min(timeout, remaining)
    saga.attempt_started(name, phase, now)
    return Call(step=name, phase=phase, app=call.app, method=call.method, path=path, body=body,
                idempotency_key=key, timeout_secs=max(MIN_ATTEMPT_SECS, timeout),
                not_found_is_done=phase == Phase.COMPENSATION)
