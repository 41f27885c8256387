"""The event store's own ceiling: saga aggregates saved through `SagaStore` (the orchestrator's code, its
thread pool and settings) with no HTTP around them, on a database of its own.

Each simulated saga is driven by the saga's rules (`core.advance`) with every step answered 2xx at once,
and saved as the runner saves: the start with the first attempt, each step's success with the next
step's start and attempt, then completion (8 saves). `concurrency` sagas run at once, as many as the
orchestrator drives.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

from bench.stack import POSTGRES
from saga_orchestrator import core
from saga_orchestrator.domain import Saga
from saga_orchestrator.event_store import SagaStore
from saga_orchestrator.runner import policy
from saga_orchestrator.settings import Settings
from saga_orchestrator.steps import CURRENT
from shared.db import utc_now

DATABASE = "cs_bench_event_store"


def _start_request(n: int) -> dict[str, Any]:
    return {
        "definition_version": CURRENT.version, "customer_id": f"bench-{n}", "idempotency_key": str(uuid.uuid4()),
        "fingerprint": "0" * 64,
        "lines": [{"sku": "BENCH-1", "quantity": 1, "unit_price_minor": 1000, "weight_grams": 200}],
        "currency": "EUR", "total_minor": 1000, "total_weight_grams": 200,
        "shipping_address": {"name": "Bench", "line1": "1 Bench St", "city": "Benchtown", "postal_code": "10000",
                             "country": "DE"},
        "payment_token": "tok_visa", "trace": {"request_id": "bench", "traceparent": ""},
    }


RULES = policy(Settings(eureka_server_url=""))
ANSWERS = {"create_order": {"id": "o-1"}, "assign_carrier": {"carrier_code": "DHL"}}


async def _one_saga(store: SagaStore, n: int) -> int:
    """One completed saga's transitions, each saved as the runner saves them; returns the number of saves."""
    saga = Saga(**_start_request(n))
    saga.start_step(CURRENT.first().step)
    action = core.advance(saga, CURRENT, RULES, utc_now())
    saves = 0
    while True:
        await store.save(saga)
        saves += 1
        if not isinstance(action, core.Call):
            return saves
        answer = core.Answer(core.AnswerKind.OK, 200, ANSWERS.get(action.step, {}))
        action = core.advance(saga, CURRENT, RULES, utc_now(), answer)


async def measure(concurrency: int, seconds: float, store: SagaStore) -> dict[str, float]:
    saves = sagas = 0
    stop_at = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal saves, sagas
        n = 0
        while time.monotonic() < stop_at:
            done = await _one_saga(store, w * 1_000_000 + n)
            saves += done  # after the await: `saves += await ...` would add to a stale value
            sagas += 1
            n += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.monotonic() - started
    return {"concurrency": concurrency, "saves_per_sec": round(saves / elapsed, 1),
            "sagas_per_sec": round(sagas / elapsed, 1), "saves_per_saga": round(saves / max(sagas, 1), 2),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


async def run(levels: list[int], seconds: float) -> list[dict[str, float]]:
    POSTGRES.recreate_databases([DATABASE])
    settings = Settings(database_url=POSTGRES.url(DATABASE), eureka_server_url="")
    store = SagaStore(settings.database_url, settings.event_store_threads)
    await store.open()
    try:
        await measure(levels[0], min(2.0, seconds), store)  # warm-up: pool connections, statements prepared
        return [await measure(level, seconds, store) for level in levels]
    finally:
        await store.close()
