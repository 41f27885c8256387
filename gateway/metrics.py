"""The gateway's own Prometheus metrics (served on /metrics with the shared request metrics)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from gateway.resilience import BreakerState

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

UPSTREAM_LATENCY = Histogram(
    "gateway_upstream_request_duration_seconds",
    "One attempt at an upstream, until its response headers; outcome is the status or connect_error/timeout/error",
    ["app", "outcome"],
    buckets=_BUCKETS,
)
UPSTREAM_RETRIES = Counter(
    "gateway_upstream_retries_total",
    "Requests sent again to another instance, by reason (connect_error, disconnected, status_502, status_503)",
    ["app", "reason"],
)
BREAKER_STATE = Gauge(
    "gateway_circuit_breaker_state", "Circuit breaker per instance: 0 closed, 1 open, 2 half-open", ["app", "instance"]
)
BREAKER_OPENED = Counter("gateway_circuit_breaker_opened_total", "Times a breaker opened", ["app", "instance"])
VALIDATE_LATENCY = Histogram(
    "gateway_validate_duration_seconds",
    "Forward-auth round trip to /validate; outcome pass, refused (auth's own answer) or error",
    ["outcome"],
    buckets=_BUCKETS,
)
RATE_LIMITED = Counter("gateway_rate_limited_total", "Requests refused with 429, by limit", ["limit"])


# Children of the per-request metrics, kept: labels() takes a lock and builds a key on every call.
_latency: dict[tuple[str, str], Any] = {}
_validate: dict[str, Any] = {}


def observe_upstream(app: str, outcome: str, seconds: float) -> None:
    child = _latency.get((app, outcome))
    if child is None:
        child = _latency[(app, outcome)] = UPSTREAM_LATENCY.labels(app, outcome)
    child.observe(seconds)


def observe_validate(outcome: str, seconds: float) -> None:
    child = _validate.get(outcome)
    if child is None:
        child = _validate[outcome] = VALIDATE_LATENCY.labels(outcome)
    child.observe(seconds)


def breaker_created(app: str, instance: str) -> None:
    BREAKER_STATE.labels(app, instance).set(int(BreakerState.CLOSED))


def breaker_changed(app: str, instance: str, state: BreakerState) -> None:
    BREAKER_STATE.labels(app, instance).set(int(state))
    if state is BreakerState.OPEN:
        BREAKER_OPENED.labels(app, instance).inc()


def breaker_dropped(app: str, instance: str) -> None:
    for metric in (BREAKER_STATE, BREAKER_OPENED):
        try:
            metric.remove(app, instance)
        except KeyError:
            pass
