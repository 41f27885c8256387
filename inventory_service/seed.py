"""`python -m inventory_service.seed`: load the demo catalogue into DATABASE_URL (safe to run again)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import make_url

from inventory_service.service import emit_product_created, emit_product_updated, products
from inventory_service.settings import Settings
from shared.db import Database
from shared.logging import configure_logging
from shared.migrations import upgrade_to_head

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SeedProduct:
    sku: str
    name: str
    unit_price_minor: int  # euro cents
    weight_grams: int
    on_hand: int


CATALOGUE = (
    SeedProduct("KB-MECH-87", "Tenkeyless mechanical keyboard, brown switches", 8999, 920, 120),
    SeedProduct("MS-WL-02", "Wireless ergonomic mouse", 3499, 110, 300),
    SeedProduct("MON-27-QHD", "27-inch QHD IPS monitor", 27900, 6400, 35),
    SeedProduct("HP-ANC-300", "Over-ear noise-cancelling headphones", 19950, 255, 80),
    SeedProduct("CAB-USBC-2M", "USB-C to USB-C cable, 2 m, 100 W", 1299, 60, 1000),
    SeedProduct("DOCK-USBC-11", "USB-C docking station, 11 ports", 12900, 480, 60),
    SeedProduct("CHAIR-ERGO-1", "Ergonomic office chair, mesh back", 34900, 18500, 15),
    SeedProduct("DESK-LAMP-LED", "LED desk lamp with dimmer", 4590, 1300, 150),
    SeedProduct("NB-A5-DOT", "A5 dotted notebook, 192 pages", 1450, 340, 500),
    SeedProduct("MUG-CER-350", "Ceramic mug, 350 ml", 990, 380, 400),
    SeedProduct("BAG-LAP-15", "15-inch laptop backpack", 6990, 1150, 90),
    SeedProduct("SSD-EXT-1TB", "Portable SSD, 1 TB, USB 3.2", 10990, 58, 200),
)


_CATALOGUE_FIELDS = update(products).where(products.c.sku == bindparam("w_sku"))
_FIELDS = ("name", "unit_price_minor", "currency", "weight_grams")


async def seed_catalogue(db: Database, catalogue: tuple[SeedProduct, ...] = CATALOGUE) -> tuple[int, int]:
    """Upsert by sku: new products get their stock; existing ones whose catalogue fields differ get the seed's.

    Stock of an existing product is left alone, so seeding again never breaks reserved <= on_hand. Each product
    created or changed is an event (shared/bus.py), as through the API; a product already as seeded is left
    alone, so seeding again writes nothing. Returns (created, updated).
    """
    async with db.transaction() as tx:
        existing = {row["sku"]: row for row in await tx.fetch(
            select(products.c.sku, *(products.c[field] for field in _FIELDS))
            .where(products.c.sku.in_([item.sku for item in catalogue])).with_for_update())}
        seeded = {item.sku: {"sku": item.sku, "name": item.name, "unit_price_minor": item.unit_price_minor,
                             "currency": "EUR", "weight_grams": item.weight_grams} for item in catalogue}
        new = [{**seeded[item.sku], "on_hand": item.on_hand, "reserved": 0}
               for item in catalogue if item.sku not in existing]
        changed = [seeded[sku] for sku, row in existing.items()
                   if any(row[field] != seeded[sku][field] for field in _FIELDS)]
        await tx.executemany(insert(products), new)
        await tx.executemany(_CATALOGUE_FIELDS, [
            {"w_sku": product["sku"], **{field: product[field] for field in _FIELDS}} for product in changed])
        for product in new:
            await emit_product_created(tx, product)
        for product in changed:
            await emit_product_updated(tx, product)
    return len(new), len(changed)


async def _seed(database_url: str) -> tuple[int, int]:
    db = Database(database_url)
    try:
        return await seed_catalogue(db)
    finally:
        await db.dispose()


def main() -> None:
    settings = Settings()
    configure_logging("inventory_service", settings.log_level, settings.log_json)
    upgrade_to_head(Path(__file__).parent, settings.database_url)
    created, updated = asyncio.run(_seed(settings.database_url))
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    log.info("catalogue seeded", created=created, updated=updated, database=database)


if __name__ == "__main__":
    main()
