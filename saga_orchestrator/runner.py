"""Drives sagas to a terminal state: leasing, calling, saving and the clock; the rules are `core`'s.

A replica drives a saga only while it holds the saga's lease (see `index`). The loop: ask `core.advance`
what comes next (handing it the time and the last answer), save the events that decided (before the
call they announce is sent, so every attempt is in the history), make the call, repeat. Progress is
saved at every step: a crash repeats at most the one call that was in flight, under the same
Idempotency-Key, so the participant answers with what it stored the first time. The index row is
brought up to date when what it shows changes (status, order id). A version conflict on save means
another writer got there first: this replica stops driving that saga at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Protocol
from uuid import UUID

import structlog

from saga_orchestrator import core
from saga_orchestrator.core import Answer, Call, Done, Policy, Wait
from saga_orchestrator.domain import TERMINAL, Saga
from saga_orchestrator.event_store import ConcurrentSagaUpdate, SagaStore
from saga_orchestrator.index import SagaIndexStore
from saga_orchestrator.metrics import SAGA_TAKEOVERS, SAGAS_FINISHED, STEP_LATENCY
from saga_orchestrator.settings import Settings
from saga_orchestrator.step_client import Request
from saga_orchestrator.steps import definition
from shared.db import utc_now

log = structlog.get_logger(__name__)


class Participants(Protocol):
    """What the runner needs of `StepClient` (tests give it scripted participants)."""

    def attempt(self, request: Request, trace: dict[str, str], timeout_secs: float,
                not_found_is_done: bool = False) -> Awaitable[Answer]: ...

    def ready(self) -> bool: ...


def policy(settings: Settings) -> Policy:
    return Policy(step_deadline_secs=settings.step_deadline_secs,
                  compensation_deadline_secs=settings.compensation_deadline_secs,
                  attempt_timeout_secs=settings.step_attempt_timeout_secs,
                  retry_initial_secs=settings.retry_initial_secs, retry_max_secs=settings.retry_max_secs)


class SagaRunner:
    def __init__(self, store: SagaStore, index: SagaIndexStore, participants: Participants, settings: Settings,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.index = index
        self.participants = participants
        self.settings = settings
        self.policy = policy(settings)
        # Wall-clock time: deadlines count from timestamps in the saga's history, which any replica reads.
        self.clock = clock
        self._tasks: dict[UUID, asyncio.Task[bool]] = {}
        # Sagas being placed here (indexed, leased to us, not yet launched): never "resumed" by recovery.
        self.placing: set[UUID] = set()
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

    def launch(self, saga_id: UUID, started: Saga | None = None, first: Call | None = None) -> None:
        """Drive a saga in the background, unless this replica already does or another holds its lease.

        `started`: the saga just placed and saved by this replica, which holds its lease since the
        index row was written; driving it needs neither a claim nor a read of the store. `first`: its
        first call, recorded as started in that save.
        """
        if self._stopping or saga_id in self._tasks:
            return
        task = asyncio.create_task(self.drive(saga_id, started, first), name=f"saga-{saga_id}")
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
        ids = await self.index.resumable(capacity, exclude=set(self._tasks) | self.placing)
        for saga_id in ids:
            log.info("resuming saga", saga_id=str(saga_id))
            self.launch(saga_id)
        return len(ids)

    # -- driving one saga -----------------------------------------------------------------------

    def first_call(self, saga: Saga) -> Call | None:
        """A just-placed saga's first call, its attempt recorded (saved with the saga's start)."""
        action = core.advance(saga, definition(saga.definition_version), self.policy, self.clock())
        return action if isinstance(action, Call) else None

    async def drive(self, saga_id: UUID, started: Saga | None = None, first: Call | None = None) -> bool:
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
            # What the index row shows; a saga placed here was just indexed as it is.
            shown = (saga.status, saga.order_id) if started is not None else None
            if saga.is_terminal:  # the index lagged behind the aggregate
                await self.index.record(saga, release=True)
                release = False
                return True
            if started is None:
                saga.resumed(by=self.owner, at=self.clock())
            saga_definition = definition(saga.definition_version)
            answer: Answer | None = await self._send(saga, first) if first is not None and started else None
            while True:
                if lease_lost.is_set() or self._stopping:
                    SAGA_TAKEOVERS.labels("lease" if lease_lost.is_set() else "shutdown").inc()
                    return False
                action = core.advance(saga, saga_definition, self.policy, self.clock(), answer)
                answer = None
                if isinstance(action, Wait):
                    await asyncio.sleep(max(0.0, (action.until - self.clock()).total_seconds()))
                    continue
                await self.store.save(saga)
                if shown != (saga.status, saga.order_id) or isinstance(action, Done):
                    if not await self.index.record(saga, release=saga.is_terminal):
                        SAGA_TAKEOVERS.labels("lease").inc()
                        log.warning("lost the lease of a saga while driving it", saga_id=str(saga_id))
                        release = False
                        return False
                    shown = (saga.status, saga.order_id)
                if isinstance(action, Done):
                    SAGAS_FINISHED.labels(saga.status.lower()).inc()
                    log.info("saga finished", saga_id=str(saga_id), status=str(saga.status), order_id=saga.order_id)
                    release = False
                    return True
                answer = await self._send(saga, action)
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

    async def _send(self, saga: Saga, call: Call) -> Answer:
        started = time.perf_counter()
        request = Request(call.app, call.method, call.path, call.body, call.idempotency_key, label=call.label)
        answer = await self.participants.attempt(request, saga.trace, call.timeout_secs, call.not_found_is_done)
        STEP_LATENCY.labels(call.step, str(call.phase), str(answer.kind)).observe(time.perf_counter() - started)
        if answer.kind != core.AnswerKind.OK:
            log.info("saga attempt failed", saga_id=str(saga.id), call=call.label, error=answer.error,
                     outcome=str(answer.kind))
        return answer

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
