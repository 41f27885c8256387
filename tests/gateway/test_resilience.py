"""Retries and circuit breakers: the policy and the breaker on their own, then a gateway against counting upstreams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from gateway.app import create_app
from gateway.resilience import Breakers, BreakerState, CircuitBreaker, may_resend, retry_on_status
from gateway.routes import Route
from tests.clock import Clock
from tests.fleet import METRICS_HEADERS
from tests.gateway.conftest import Instance, free_port, quiet_settings, serving

# ---------------------------------------------------------------- policy


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "get"])
def test_idempotent_methods_may_be_resent(method: str) -> None:
    assert may_resend(method, {})


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_post_and_patch_are_never_resent_without_an_idempotency_key(method: str) -> None:
    assert not may_resend(method, {})
    assert not may_resend(method, {"idempotency-key": "  "})
    assert may_resend(method, {"idempotency-key": "3f1c9a"})


def test_only_502_and_503_are_retried() -> None:
    assert [s for s in (200, 400, 404, 409, 429, 500, 501, 502, 503, 504) if retry_on_status(s)] == [502, 503]


# ---------------------------------------------------------------- breaker


def test_breaker_opens_after_consecutive_failures_only() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown_secs=5, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # a success in between starts the count again
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.available()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.available()
    assert breaker.retry_after_secs() == 5


def test_breaker_half_open_lets_one_trial_through_and_closes_on_success() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(threshold=1, cooldown_secs=5, clock=clock, on_change=changes.append)
    breaker.record_failure()
    clock.now += 4.9
    assert not breaker.available()
    clock.now += 0.2
    assert breaker.state is BreakerState.HALF_OPEN and breaker.available()
    breaker.begin()
    assert not breaker.available()  # one trial at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.available()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_breaker_trial_failure_opens_for_another_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown_secs=5, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 5
    breaker.begin()
    breaker.record_failure()  # one failure is enough when half-open
    assert breaker.state is BreakerState.OPEN and breaker.retry_after_secs() == 5


def test_breaker_ignores_late_answers_while_open_and_gives_up_a_lost_trial() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown_secs=5, clock=clock)
    breaker.record_failure()
    breaker.record_success()  # sent before it opened: says nothing about now
    assert breaker.state is BreakerState.OPEN
    clock.now += 5
    breaker.begin()  # this trial's client goes away and it never reports
    clock.now += 5
    assert breaker.available()


def test_a_trial_can_be_forced_before_the_cooldown_ends() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(threshold=1, cooldown_secs=3600, clock=clock, on_change=changes.append)
    assert breaker.opened_at == float("-inf")
    breaker.record_failure()
    opened = breaker.opened_at
    breaker.begin_trial()  # every other instance's breaker is open too: this one is tried at once
    assert breaker.state is BreakerState.HALF_OPEN and breaker.opened_at <= opened
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    breaker.record_failure()
    breaker.begin_trial()
    breaker.record_failure()  # the forced trial failed: open for a whole cool-down again
    assert breaker.state is BreakerState.OPEN and breaker.retry_after_secs() == 3600


def test_an_instance_that_registers_anew_starts_closed() -> None:
    clock = Clock()
    breakers = Breakers(threshold=1, cooldown_secs=3600, clock=clock)
    breaker = breakers.get("APP", "host:app:8000", registered_ms=1)
    breaker.record_failure()
    assert breakers.get("APP", "host:app:8000", registered_ms=1).state is BreakerState.OPEN
    assert breakers.get("APP", "host:app:8000").state is BreakerState.OPEN  # registration not known here
    # The same address registered again (a restart): a fresh start, not the old instance's cool-down.
    assert breakers.get("APP", "host:app:8000", registered_ms=2).state is BreakerState.CLOSED
    assert breakers.get("APP", "host:app:8000", registered_ms=2).available()


# ---------------------------------------------------------------- against a gateway


@dataclass
class Pair:
    url: str
    a: Instance
    b: Instance

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)

    def total(self, path: str) -> int:
        return self.a.count(path) + self.b.count(path)


@dataclass
class Upstreams:
    a: Instance
    a_url: str
    b: Instance
    b_url: str


@pytest.fixture(scope="module")
async def instances() -> AsyncIterator[Upstreams]:
    a, b = Instance("a"), Instance("b")
    async with serving(a.app()) as server_a, serving(b.app()) as server_b:
        yield Upstreams(a, server_a.url, b, server_b.url)


def _clear(upstreams: Upstreams) -> None:
    for instance in (upstreams.a, upstreams.b):
        instance.calls.clear()
        instance.plans.clear()
        instance.always.clear()


@pytest.fixture(scope="module")
async def retry_gateway(instances: Upstreams) -> AsyncIterator[str]:
    """Two instances behind one app; breakers out of the way (they have their own gateway below)."""
    settings = quiet_settings(
        routes=[Route(prefix="/api/retry", app="RETRY-SERVICE", public=True)],
        static_instances={"RETRY-SERVICE": [instances.a_url, instances.b_url]},
        breaker_failure_threshold=1000,
    )
    async with serving(create_app(settings)) as gateway:
        yield gateway.url


@pytest.fixture(scope="module")
def breaker_clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
async def breaker_gateway(instances: Upstreams, breaker_clock: Clock) -> AsyncIterator[str]:
    """Breakers that open after 3 failures in a row, for 0.5 s of `breaker_clock`."""
    settings = quiet_settings(
        routes=[Route(prefix="/api/breaker", app="BREAKER-SERVICE", public=True),
                Route(prefix="/api/lonely", app="LONELY-SERVICE", public=True)],
        static_instances={"BREAKER-SERVICE": [instances.a_url, instances.b_url],
                          "LONELY-SERVICE": [instances.a_url]},
        breaker_failure_threshold=3,
        breaker_cooldown_secs=0.5,
    )
    async with serving(create_app(settings, clock=breaker_clock)) as gateway:
        yield gateway.url


@pytest.fixture
def retry(instances: Upstreams, retry_gateway: str) -> Pair:
    _clear(instances)
    return Pair(retry_gateway, instances.a, instances.b)


@pytest.fixture
def breaker(instances: Upstreams, breaker_gateway: str) -> Pair:
    _clear(instances)
    return Pair(breaker_gateway, instances.a, instances.b)


async def test_get_answered_503_is_sent_to_the_other_instance(retry: Pair) -> None:
    path = "/api/retry/get-503"
    retry.a.always[path] = 503
    async with retry.client() as client:
        responses = [await client.get(path) for _ in range(2)]
    # Whatever a answered (503) went on to b: the client never saw it.
    assert [r.status_code for r in responses] == [200, 200]
    assert [r.json()["instance"] for r in responses] == ["b", "b"]
    assert retry.a.count(path) >= 1 and retry.b.count(path) == 2


async def test_retries_stop_when_every_instance_was_tried(retry: Pair) -> None:
    path = "/api/retry/all-502"
    retry.a.always[path] = retry.b.always[path] = 502
    async with retry.client() as client:
        response = await client.put(path, content=b"x" * 100)
    assert response.status_code == 502  # the upstream's own answer, passed on
    assert retry.a.count(path) == retry.b.count(path) == 1
    assert response.json()["body_size"] == 100  # the held body went out whole both times


async def test_post_without_idempotency_key_is_never_resent(retry: Pair) -> None:
    path = "/api/retry/post"
    retry.a.always[path] = retry.b.always[path] = 503
    async with retry.client() as client:
        for _ in range(4):
            response = await client.post(path, json={"n": 1})
            assert response.status_code == 503
    assert retry.total(path) == 4  # one upstream call per request


async def test_post_with_idempotency_key_is_resent_with_its_body(retry: Pair) -> None:
    path = "/api/retry/keyed"
    retry.a.always[path] = retry.b.always[path] = 503
    async with retry.client() as client:
        response = await client.post(path, json={"n": 1}, headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 503
    assert retry.a.count(path) == retry.b.count(path) == 1
    assert response.json()["body_size"] == len(b'{"n":1}')
    keys = [h.get("idempotency-key") for inst in (retry.a, retry.b) for _, p, h in inst.calls if p == path]
    assert keys == ["k-1", "k-1"]


async def test_large_or_chunked_bodies_are_streamed_and_not_resent(retry: Pair) -> None:
    path = "/api/retry/big-put"
    retry.a.always[path] = retry.b.always[path] = 503
    async with retry.client() as client:
        response = await client.put(path, content=b"x" * (65 * 1024))
    assert response.status_code == 503
    assert retry.total(path) == 1


@pytest.mark.parametrize("status", [500, 504, 429])
async def test_other_failures_are_not_retried(retry: Pair, status: int) -> None:
    path = f"/api/retry/status-{status}"
    retry.a.always[path] = retry.b.always[path] = status
    async with retry.client() as client:
        response = await client.get(path)
    assert response.status_code == status
    assert retry.total(path) == 1


def metric_lines(text: str, name: str, **labels: str) -> list[tuple[str, float]]:
    found = []
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            series, value = line.rsplit(" ", 1)
            found.append((series, float(value)))
    return found


async def test_breaker_opens_after_repeated_failures_and_closes_after_the_cooldown(
        breaker: Pair, breaker_clock: Clock) -> None:
    path = "/api/breaker/x"
    breaker.a.always[path] = 503
    async with breaker.client() as client:
        for _ in range(12):
            response = await client.get(path)
            assert response.status_code == 200  # b answered every time, directly or as the retry
        # Three failures opened a's breaker: after that the round robin skips it.
        assert breaker.a.count(path) == 3
        text = (await client.get("/metrics", headers=METRICS_HEADERS)).text
        states = dict(metric_lines(text, "gateway_circuit_breaker_state", app="BREAKER-SERVICE"))
        assert sorted(states.values()) == [0.0, 1.0], states
        assert [v for _, v in metric_lines(text, "gateway_circuit_breaker_opened_total",
                                           app="BREAKER-SERVICE")] == [1.0]
        assert metric_lines(text, "gateway_upstream_retries_total", app="BREAKER-SERVICE",
                            reason="status_503")[0][1] == 3.0
        # Healthy again: after the cool-down one trial request reaches a and closes the breaker.
        breaker.a.always.pop(path)
        breaker_clock.advance(0.6)
        for _ in range(6):
            assert (await client.get(path)).status_code == 200
        assert breaker.a.count(path) >= 5
        text = (await client.get("/metrics", headers=METRICS_HEADERS)).text
        states = dict(metric_lines(text, "gateway_circuit_breaker_state", app="BREAKER-SERVICE"))
        assert sorted(states.values()) == [0.0, 0.0], states


async def test_every_breaker_open_tries_the_instance_that_rested_longest(instances: Upstreams) -> None:
    # A cool-down far longer than the test: only the forced trial can reach the instance again.
    settings = quiet_settings(routes=[Route(prefix="/api/lonely", app="LONELY-SERVICE", public=True)],
                              static_instances={"LONELY-SERVICE": [instances.a_url]},
                              breaker_failure_threshold=3, breaker_cooldown_secs=3600)
    _clear(instances)
    path = "/api/lonely/x"
    instances.a.always[path] = 502
    async with serving(create_app(settings)) as gateway, httpx.AsyncClient(base_url=gateway.url) as client:
        statuses = [(await client.get(path)).status_code for _ in range(4)]
        # Its breaker opened after three; the fourth was its trial, and its answer is passed on, not a 503.
        assert statuses == [502, 502, 502, 502]
        assert instances.a.count(path) == 4
        instances.a.always.pop(path)  # it serves again: the next request is answered, no cool-down waited
        assert (await client.get(path)).status_code == 200
        text = (await client.get("/metrics", headers=METRICS_HEADERS)).text
        states = dict(metric_lines(text, "gateway_circuit_breaker_state", app="LONELY-SERVICE"))
        assert list(states.values()) == [0.0], states


async def test_refused_connection_fails_over_even_for_post() -> None:
    # Nothing was sent, so moving on is safe for any method (nginx's `proxy_next_upstream error`).
    live = Instance("live")
    async with serving(live.app()) as server:
        dead = f"http://127.0.0.1:{free_port()}"
        settings = quiet_settings(routes=[Route(prefix="/api/x", app="X-SERVICE", public=True)],
                                  static_instances={"X-SERVICE": [dead, server.url]})
        async with serving(create_app(settings)) as gateway, httpx.AsyncClient(base_url=gateway.url) as client:
            for _ in range(4):
                assert (await client.post("/api/x/y", json={})).status_code == 200
    assert live.count("/api/x/y") == 4
