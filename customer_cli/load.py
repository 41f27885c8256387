"""A load run: N orders placed C at a time through the gateway, each followed to its end; outcomes and latencies."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from customer_cli.gateway_client import SAGAS, bearer, order_headers
from customer_cli.orders import TERMINAL

# What an order that did not reach a saga outcome counts as.
ERROR = "ERROR"
OUTCOMES = ("COMPLETED", "COMPENSATED", "COMPENSATION_FAILED", ERROR)


@dataclass(frozen=True)
class LoadPlan:
    gateway_url: str
    token: str
    bodies: list[dict[str, Any]]  # one per order
    concurrency: int
    wait_secs: int = 30  # `Prefer: wait=N`: the answer comes with the outcome when it is quick
    timeout_secs: float = 120  # one order, placing to outcome


@dataclass(frozen=True)
class OrderResult:
    outcome: str  # a terminal saga status, or ERROR
    latency_secs: float  # from sending the order to seeing its outcome
    saga_id: str | None = None
    error: str | None = None


@dataclass
class LoadReport:
    results: list[OrderResult] = field(default_factory=list)
    wall_secs: float = 0.0

    @property
    def counts(self) -> Counter[str]:
        return Counter(r.outcome for r in self.results)

    @property
    def throughput(self) -> float:
        """Orders brought to an outcome (any saga outcome, not errors) per second of the run."""
        finished = sum(1 for r in self.results if r.outcome != ERROR)
        return finished / self.wall_secs if self.wall_secs > 0 else 0.0

    def latencies(self, outcome: str | None = None) -> list[float]:
        return sorted(r.latency_secs for r in self.results
                      if r.outcome != ERROR and (outcome is None or r.outcome == outcome))

    def errors(self) -> list[str]:
        return [r.error or "unknown error" for r in self.results if r.outcome == ERROR]


def percentile(ordered: list[float], p: float) -> float | None:
    """The p-th percentile (0-100) of sorted values, linearly interpolated between the nearest ranks."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def _place_and_follow(client: httpx.AsyncClient, plan: LoadPlan, body: dict[str, Any]) -> OrderResult:
    started = time.perf_counter()
    deadline = started + plan.timeout_secs
    saga_id = None
    try:
        response = await client.post(SAGAS, json=body, headers=order_headers(plan.token, wait_secs=plan.wait_secs))
        if response.status_code not in (200, 202):
            return OrderResult(ERROR, time.perf_counter() - started,
                               error=f"POST {SAGAS}: {response.status_code} {response.text[:200]}")
        saga = response.json()
        saga_id = str(saga["saga_id"])
        while saga["status"] not in TERMINAL:
            if time.perf_counter() > deadline:
                return OrderResult(ERROR, time.perf_counter() - started, saga_id,
                                   f"saga {saga_id} still {saga['status']} after {plan.timeout_secs:.0f}s")
            await asyncio.sleep(0.1)
            response = await client.get(f"{SAGAS}/{saga_id}", headers=bearer(plan.token))
            if response.status_code != 200:
                return OrderResult(ERROR, time.perf_counter() - started, saga_id,
                                   f"GET saga: {response.status_code} {response.text[:200]}")
            saga = response.json()
        return OrderResult(str(saga["status"]), time.perf_counter() - started, saga_id)
    except httpx.HTTPError as exc:
        return OrderResult(ERROR, time.perf_counter() - started, saga_id, f"{type(exc).__name__}: {exc}")


async def run_load(plan: LoadPlan, on_result: Callable[[OrderResult], None] = lambda _: None) -> LoadReport:
    """Place every order of the plan, at most `concurrency` at a time; `on_result` hears of each as it ends."""
    report = LoadReport()
    pending = iter(plan.bodies)
    limits = httpx.Limits(max_connections=plan.concurrency * 2, max_keepalive_connections=plan.concurrency * 2)
    timeout = httpx.Timeout(plan.wait_secs + 30, connect=10)

    async with httpx.AsyncClient(base_url=plan.gateway_url, limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            for body in pending:  # one shared iterator: each order is taken by exactly one worker
                result = await _place_and_follow(client, plan, body)
                report.results.append(result)
                on_result(result)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(max(1, plan.concurrency))))
        report.wall_secs = time.perf_counter() - started
    return report
