"""`python -m carrier_service.seed`: migrate, then upsert the demo carriers by code (safe to run again)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import bindparam, select

from carrier_service import service
from carrier_service.schemas import CarrierCreate, CarrierUpdate
from carrier_service.service import carriers
from carrier_service.settings import Settings
from shared.db import Database, Tx
from shared.logging import configure_logging
from shared.migrations import upgrade_to_head

log = structlog.get_logger(__name__)

EU = ["AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT", "LT", "LU",
      "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK"]

DEMO_CARRIERS: list[dict[str, Any]] = [
    {"code": "DHL", "name": "DHL Parcel", "countries": [*EU, "US"], "max_weight_grams": 31_500,
     "daily_capacity": 500, "base_price_minor": 599, "price_per_kg_minor": 120, "currency": "EUR"},
    {"code": "DPD", "name": "DPD Classic", "countries": EU, "max_weight_grams": 20_000,
     "daily_capacity": 300, "base_price_minor": 449, "price_per_kg_minor": 150, "currency": "EUR"},
    {"code": "GLS", "name": "GLS Business Parcel", "countries": ["AT", "BE", "DE", "DK", "FR", "LU", "NL", "PL"],
     "max_weight_grams": 40_000, "daily_capacity": 200, "base_price_minor": 499, "price_per_kg_minor": 90,
     "currency": "EUR"},
    {"code": "UPS", "name": "UPS Standard", "countries": [*EU, "US"], "max_weight_grams": 70_000,
     "daily_capacity": 400, "base_price_minor": 899, "price_per_kg_minor": 80, "currency": "EUR"},
    {"code": "USPS", "name": "USPS Priority Mail", "countries": ["US"], "max_weight_grams": 31_750,
     "daily_capacity": 1_000, "base_price_minor": 395, "price_per_kg_minor": 110, "currency": "EUR"},
]


_BY_CODE = select(carriers.c.id).where(carriers.c.code == bindparam("w_code")).with_for_update()


async def upsert_carriers(tx: Tx, specs: list[dict[str, Any]]) -> tuple[int, int]:
    """Insert missing carriers and bring existing ones (matched by code) to the given values, through the
    service layer's own rules."""
    created = updated = 0
    for spec in specs:
        carrier_id = await tx.fetchval(_BY_CODE, {"w_code": spec["code"]})
        if carrier_id is None:
            await service.create_carrier(tx, CarrierCreate(**spec, active=True))
            created += 1
        else:
            fields = {k: v for k, v in spec.items() if k != "code"}
            await service.update_carrier(tx, carrier_id, CarrierUpdate(**fields, active=True))
            updated += 1
    return created, updated


async def seed(settings: Settings) -> None:
    db = Database(settings.database_url, pool_size=1)  # first: it creates the SQLite file's folder
    try:
        await asyncio.to_thread(upgrade_to_head, Path(__file__).parent, settings.database_url)
        async with db.transaction() as tx:
            created, updated = await upsert_carriers(tx, DEMO_CARRIERS)
    finally:
        await db.dispose()
    log.info("demo carriers seeded", created=created, updated=updated)


def main() -> None:
    settings = Settings()
    configure_logging("carrier-service-seed", settings.log_level, settings.log_json)
    asyncio.run(seed(settings))


if __name__ == "__main__":
    main()
