"""Drives sagas to a terminal state: one step or compensation at a time, saved at checkpoints, resumed after crashes.

A replica drives a saga only while it holds the saga's lease (see `index`). Each transition —
a step's outcome plus the next step's start, or a failure plus the start of compensation, or the
last outcome plus the saga's end — is one group of events. The groups are saved (and the index
row brought up to date) when recovery needs them: when the saga ends, when it turns to
compensation and at every compensation step, and otherwise at most `event_store_checkpoint_secs`
apart. Between checkpoints nothing is lost by a crash that recovery cannot redo: every step is
called under its own Idempotency-Key, so a resumed saga that calls a step again gets the answer
the service stored the first time. A version conflict on save means another writer got there
first: this replica stops driving that saga at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, Protocol
from uuid import UUID

import structlog

from saga_orchestrator.domain import TERMINAL, Saga, SagaStatus, StepStatus
from saga_orchestrator.event_store import ConcurrentSagaUpdate, SagaStore
from saga_orchestrator.index import SagaIndexStore
from saga_orchestrator.metrics import SAGA_TAKEOVERS, SAGAS_FINISHED, STEP_LATENCY
from saga_orchestrator.settings import Settings
from saga_orchestrator.step_client import CallResult
from saga_orchestrator.steps import SagaDefinition, ServiceCall, definition

log = structlog.get_logger(__name__)


class Participants(Protocol):
    """What the runner needs of `StepClient` (tests give it scripted participants)."""

    def call(self, app: str, method: str, path: str, body: dict[str, Any] | None, *, idempotency_key: str | None,
             trace: dict[str, str], deadline_secs: float, label: str,
             not_found_is_done: bool = False) -> Awaitable[CallResult]: ...

    def ready(self) -> bool: ...


def _outcome(result: CallResult) -> str:
    return "ok" if result.ok else ("refused" if result.refused else "failed")


class SagaRunner:
    def __init__(self, store: SagaStore, index: SagaIndexStore, participants: Participants, settings: Settings) -> None:
        self.store = store
        self.index = index
        self.participants = participants
        self.settings = settings
        self._tasks: dict[UUID, asyncio.Task[bool]] = {}
        self._recovery: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def owner(self) -> str:
        return self.index.owner

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._recovery = asyncio.create_task(self._recover_forever(), name="saga-recovery")

    async def stop(self) -> None:
        """Stop driving: in-flight calls are abandoned (their idempotency keys make the replay safe)."""
        self._stopping = True
        tasks = [t for t in (self._recovery, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def launch(self, saga_id: UUID, started: Saga | None = None) -> None:
        """Drive a saga in the background, unless this replica already does or another holds its lease.

        `started`: the saga just placed and saved by this replica, which holds its lease since the
        index row was written; driving it needs neither a claim nor a read of the store.
        """
        if self._stopping or saga_id in self._tasks:
            return
        task = asyncio.create_task(self.drive(saga_id, started), name=f"saga-{saga_id}")
        self._tasks[saga_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(saga_id, None))

    async def wait(self, saga_id: UUID, seconds: float) -> bool:
        """Wait up to `seconds` for a terminal state (driven here or by another replica); True if reached."""
        deadline = time.monotonic() + seconds
        task = self._tasks.get(saga_id)
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=seconds)
            if task in done and not task.cancelled() and task.result():
                return True  # driven to its end here: the index row says so already
        while True:
            row = await self.index.get(saga_id)
            if row is not None and row.status in TERMINAL:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(0.1, remaining))

    # -- recovery -------------------------------------------------------------------------------

    async def _recover_forever(self) -> None:
        # Wait (briefly) for the registry's first fetch, so resumed sagas do not burn their deadlines.
        for _ in range(50):
            if self.participants.ready():
                break
            await asyncio.sleep(0.2)
        while not self._stopping:
            try:
                await self.recover_once()
            except Exception as exc:  # the database may be briefly away; try again next round
                log.warning("saga recovery round failed", error=repr(exc))
            await asyncio.sleep(self.settings.recovery_interval_secs)

    async def recover_once(self) -> int:
        """Launch every unfinished saga that nobody drives (up to capacity); returns how many."""
        capacity = self.settings.max_active_sagas - len(self._tasks)
        if capacity <= 0:
            return 0
        ids = await self.index.resumable(capacity, exclude=set(self._tasks))
        for saga_id in ids:
            log.info("resuming saga", saga_id=str(saga_id))
            self.launch(saga_id)
        return len(ids)

    # -- driving one saga -----------------------------------------------------------------------

    async def drive(self, saga_id: UUID, started: Saga | None = None) -> bool:
        """Drive the saga until it ends (True) or this replica must stop driving it (False)."""
        if started is None and not await self.index.claim(saga_id):
            return False
        lease_lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lease(saga_id, lease_lost))
        release = True
        try:
            saga = started or await self.store.get(saga_id) or await self._start_from_index(saga_id)
            if saga is None:
                return False
            if saga.is_terminal:  # the index lagged behind the aggregate
                await self.index.record(saga, release=True)
                release = False
                return True
            saga_definition = definition(saga.definition_version)
            saved_at = time.monotonic()
            while not saga.is_terminal:
                if lease_lost.is_set() or self._stopping:
                    SAGA_TAKEOVERS.labels("lease" if lease_lost.is_set() else "shutdown").inc()
                    return False
                await self._advance(saga, saga_definition)
                if not self._checkpoint_due(saga, saved_at):
                    continue
                await self.store.save(saga)
                saved_at = time.monotonic()
                if saga.is_terminal:
                    SAGAS_FINISHED.labels(saga.status.lower()).inc()
                    log.info("saga finished", saga_id=str(saga_id), status=str(saga.status), order_id=saga.order_id)
                if not await self.index.record(saga, release=saga.is_terminal):
                    SAGA_TAKEOVERS.labels("lease").inc()
                    log.warning("lost the lease of a saga while driving it", saga_id=str(saga_id))
                    release = False
                    return False
            release = False
            return True
        except ConcurrentSagaUpdate:
            SAGA_TAKEOVERS.labels("version_conflict").inc()
            log.warning("another writer saved this saga first; no longer driving it", saga_id=str(saga_id))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("saga driver failed; recovery will resume the saga", saga_id=str(saga_id))
        finally:
            keeper.cancel()
            if release:
                await self._release_quietly(saga_id)
        return False

    def _checkpoint_due(self, saga: Saga, saved_at: float) -> bool:
        """Save now? At the end, on the compensation path (a decision to undo is kept at once), and
        otherwise once `event_store_checkpoint_secs` have passed since the last save (0: every transition)."""
        if saga.is_terminal or saga.status == SagaStatus.COMPENSATING:
            return True
        return time.monotonic() - saved_at >= self.settings.event_store_checkpoint_secs

    async def _release_quietly(self, saga_id: UUID) -> None:
        try:
            await asyncio.shield(self.index.release(saga_id))
        except (Exception, asyncio.CancelledError) as exc:  # the lease will run out on its own
            log.warning("could not release a saga lease", saga_id=str(saga_id), error=repr(exc))

    async def _keep_lease(self, saga_id: UUID, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_secs / 3)
            try:
                if not await self.index.renew(saga_id):
                    lost.set()
                    return
            except Exception as exc:  # keep trying; the version check guards us if the lease does lapse
                log.warning("could not renew a saga lease", saga_id=str(saga_id), error=repr(exc))

    async def _start_from_index(self, saga_id: UUID) -> Saga | None:
        """The index row was written but the process died before the saga's first save: start it now."""
        row = await self.index.get(saga_id)
        if row is None:
            return None
        saga = Saga(**row.start_request)
        if saga.id != saga_id:
            log.error("saga index row does not match its start request", saga_id=str(saga_id))
            return None
        saga.start_step(definition(saga.definition_version).first().step)
        try:
            await self.store.save(saga)
        except ConcurrentSagaUpdate:
            return await self.store.get(saga_id)
        return saga

    async def _advance(self, saga: Saga, saga_definition: SagaDefinition) -> None:
        """Run the saga's next call and record its outcome (as pending events, saved by the caller)."""
        if saga.status == SagaStatus.COMPENSATING:
            await self._compensate_next(saga, saga_definition)
        else:
            await self._run_current_step(saga, saga_definition)

    async def _call(self, saga: Saga, call: ServiceCall, context: dict[str, Any], key: str, deadline: float,
                    label: str, not_found_is_done: bool = False) -> CallResult:
        try:
            path = call.render_path(context)
            body = call.render_body(context)
        except (KeyError, TypeError, ValueError) as exc:
            # The saga's data cannot make this request: retrying cannot help, so it is final.
            return CallResult(False, True, None, None, f"cannot build the request: {exc!r}", 0)
        return await self.participants.call(
            call.app, call.method, path, body, idempotency_key=key, trace=saga.trace, deadline_secs=deadline,
            label=label, not_found_is_done=not_found_is_done)

    async def _run_current_step(self, saga: Saga, saga_definition: SagaDefinition) -> None:
        if saga.current_step is None:
            raise RuntimeError(f"saga {saga.id} is {saga.status} with no step under way")
        step = saga_definition.get(saga.current_step)
        started = time.perf_counter()
        key = f"{saga.id}:{step.step}"
        result = await self._call(saga, step.action, saga.context(), key, self.settings.step_deadline_secs, step.step)
        if not result.ok and not result.refused and step.compensation is None:
            # The finish (confirm) has no compensation: if it landed late, after the earlier steps were undone,
            # the order would stand CONFIRMED with its payment refunded and its stock released. So its outcome
            # is settled before anything is undone: a replay under its key waits for the call still in flight,
            # or makes it now, and a late copy of the original can only replay that answer.
            settled = await self._call(saga, step.action, saga.context(), key,
                                       self.settings.compensation_deadline_secs, f"{step.step}:replay")
            result = CallResult(settled.ok, settled.refused, settled.status, settled.body,
                                settled.error or result.error, result.attempts + settled.attempts)
        STEP_LATENCY.labels(step.step, "step", _outcome(result)).observe(time.perf_counter() - started)
        if result.ok:
            saga.step_succeeded(step.step, step.extract_results(result.body), result.attempts, result.error)
            following = saga_definition.after(step.step)
            if following is not None:
                saga.start_step(following.step)
            else:
                saga.complete()
            return
        error = result.error or "failed"
        log.info("saga step failed", saga_id=str(saga.id), step=step.step, error=error, final=result.refused)
        saga.step_failed(step.step, error, final=result.refused, attempts=result.attempts)
        plan = saga_definition.compensation_plan(saga.steps_to_compensate())
        saga.start_compensation(reason=f"{step.step} failed: {error}", plan=plan)
        if not plan:
            saga.finish_compensation()

    async def _compensate_next(self, saga: Saga, saga_definition: SagaDefinition) -> None:
        name = saga.next_compensation()
        if name is None:
            saga.finish_compensation()
            return
        step = saga_definition.get(name)
        compensation = step.compensation
        if compensation is None:
            raise RuntimeError(f"step {name} has no compensation but is in saga {saga.id}'s plan")
        deadline = self.settings.compensation_deadline_secs
        started = time.perf_counter()
        context = saga.context()
        learned: dict[str, Any] = {}
        record = saga.steps[name]
        outcome_unknown = record.status == StepStatus.FAILED and not record.outcome_known
        try:
            compensation.render_path(context)
            addressable = True
        except KeyError:
            addressable = False
        if not addressable or (step.replay_before_compensating and outcome_unknown):
            # The step's outcome is unknown, and either its compensation cannot say what to undo (the order id
            # of an order that may exist) or would not stop the step from landing after it: ask again under
            # the step's own key, which replays, not repeats.
            replay = await self._call(saga, step.action, context, f"{saga.id}:{name}", deadline, f"{name}:replay")
            if replay.refused:  # it did not happen: nothing to undo
                saga.compensation_succeeded(name, replay.attempts)
                self._finish_if_done(saga)
                return
            if replay.ok:
                learned = step.extract_results(replay.body)
                context = {**context, **learned}
            elif not addressable:
                saga.compensation_failed(name, replay.error or "failed", replay.attempts)
                saga.finish_compensation()
                return
            # else the participant keeps failing the step: compensate all the same, as well as can be done.
        result = await self._call(saga, compensation, context, f"{saga.id}:{name}:compensate", deadline,
                                  f"{name}:compensate", not_found_is_done=True)
        STEP_LATENCY.labels(name, "compensation", _outcome(result)).observe(time.perf_counter() - started)
        if result.ok:
            saga.compensation_succeeded(name, result.attempts, learned)
            self._finish_if_done(saga)
        else:
            log.warning("compensation failed", saga_id=str(saga.id), step=name, error=result.error)
            saga.compensation_failed(name, result.error or "failed", result.attempts)
            saga.finish_compensation()

    @staticmethod
    def _finish_if_done(saga: Saga) -> None:
        if saga.next_compensation() is None:
            saga.finish_compensation()
