"""The saga as an event-sourced aggregate: its `@event` methods are the only way its state changes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event


class SagaStatus(StrEnum):
    STARTED = "STARTED"  # accepted; the first step is under way
    RUNNING = "RUNNING"  # at least one step has succeeded
    COMPLETED = "COMPLETED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"  # waits for an operator's retry


# States in which no replica drives the saga on its own.
TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.COMPENSATION_FAILED})
# States that recovery resumes.
UNFINISHED = frozenset({SagaStatus.STARTED, SagaStatus.RUNNING, SagaStatus.COMPENSATING})


class StepStatus(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class CompensationStatus(StrEnum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class Phase(StrEnum):
    """What an attempt at a step is for."""

    ACTION = "action"  # the step itself
    REPLAY = "replay"  # the step again under its own key, to settle an outcome that is not known
    COMPENSATION = "compensation"  # its undoing


@dataclass
class StepRecord:
    """What is known of one step of this saga (rebuilt from events, never stored as such).

    Every attempt is recorded (`AttemptStarted`) before it is sent, so `attempts` and
    `compensation_attempts` count every request that may have reached the participant. The phase
    under way and when its first attempt started (the origin of its deadline) come from those events'
    timestamps, so they hold for whichever replica drives the saga.
    """

    name: str
    status: StepStatus = StepStatus.RUNNING
    attempts: int = 0
    last_error: str | None = None
    # A refusal (4xx) is a known outcome: nothing happened. A transient failure that outlived its
    # deadline is not: the step may have been applied, so it is compensated too.
    outcome_known: bool = True
    result: dict[str, Any] = field(default_factory=dict)
    compensation: CompensationStatus | None = None
    compensation_attempts: int = 0
    compensation_error: str | None = None
    # The phase the latest attempts belong to, and when its first attempt started.
    phase: Phase | None = None
    phase_started_at: datetime | None = None
    phase_attempts: int = 0
    # An attempt was sent and its answer is not recorded (the driver may have died waiting for it).
    in_flight: bool = False
    last_failed_at: datetime | None = None
    # A replay (before compensating) has settled what the step did.
    replayed: bool = False

    @property
    def needs_compensation(self) -> bool:
        return self.status == StepStatus.SUCCEEDED or (self.status == StepStatus.FAILED and not self.outcome_known)


class SagaStateError(Exception):
    """A command that the saga's current state does not allow (a programming or operator error)."""


# Saga ids are derived from (customer, Idempotency-Key): the same key can only ever name one saga.
SAGA_ID_NAMESPACE = UUID("1f0b7c52-3f5e-4d0a-9a43-6c1d2b8e7a10")


def saga_id_for(customer_id: str, idempotency_key: str) -> UUID:
    return uuid5(SAGA_ID_NAMESPACE, f"{customer_id}\n{idempotency_key}")


_EVENTS_AT: ContextVar[datetime | None] = ContextVar("saga_events_at", default=None)


@contextmanager
def events_at(now: datetime) -> Iterator[None]:
    """Stamp the saga events made inside with `now` (the driver's clock, as the rules were given it)."""
    token = _EVENTS_AT.set(now)
    try:
        yield
    finally:
        _EVENTS_AT.reset(token)


def saga_now() -> datetime:
    """The time saga events made now are stamped with."""
    return _EVENTS_AT.get() or datetime.now(UTC)


class Saga(Aggregate):
    """One placeCustomerOrder: its request, priced lines, steps, and compensations."""

    class Event(Aggregate.Event):
        @staticmethod
        def create_timestamp() -> datetime:
            return saga_now()

    @staticmethod
    def create_id(customer_id: str, idempotency_key: str) -> UUID:
        return saga_id_for(customer_id, idempotency_key)

    @event("SagaStarted")
    def __init__(
        self,
        *,
        definition_version: int,
        customer_id: str,
        idempotency_key: str,
        fingerprint: str,
        lines: list[dict[str, Any]],
        currency: str,
        total_minor: int,
        total_weight_grams: int,
        shipping_address: dict[str, Any],
        payment_token: str,
        trace: dict[str, str],
    ) -> None:
        # The definition's version is kept so that a saga started under an older definition is
        # finished under that definition, whatever the code's current version is.
        self.definition_version = definition_version
        self.customer_id = customer_id
        self.idempotency_key = idempotency_key
        self.fingerprint = fingerprint
        self.lines = lines
        self.currency = currency
        self.total_minor = total_minor
        self.total_weight_grams = total_weight_grams
        self.shipping_address = shipping_address
        self.payment_token = payment_token
        self.trace = trace
        self.status = SagaStatus.STARTED
        self.steps: dict[str, StepRecord] = {}
        self.current_step: str | None = None
        self.failure_reason: str | None = None
        self.compensation_plan: list[str] = []
        self.driver: str | None = None  # the last replica that resumed it (None: the one that placed it)

    # -- what the driver asks -------------------------------------------------------------------

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def order_id(self) -> str | None:
        record = self.steps.get("create_order")
        value = record.result.get("order_id") if record else None
        return str(value) if value else None

    def results(self) -> dict[str, Any]:
        """The results of the succeeded steps, merged (later steps and compensations read them)."""
        merged: dict[str, Any] = {}
        for record in self.steps.values():
            merged.update(record.result)
        return merged

    def context(self) -> dict[str, Any]:
        """Everything a step's path template and body builder may use."""
        return {
            "saga_id": str(self.id),
            "customer_id": self.customer_id,
            "currency": self.currency,
            "lines": self.lines,
            "total_minor": self.total_minor,
            "total_weight_grams": self.total_weight_grams,
            "shipping_address": self.shipping_address,
            "country": self.shipping_address.get("country", ""),
            "payment_token": self.payment_token,
            "failure_reason": self.failure_reason or "saga compensated",
            **self.results(),
        }

    def steps_to_compensate(self) -> list[str]:
        """Steps that did (or may have) take effect, latest first."""
        return [name for name in reversed(self.steps) if self.steps[name].needs_compensation]

    def next_compensation(self) -> str | None:
        for name in self.compensation_plan:
            if self.steps[name].compensation != CompensationStatus.SUCCEEDED:
                return name
        return None

    # -- attempts -------------------------------------------------------------------------------

    def attempt_started(self, step: str, phase: Phase, at: datetime) -> None:
        """Recorded (and saved) before the request is sent: an attempt that reached the participant is never lost."""
        if step not in self.steps:
            raise SagaStateError(f"saga {self.id} never started step {step!r}")
        self._attempt_started(step=step, phase=phase, timestamp=at)

    @event("AttemptStarted")
    def _attempt_started(self, step: str, phase: str, timestamp: datetime) -> None:
        record = self.steps[step]
        if record.phase != phase:
            record.phase, record.phase_started_at, record.phase_attempts = Phase(phase), timestamp, 0
        record.phase_attempts += 1
        record.in_flight = True
        if phase == Phase.COMPENSATION or self.status == SagaStatus.COMPENSATING:
            record.compensation_attempts += 1
        else:
            record.attempts += 1

    def attempt_failed(self, step: str, error: str, at: datetime) -> None:
        """A transient failure (or an answer lost with a driver): the step may be tried again."""
        self._attempt_failed(step=step, error=error, timestamp=at)

    @event("AttemptFailed")
    def _attempt_failed(self, step: str, error: str, timestamp: datetime) -> None:
        record = self.steps[step]
        record.in_flight = False
        record.last_failed_at = timestamp
        if self.status == SagaStatus.COMPENSATING:
            record.compensation_error = error
        else:
            record.last_error = error

    def resumed(self, by: str, at: datetime) -> None:
        """Another driver (a replica, or this one's next incarnation) takes the saga up after a crash."""
        self._resumed(by=by, timestamp=at)

    @event("SagaResumed")
    def _resumed(self, by: str, timestamp: datetime) -> None:
        self.driver = by

    # -- forward path ---------------------------------------------------------------------------

    def _require(self, *statuses: SagaStatus) -> None:
        if self.status not in statuses:
            raise SagaStateError(f"saga {self.id} is {self.status}, expected one of {[str(s) for s in statuses]}")

    def _require_current(self, step: str) -> None:
        if self.current_step != step:
            raise SagaStateError(f"saga {self.id} is at step {self.current_step!r}, not {step!r}")

    def start_step(self, step: str) -> None:
        self._require(SagaStatus.STARTED, SagaStatus.RUNNING)
        if step in self.steps:
            raise SagaStateError(f"step {step!r} of saga {self.id} was already started")
        self._step_started(step=step)

    @event("StepStarted")
    def _step_started(self, step: str) -> None:
        self.steps[step] = StepRecord(name=step)
        self.current_step = step

    def step_succeeded(self, step: str, result: dict[str, Any], attempts: int = 0,
                       last_error: str | None = None) -> None:
        self._require(SagaStatus.STARTED, SagaStatus.RUNNING)
        self._require_current(step)
        self._step_succeeded(step=step, result=result, attempts=attempts, last_error=last_error)

    @event("StepSucceeded")
    def _step_succeeded(self, step: str, result: dict[str, Any], attempts: int, last_error: str | None) -> None:
        record = self.steps[step]
        record.status = StepStatus.SUCCEEDED
        record.result = result
        record.in_flight = False
        record.attempts += attempts  # 0 since attempts are events of their own; kept for older histories
        record.last_error = last_error or record.last_error  # the last transient failure before it succeeded
        self.current_step = None
        self.status = SagaStatus.RUNNING

    def step_failed(self, step: str, error: str, final: bool, attempts: int = 0) -> None:
        """`final`: the service refused (nothing happened); otherwise the outcome is unknown."""
        self._require(SagaStatus.STARTED, SagaStatus.RUNNING)
        self._require_current(step)
        self._step_failed(step=step, error=error, final=final, attempts=attempts)

    @event("StepFailed")
    def _step_failed(self, step: str, error: str, final: bool, attempts: int) -> None:
        record = self.steps[step]
        record.status = StepStatus.FAILED
        record.last_error = error
        record.outcome_known = final
        record.in_flight = False
        record.attempts += attempts
        self.current_step = None

    def complete(self) -> None:
        self._require(SagaStatus.RUNNING)
        if self.current_step is not None or any(r.status != StepStatus.SUCCEEDED for r in self.steps.values()):
            raise SagaStateError(f"saga {self.id} cannot complete with unfinished or failed steps")
        self._completed()

    @event("SagaCompleted")
    def _completed(self) -> None:
        self.status = SagaStatus.COMPLETED

    # -- compensation ---------------------------------------------------------------------------

    def start_compensation(self, reason: str, plan: list[str]) -> None:
        """`plan`: the steps to undo, in the order to undo them (the driver drops steps with no compensation)."""
        self._require(SagaStatus.STARTED, SagaStatus.RUNNING)
        if self.current_step is not None:
            raise SagaStateError(f"saga {self.id} cannot compensate while step {self.current_step!r} runs")
        unknown = [name for name in plan if name not in self.steps]
        if unknown:
            raise SagaStateError(f"saga {self.id} cannot compensate steps it never started: {unknown}")
        self._compensation_started(reason=reason, plan=plan)

    @event("CompensationStarted")
    def _compensation_started(self, reason: str, plan: list[str]) -> None:
        self.status = SagaStatus.COMPENSATING
        self.failure_reason = reason
        self.compensation_plan = list(plan)
        for name in plan:
            self.steps[name].compensation = CompensationStatus.PENDING

    def compensation_succeeded(self, step: str, attempts: int = 0, learned: dict[str, Any] | None = None) -> None:
        """`learned`: results of a step whose outcome was unknown, found out to address its compensation."""
        self._require(SagaStatus.COMPENSATING)
        if self.next_compensation() != step:
            raise SagaStateError(f"saga {self.id}: {step!r} is not the next compensation")
        self._compensation_succeeded(step=step, attempts=attempts, learned=learned or {})

    @event("CompensationSucceeded")
    def _compensation_succeeded(self, step: str, attempts: int, learned: dict[str, Any]) -> None:
        record = self.steps[step]
        record.result.update(learned)
        record.compensation = CompensationStatus.SUCCEEDED
        record.in_flight = False
        record.compensation_attempts += attempts

    def compensation_failed(self, step: str, error: str, attempts: int = 0) -> None:
        self._require(SagaStatus.COMPENSATING)
        if self.next_compensation() != step:
            raise SagaStateError(f"saga {self.id}: {step!r} is not the next compensation")
        self._compensation_failed(step=step, error=error, attempts=attempts)

    @event("CompensationFailed")
    def _compensation_failed(self, step: str, error: str, attempts: int) -> None:
        record = self.steps[step]
        record.compensation = CompensationStatus.FAILED
        record.compensation_error = error
        record.in_flight = False
        record.compensation_attempts += attempts

    def finish_compensation(self) -> None:
        """COMPENSATED when every planned compensation succeeded, else COMPENSATION_FAILED."""
        self._require(SagaStatus.COMPENSATING)
        failed = [n for n in self.compensation_plan if self.steps[n].compensation == CompensationStatus.FAILED]
        if failed:
            self._compensation_gave_up(step=failed[0])
        elif self.next_compensation() is None:
            self._compensated()
        else:
            raise SagaStateError(f"saga {self.id} still has compensations to run")

    @event("SagaCompensated")
    def _compensated(self) -> None:
        self.status = SagaStatus.COMPENSATED

    @event("SagaCompensationFailed")
    def _compensation_gave_up(self, step: str) -> None:
        self.status = SagaStatus.COMPENSATION_FAILED

    def retry_compensation(self, requested_by: str) -> None:
        """An operator asks to try the failed compensation (and the ones after it) again."""
        self._require(SagaStatus.COMPENSATION_FAILED)
        self._compensation_retried(requested_by=requested_by)

    @event("CompensationRetried")
    def _compensation_retried(self, requested_by: str) -> None:
        self.status = SagaStatus.COMPENSATING
        for name in self.compensation_plan:
            record = self.steps[name]
            if record.compensation == CompensationStatus.FAILED:
                # Tried again from the start: a fresh deadline, and the replay (if any) once more.
                record.compensation = CompensationStatus.PENDING
                record.phase = record.phase_started_at = None
                record.phase_attempts, record.replayed = 0, False

    def replay_finished(self, step: str, learned: dict[str, Any], error: str | None) -> None:
        """The replay before compensating settled what the step did (`learned`: its results), or gave up (`error`)."""
        self._require(SagaStatus.COMPENSATING)
        if self.next_compensation() != step:
            raise SagaStateError(f"saga {self.id}: {step!r} is not the next compensation")
        self._replay_finished(step=step, learned=learned, error=error)

    @event("ReplayFinished")
    def _replay_finished(self, step: str, learned: dict[str, Any], error: str | None) -> None:
        record = self.steps[step]
        record.result.update(learned)
        record.replayed = True
        record.in_flight = False
        if error is not None:
            record.compensation_error = error


def saga_uuid(value: str) -> UUID | None:
    """The saga id from a path, or None when it cannot be one."""
    try:
        return UUID(value)
    except ValueError:
        return None
