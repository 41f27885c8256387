"""The inbox stays bounded: rows older than the stream keeps events go, the others stay (an injected clock)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from order_service import models as order_models
from shared.bus import EVENTS_MAX_AGE, Bus, BusConfig, InboxPruner, inbox, prune_inbox
from shared.db import Database, utc_now
from shared.migrations import upgrade_to_head

ORDER_SERVICE = Path(order_models.__file__).parent


async def test_rows_older_than_the_streams_retention_are_pruned(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'order.db'}"
    await asyncio.to_thread(upgrade_to_head, ORDER_SERVICE, url)
    db = Database(url)
    now = utc_now()
    try:
        async with db.transaction() as tx:
            await tx.executemany(inbox.insert(), [
                {"consumer": "order_service_parcel", "event_id": "old", "received_at": now - EVENTS_MAX_AGE
                 - timedelta(minutes=1)},
                {"consumer": "order_service_parcel", "event_id": "recent", "received_at": now - timedelta(days=1)},
            ])
        assert await prune_inbox(db, now) == 1
        pruner = InboxPruner(db, every_secs=3600, clock=lambda: now + EVENTS_MAX_AGE)
        task = asyncio.create_task(pruner(Bus(BusConfig(url=""))))  # it needs no connection
        try:
            async def left() -> list[str]:
                async with db.transaction() as tx:
                    return [row["event_id"] for row in await tx.fetch(select(inbox.c.event_id))]

            for _ in range(200):  # its first pass runs at once
                if not await left():
                    break
                await asyncio.sleep(0.01)
            assert await left() == []
        finally:
            task.cancel()
    finally:
        await db.dispose()
