"""Calls to the saga's participants: one keep-alive aiohttp session, registry round robin, service token.

An answer is one of three things (`core.AnswerKind`). 2xx: done. A business refusal (4xx such as 402,
409, 422): final, retrying cannot change it. Anything transient (connection error, timeout, 5xx,
408/429, no UP instance, no token, the participant's "request in progress" problem): may be retried.
The saga's steps are sent one attempt at a time (`attempt`): the saga's rules (`core`) decide about
retries and deadlines, and every attempt is in the saga's history. `call` retries on its own, for the
orchestrator's other requests (the catalogue).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_before_delay, wait_random_exponential

from saga_orchestrator.core import Answer, AnswerKind
from saga_orchestrator.metrics import STEP_ATTEMPTS
from saga_orchestrator.steps import ORDER
from shared.auth import ServiceTokens
from shared.errors import DomainError, RequestInProgress
from shared.idempotency import HEADER as IDEMPOTENCY_HEADER
from shared.logging import REQUEST_ID_HEADER
from shared.registry_client import RegistryClient

log = structlog.get_logger(__name__)

TRANSIENT_STATUSES = frozenset({401, 408, 425, 429})


@dataclass(frozen=True)
class Request:
    """One request to a participant: where it goes, what it carries, the key it is applied once under."""

    app: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    idempotency_key: str | None = None
    params: dict[str, str] | None = None
    label: str = ""  # as on metrics and logs: "make_payment:compensate", "catalogue"


@dataclass(frozen=True)
class CallResult:
    ok: bool
    refused: bool  # a final business refusal: the service did not apply the request
    status: int | None
    body: Any
    error: str | None  # why the call failed, or the last transient error before it succeeded
    attempts: int


class _Transient(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def _describe(status: int, body: Any) -> str:
    if isinstance(body, dict):
        parts = [str(body.get(k)) for k in ("title", "detail", "reason", "code") if body.get(k)]
        if parts:
            return f"{status} " + ": ".join(parts)
    return f"{status}"


def _is_transient(status: int, body: Any) -> bool:
    if status >= 500 or status in TRANSIENT_STATUSES:
        return True
    # The participant's idempotency layer: the request with this key is still being processed.
    return isinstance(body, dict) and body.get("type") == RequestInProgress.type_url()


def child_traceparent(traceparent: str) -> str:
    """A W3C traceparent for an outgoing call: same trace, new parent span."""
    parts = traceparent.split("-")
    trace_id = parts[1] if len(parts) == 4 and len(parts[1]) == 32 else secrets.token_hex(16)
    flags = parts[3] if len(parts) == 4 and len(parts[3]) == 2 else "01"
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


class StepClient:
    def __init__(self, session: aiohttp.ClientSession, registry: RegistryClient, tokens: ServiceTokens,
                 attempt_timeout_secs: float, retry_initial_secs: float, retry_max_secs: float) -> None:
        self.session = session
        self.registry = registry
        self.tokens = tokens
        self.attempt_timeout = attempt_timeout_secs
        self.retry_initial = retry_initial_secs
        self.retry_max = retry_max_secs

    def ready(self) -> bool:
        """Whether discovery has seen the participants yet (recovery waits for it after a start)."""
        return bool(self.registry.instances(ORDER))

    async def attempt(self, request: Request, trace: dict[str, str], timeout_secs: float,
                      not_found_is_done: bool = False) -> Answer:
        """One attempt, classified; never raises for HTTP trouble."""
        label = request.label
        try:
            status, payload = await self._attempt(request, trace, timeout_secs)
        except _Transient as exc:
            STEP_ATTEMPTS.labels(label, "transient").inc()
            return Answer(AnswerKind.TRANSIENT, None, None, exc.error)
        if 200 <= status < 300 or (status == 404 and not_found_is_done):
            STEP_ATTEMPTS.labels(label, "ok").inc()
            return Answer(AnswerKind.OK, status, payload, None)
        if _is_transient(status, payload):
            STEP_ATTEMPTS.labels(label, "transient").inc()
            return Answer(AnswerKind.TRANSIENT, status, payload, _describe(status, payload))
        STEP_ATTEMPTS.labels(label, "refused").inc()
        return Answer(AnswerKind.REFUSED, status, payload, _describe(status, payload))

    async def call(self, request: Request, trace: dict[str, str], deadline_secs: float) -> CallResult:
        """Attempt until an answer that is not transient, or until the deadline (backoff with full jitter)."""
        started = time.monotonic()

        async def once(remaining: float) -> Answer:
            return await self.attempt(request, trace, max(0.05, min(self.attempt_timeout, remaining)))

        def final(answer: Answer, attempts: int, last_error: str | None) -> CallResult:
            return CallResult(answer.kind == AnswerKind.OK, answer.kind == AnswerKind.REFUSED, answer.status,
                              answer.body, answer.error or last_error, attempts)

        # The usual case is right the first time: that attempt is made outside the retry machinery, which
        # costs ~50 µs a call to build and step through.
        first = await once(deadline_secs)
        if first.kind != AnswerKind.TRANSIENT:
            return final(first, 1, None)
        attempts, last_error = 1, first.error
        retrying = AsyncRetrying(
            # The deadline counts from the first attempt, made above; the backoff follows it.
            stop=stop_before_delay(max(0.0, deadline_secs - (time.monotonic() - started))),
            wait=wait_random_exponential(multiplier=self.retry_initial, max=self.retry_max),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        pending: _Transient | None = _Transient(last_error or "failed")
        try:
            async for attempt in retrying:
                with attempt:
                    if pending is not None:  # tenacity's first attempt stands for the one made above
                        error, pending = pending, None
                        raise error
                    attempts += 1
                    answer = await once(deadline_secs - (time.monotonic() - started))
                    if answer.kind == AnswerKind.TRANSIENT:
                        last_error = answer.error
                        raise _Transient(answer.error or "failed")
                    return final(answer, attempts, last_error)
        except _Transient as exc:
            return CallResult(False, False, None, None, f"gave up after {attempts} attempts: {exc.error}", attempts)
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _attempt(self, request: Request, trace: dict[str, str], seconds: float) -> tuple[int, Any]:
        app, method, path = request.app, request.method, request.path
        try:
            instance = self.registry.choose(app)
            # A fresh token is at hand nearly always; wait_for (a task of its own) only to fetch a new one.
            token = self.tokens.current() or await asyncio.wait_for(self.tokens.token(), seconds)
        except DomainError as exc:  # no UP instance, auth_service refusing or unreachable
            raise _Transient(f"{exc.status} {exc.detail}") from exc
        except Exception as exc:  # the token endpoint timed out or the connection failed
            raise _Transient(f"service token unavailable: {type(exc).__name__}") from exc
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            REQUEST_ID_HEADER: trace.get("request_id", ""),
            "traceparent": child_traceparent(trace.get("traceparent", "")),
        }
        if request.idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = request.idempotency_key
        url = f"{instance.base_url}{path}"
        try:
            async with self.session.request(method, url, json=request.body, headers=headers, params=request.params,
                                            timeout=aiohttp.ClientTimeout(total=seconds)) as response:
                raw = await response.read()
                status = response.status
        except TimeoutError as exc:
            raise _Transient(f"timeout after {seconds:.1f}s calling {app} {method} {path}") from exc
        except aiohttp.ClientError as exc:
            raise _Transient(f"{type(exc).__name__} calling {app} {method} {path}") from exc
        payload: Any = None
        if raw:
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"detail": raw[:200].decode(errors="replace")}
        return status, payload
