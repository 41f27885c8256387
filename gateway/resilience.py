"""Resilience of upstream calls: which requests may be sent again, and a circuit breaker per instance.

The breaker is hand-written (about sixty lines) rather than purgatory or pybreaker: the gateway must ask
"may this instance be chosen?" *before* picking one, without making a call, and record outcomes that are
HTTP statuses rather than exceptions. purgatory only answers by raising on entry to its async context
manager, with an awaited storage round trip per call; pybreaker's async support is Tornado's. Neither can
skip an open instance during selection, which is what keeps a broken replica out of the round robin.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterable, Mapping

# RFC 9110 §9.2.2: a repeat has the same effect as one request.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Made safe to repeat by the Idempotency-Key header (IETF draft), which the services honour.
KEYED_METHODS = frozenset({"POST", "PATCH"})
IDEMPOTENCY_KEY = "idempotency-key"
# Answers that say "this instance could not serve it" rather than "the request is wrong".
RETRY_STATUSES = frozenset({502, 503})


def may_resend(method: str, headers: Mapping[str, str]) -> bool:
    """Whether a request that may have reached an upstream can be sent again to another instance.

    A request that never left (the connection was refused) is not covered: nothing was sent, so any method
    moves on to another instance, as nginx does with `proxy_next_upstream error`.
    """
    method = method.upper()
    if method in IDEMPOTENT_METHODS:
        return True
    return method in KEYED_METHODS and bool(headers.get(IDEMPOTENCY_KEY, "").strip())


def retry_on_status(status: int) -> bool:
    """502/503 only: a 500 may have done half the work; a 504 took the whole timeout already."""
    return status in RETRY_STATUSES


class BreakerState(enum.IntEnum):
    """Values as exported on gateway_circuit_breaker_state (resilience4j's order)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Consecutive failures open it; after the cool-down one trial request is let through (half-open).

    The trial's success closes it, its failure opens it for another cool-down. A trial that never reports
    (its client went away) is given up after one more cool-down, so the breaker cannot stick half-open.
    """

    def __init__(
        self,
        threshold: int,
        cooldown_secs: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.cooldown_secs = cooldown_secs
        self._clock = clock
        self._on_change = on_change
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_started: float | None = None

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self.cooldown_secs:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def available(self) -> bool:
        """May a request be sent now (closed, or half-open with no trial under way)?"""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        return self._trial_started is None or self._clock() - self._trial_started >= self.cooldown_secs

    def begin(self) -> None:
        """A request is being sent; when half-open, it is the trial."""
        if self._opened_at is not None and self.state is BreakerState.HALF_OPEN:
            self._trial_started = self._clock()
            self._notify(BreakerState.HALF_OPEN)

    def begin_trial(self) -> None:
        """Half-open now, before the cool-down ends, with this request as the trial: the caller has no
        instance left whose breaker is closed, so refusing would answer for an instance that may serve."""
        if self._opened_at is None:
            return
        self._opened_at = min(self._opened_at, self._clock() - self.cooldown_secs)
        self._trial_started = self._clock()
        self._notify(BreakerState.HALF_OPEN)

    @property
    def opened_at(self) -> float:
        """When it last opened (-inf when closed): the instance that rested longest is tried first."""
        return -math.inf if self._opened_at is None else self._opened_at

    def record_success(self) -> None:
        if self._opened_at is not None and self.state is BreakerState.OPEN:
            return  # an answer to a request sent before it opened says nothing about now
        self._failures = 0
        if self._opened_at is not None:
            self._opened_at = self._trial_started = None
            self._notify(BreakerState.CLOSED)

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.OPEN:
            return
        self._failures += 1
        if state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
            self._opened_at, self._trial_started = self._clock(), None
            self._notify(BreakerState.OPEN)

    def reset(self) -> None:
        """Closed, with no failures counted: the instance registered anew (a restart), a fresh start."""
        self._failures = 0
        if self._opened_at is not None:
            self._opened_at = self._trial_started = None
            self._notify(BreakerState.CLOSED)

    def retry_after_secs(self) -> int:
        """Whole seconds until a trial may be sent (0 when one may be sent now)."""
        if self._opened_at is None:
            return 0
        return max(0, math.ceil(self._opened_at + self.cooldown_secs - self._clock()))

    def _notify(self, state: BreakerState) -> None:
        if self._on_change is not None:
            self._on_change(state)


class Breakers:
    """One breaker per (app, instance); breakers of instances that left the registry are dropped, and an
    instance that (re-)registered since its breaker was made gets a new, closed one."""

    def __init__(
        self,
        threshold: int,
        cooldown_secs: float,
        on_change: Callable[[str, str, BreakerState], None] | None = None,
        on_create: Callable[[str, str], None] | None = None,
        on_drop: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown_secs = cooldown_secs
        self._on_change = on_change
        self._on_create = on_create
        self._on_drop = on_drop
        self._clock = clock
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._registered: dict[tuple[str, str], int] = {}

    def get(self, app: str, instance_id: str, registered_ms: int | None = None) -> CircuitBreaker:
        """`registered_ms`: the instance's registration as the registry now shows it (None: not known here)."""
        key = (app, instance_id)
        breaker = self._breakers.get(key)
        renewed = registered_ms is not None and self._registered.get(key, registered_ms) != registered_ms
        if registered_ms is not None:
            self._registered[key] = registered_ms
        if breaker is not None and renewed and breaker.state is not BreakerState.CLOSED:
            breaker.reset()
        if breaker is None:
            on_change = self._on_change
            notify = (lambda state: on_change(app, instance_id, state)) if on_change is not None else None
            breaker = self._breakers[key] = CircuitBreaker(self.threshold, self.cooldown_secs, self._clock, notify)
            if self._on_create is not None:
                self._on_create(app, instance_id)
        return breaker

    def prune(self, app: str, live_instance_ids: Iterable[str]) -> None:
        live = set(live_instance_ids)
        for key in [k for k in self._breakers if k[0] == app and k[1] not in live]:
            del self._breakers[key]
            self._registered.pop(key, None)
            if self._on_drop is not None:
                self._on_drop(*key)
