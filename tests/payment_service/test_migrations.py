"""payment_service migrations: the compensation fence takes over the orders settled before it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

import payment_service
from payment_service.app import create_app
from payment_service.settings import Settings
from shared.migrations import alembic_config
from tests.inprocess import SERVICE, running_app

BEFORE_FENCE = "8d94524e8a35"
settled_orders = sa.table("settled_orders", sa.column("order_id"), sa.column("claimed_by"), sa.column("created_at"))



async def test_orders_compensated_before_the_fence_still_refuse_a_late_charge(migrations_database_url: str) -> None:
    config = alembic_config(Path(payment_service.__file__).parent, migrations_database_url)
    await asyncio.to_thread(command.upgrade, config, BEFORE_FENCE)
    engine = create_async_engine(migrations_database_url)
    async with engine.begin() as conn:
        await conn.execute(sa.insert(settled_orders), [
            {"order_id": "old-compensated", "claimed_by": "COMPENSATION", "created_at": datetime.now(UTC)}])
    await engine.dispose()

    settings = Settings(database_url=migrations_database_url, eureka_server_url="")
    async with running_app(create_app, settings) as (_, client):  # upgrades to head on start
        body = {"customer_id": "cust-1", "amount_minor": 500, "currency": "EUR", "payment_token": "tok_visa"}
        late = await client.post("/api/payments", json={**body, "order_id": "old-compensated"}, headers=SERVICE)
        assert late.status_code == 409 and late.json()["code"] == "compensated", late.text
        fresh = await client.post("/api/payments", json={**body, "order_id": "new-order"}, headers=SERVICE)
        assert fresh.status_code == 201, fresh.text
