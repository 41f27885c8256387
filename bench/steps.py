"""The data path's own figure: CPU and SQL statements per bare saga in the five step services, nothing else.

`python -m bench.steps [sagas] [concurrency]` runs the order, inventory, payment, carrier and shipment apps in
this process (their lifespans, migrations included, on fresh PostgreSQL databases `cs_steps_*`), and drives
the seven calls of a saga (create order, add lines, allocate, charge, assign carrier, create shipment,
confirm) with the saga's idempotency keys and a service token, straight over ASGI: no HTTP server, gateway,
orchestrator or event store. It prints the CPU of this process (services and the in-process client) and of
the PostgreSQL backends per saga, and the statements per saga from each service's `db_statements_total`.
The machine is shared, so the CPU time (not the wall time) is the figure; run it several times.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import psycopg

from bench.procstats import cpu_secs
from shared.db import DB_STATEMENTS
from tests.fleet import DB_SUFFIX, PG_ADMIN_DSN
from tests.inprocess import ADMIN, SERVICE, fresh_database_url, running_app

SERVICES = ("order_service", "inventory_service", "payment_service", "carrier_service", "shipment_service")
ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
SKU = "BENCH-STEP-1"


@asynccontextmanager
async def _service(package: str) -> AsyncIterator[httpx.AsyncClient]:
    app_module = __import__(f"{package}.app", fromlist=["create_app"])
    settings_module = __import__(f"{package}.settings", fromlist=["Settings"])
    create_app: Callable[[Any], Any] = app_module.create_app
    settings = settings_module.Settings(database_url=fresh_database_url(f"cs_steps_{package}"), eureka_server_url="",
                                        log_level="WARNING", db_pool_size=10)
    async with running_app(create_app, settings) as (_, client):
        yield client


def _backend_cpu() -> float:
    names = [f"cs_steps_{package}{DB_SUFFIX}" for package in SERVICES]
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        pids = [int(row[0]) for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s)", (names,)).fetchall()]
    return sum(cpu_secs(pid) for pid in pids)


async def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


async def saga(clients: dict[str, httpx.AsyncClient]) -> None:
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    saga_id = str(uuid.uuid4())

    def key(step: str) -> dict[str, str]:
        return {**SERVICE, "Idempotency-Key": f"{saga_id}:{step}"}

    order = await _ok(await clients["order_service"].post("/api/orders", headers=key("create_order"), json={
        "customer_id": customer, "currency": "EUR", "shipping_address": ADDRESS}))
    order_id = order["id"]
    await _ok(await clients["order_service"].post(f"/api/orders/{order_id}/lines", headers=key("add_lines"), json={
        "lines": [{"sku": SKU, "quantity": 1, "unit_price_minor": 1250}]}))
    await _ok(await clients["inventory_service"].post("/api/inventory/allocations", headers=key("allocate"), json={
        "order_id": order_id, "lines": [{"sku": SKU, "quantity": 1}]}))
    await _ok(await clients["payment_service"].post("/api/payments", headers=key("pay"), json={
        "order_id": order_id, "customer_id": customer, "amount_minor": 1250, "currency": "EUR",
        "payment_token": "tok_visa"}))
    assigned = await _ok(await clients["carrier_service"].post("/api/carriers/assignments", headers=key("carrier"),
                                                              json={"order_id": order_id, "country": "DE",
                                                                    "weight_grams": 300}))
    await _ok(await clients["shipment_service"].post("/api/shipments", headers=key("ship"), json={
        "order_id": order_id, "customer_id": customer, "carrier_code": assigned["carrier_code"],
        "address": ADDRESS}))
    await _ok(await clients["order_service"].post(f"/api/orders/{order_id}/confirm", headers=key("confirm")))


async def run(sagas: int, concurrency: int) -> dict[str, float]:
    async with AsyncExitStack() as stack:
        clients = {p: await stack.enter_async_context(_service(p)) for p in SERVICES}
        await _ok(await clients["inventory_service"].post("/api/inventory/products", headers=ADMIN, json={
            "sku": SKU, "name": "bench", "unit_price_minor": 1250, "weight_grams": 300, "on_hand": 10_000_000}))
        await _ok(await clients["carrier_service"].post("/api/carriers", headers=ADMIN, json={
            "code": "BENCH", "name": "bench", "countries": ["DE"], "max_weight_grams": 30_000,
            "daily_capacity": 1_000_000, "base_price_minor": 500, "price_per_kg_minor": 100}))

        async def worker(count: int) -> None:
            for _ in range(count):
                await saga(clients)

        await asyncio.gather(*(worker(5) for _ in range(concurrency)))  # warm-up: connections, prepared statements
        statements, process, backends = DB_STATEMENTS._value.get(), time.process_time(), _backend_cpu()
        await asyncio.gather(*(worker(sagas // concurrency) for _ in range(concurrency)))
        done = sagas // concurrency * concurrency
        return {"process_cpu_ms": (time.process_time() - process) * 1000 / done,
                "postgres_cpu_ms": (_backend_cpu() - backends) * 1000 / done,
                "statements": (DB_STATEMENTS._value.get() - statements) / done}


def main() -> None:
    sagas = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    figures = asyncio.run(run(sagas, concurrency))
    total = figures["process_cpu_ms"] + figures["postgres_cpu_ms"]
    print(f"{sagas} bare sagas, {concurrency} at once, load {os.getloadavg()[0]:.1f}: "
          f"CPU ms per saga {total:.2f} (services and client {figures['process_cpu_ms']:.2f}, "
          f"PostgreSQL {figures['postgres_cpu_ms']:.2f}), SQL statements per saga {figures['statements']:.1f}")


if __name__ == "__main__":
    main()
