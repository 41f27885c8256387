"""inventory_service migrations: the compensation fence takes over the empty allocations that fenced orders."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

import inventory_service
from inventory_service.app import create_app
from inventory_service.settings import Settings
from shared.migrations import alembic_config
from tests.inprocess import ADMIN, SERVICE, running_app

BEFORE_FENCE = "1644c71754e4"
allocations = sa.table("allocations", sa.column("id"), sa.column("order_id"), sa.column("status"),
                       sa.column("currency"), sa.column("created_at"), sa.column("released_at"))



async def test_orders_released_before_the_fence_still_refuse_a_late_allocate(migrations_database_url: str) -> None:
    config = alembic_config(Path(inventory_service.__file__).parent, migrations_database_url)
    await asyncio.to_thread(command.upgrade, config, BEFORE_FENCE)
    engine = create_async_engine(migrations_database_url)
    now = datetime.now(UTC)
    async with engine.begin() as conn:  # the empty RELEASED allocation a release without stock used to leave
        await conn.execute(sa.insert(allocations), [{"id": "marker-1", "order_id": "old-released",
                                                     "status": "RELEASED", "currency": None, "created_at": now,
                                                     "released_at": now}])
    await engine.dispose()

    settings = Settings(database_url=migrations_database_url, eureka_server_url="")
    async with running_app(create_app, settings) as (_, client):  # upgrades to head on start
        product = {"sku": "MIG-1", "name": "Migrated", "unit_price_minor": 100, "currency": "EUR",
                   "weight_grams": 10, "on_hand": 5}
        assert (await client.post("/api/inventory/products", json=product, headers=ADMIN)).status_code == 201
        # The marker is gone: it was never an allocation.
        assert (await client.get("/api/inventory/allocations/old-released", headers=SERVICE)).status_code == 404
        lines = [{"sku": "MIG-1", "quantity": 1}]
        late = await client.post("/api/inventory/allocations", json={"order_id": "old-released", "lines": lines},
                                 headers=SERVICE)
        assert late.status_code == 409 and late.json()["code"] == "compensated", late.text
        fresh = await client.post("/api/inventory/allocations", json={"order_id": "new-order", "lines": lines},
                                  headers=SERVICE)
        assert fresh.status_code == 201, fresh.text
