"""The load generator: closed-loop clients on keep-alive aiohttp connections, latencies in milliseconds.

Each of `concurrency` clients runs `one()` back to back until the phase's time is up; a call that
returns False (or raises) counts as a failure. A warm-up of the same shape runs first and is not
counted (connections opened, caches and code paths hot).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Call = Callable[[int], Awaitable[bool]]  # argument: the client's number; True when the call succeeded


@dataclass
class Figures:
    name: str
    concurrency: int
    seconds: float
    completed: int
    failures: int
    per_sec: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    loadavg: tuple[float, float, float]
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def closed_loop(name: str, one: Call, concurrency: int, seconds: float, warmup_secs: float,
                      errors: list[str] | None = None) -> Figures:
    """Run `concurrency` clients for `seconds` (after `warmup_secs` of the same load) and report."""
    latencies: list[float] = []
    failures = 0
    counting = False
    stop_at = 0.0

    async def client(number: int) -> None:
        nonlocal failures
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                ok = await one(number)
            except Exception as exc:  # a broken call is a failure of the system under test, not of the bench
                ok = False
                if errors is not None and len(errors) < 20:
                    errors.append(f"{name}: {exc!r}")
            elapsed = time.perf_counter() - started
            if counting:
                latencies.append(elapsed * 1000)
                failures += not ok

    if warmup_secs > 0:
        stop_at = time.monotonic() + warmup_secs
        await asyncio.gather(*(client(i) for i in range(concurrency)))
    counting = True
    started = time.monotonic()
    stop_at = started + seconds
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()
    completed = len(latencies) - failures
    return Figures(
        name=name, concurrency=concurrency, seconds=round(elapsed, 2), completed=completed, failures=failures,
        per_sec=round(completed / elapsed, 1), p50_ms=round(percentile(latencies, 50), 1),
        p95_ms=round(percentile(latencies, 95), 1), p99_ms=round(percentile(latencies, 99), 1),
        max_ms=round(latencies[-1], 1) if latencies else 0.0, loadavg=os.getloadavg())
