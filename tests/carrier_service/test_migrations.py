"""carrier_service migrations: the daily load counters start from the assignments made before them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import create_async_engine

import carrier_service
from carrier_service import service
from carrier_service.app import create_app
from carrier_service.settings import Settings
from shared.migrations import alembic_config
from tests.inprocess import SERVICE, running_app

BEFORE_COUNTERS = "34475acccd40"


def carrier(code: str, capacity: int) -> dict:
    now = datetime.now(UTC)
    return {"id": str(uuid.uuid4()), "code": code, "name": code, "max_weight_grams": 30_000,
            "daily_capacity": capacity, "base_price_minor": 100, "price_per_kg_minor": 0, "currency": "EUR",
            "active": True, "created_at": now, "updated_at": now}


def assignment(carrier_row: dict, day: object, status: str = "ASSIGNED") -> dict:
    return {"id": str(uuid.uuid4()), "order_id": f"old-{uuid.uuid4().hex[:8]}", "carrier_id": carrier_row["id"],
            "carrier_code": carrier_row["code"], "country": "DE", "weight_grams": 100, "price_minor": 100,
            "currency": "EUR", "status": status, "service_day": day, "created_at": datetime.now(UTC)}



async def test_upgrade_counts_the_assignments_made_before_it(migrations_database_url: str) -> None:
    config = alembic_config(Path(carrier_service.__file__).parent, migrations_database_url)
    await asyncio.to_thread(command.upgrade, config, BEFORE_COUNTERS)
    today = service.utc_today()
    cheap, dear = carrier("CHEAP", 3), carrier("DEAR", 1)
    cheap["base_price_minor"], dear["base_price_minor"] = 100, 900
    engine = create_async_engine(migrations_database_url)
    async with engine.begin() as conn:
        await conn.execute(insert(service.carriers), [cheap, dear])
        await conn.execute(insert(service.carrier_countries), [{"carrier_id": cheap["id"], "country": "DE"},
                                                               {"carrier_id": dear["id"], "country": "DE"}])
        await conn.execute(insert(service.assignments), [
            assignment(cheap, today), assignment(cheap, today), assignment(cheap, today, "RELEASED"),
            assignment(cheap, today - timedelta(days=1)), assignment(dear, today - timedelta(days=1)),
        ])
    await engine.dispose()

    settings = Settings(database_url=migrations_database_url, eureka_server_url="")
    async with running_app(create_app, settings) as (app, client):  # upgrades to head on start
        async with app.state.db.transaction() as tx:
            rows = await tx.fetch(select(service.loads))
        counters = {(row["carrier_id"], row["day"]): row["assigned"] for row in rows}
        assert counters == {(cheap["id"], today): 2, (cheap["id"], today - timedelta(days=1)): 1,
                            (dear["id"], today - timedelta(days=1)): 1}

        body = {"country": "DE", "weight_grams": 100}
        codes = [(await client.post("/api/carriers/assignments", json={**body, "order_id": f"new-{i}"},
                                    headers=SERVICE)).json().get("carrier_code", "full") for i in range(3)]
        # CHEAP had two of its three places taken today before the upgrade; yesterday's do not count.
        assert codes == ["CHEAP", "DEAR", "full"]
        released = await client.post("/api/carriers/assignments/new-0/release", headers=SERVICE)
        assert released.json()["status"] == "RELEASED"
        again = await client.post("/api/carriers/assignments", json={**body, "order_id": "new-3"}, headers=SERVICE)
        assert again.json()["carrier_code"] == "CHEAP"
