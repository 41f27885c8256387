"""The route plumbing of every service as FastAPI dependencies: its database, a session in one transaction,
the page a list route is asked for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request

from shared.db import Database, Tx
from shared.schemas import PageParams
from shared.settings import ServiceSettings

# Every dependency here is `async def`: FastAPI runs a plain `def` dependency on a worker thread, a thread hand-off
# per request (measured: ~18 % of order_service's samples under the saga load, for three of them per keyed step).


async def database(request: Request) -> Database:
    """The service's database (opened by the app's lifespan): the one place a route reaches app.state for it."""
    db: Database = request.app.state.db
    return db


DatabaseDep = Annotated[Database, Depends(database)]


async def service_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


SettingsDep = Annotated[ServiceSettings, Depends(service_settings)]


async def session(db: DatabaseDep) -> AsyncIterator[Tx]:
    """One transaction of the data path (shared.db.Tx), committed when the route returns and rolled back when
    it raises."""
    async with db.transaction() as opened:
        yield opened


# scope="function": the transaction ends when the route returns, before its response is sent.
SessionDep = Annotated[Tx, Depends(session, scope="function")]


async def paging(limit: Annotated[int, Query(ge=1, le=500)] = 50,
           offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> PageParams:
    return PageParams(limit=limit, offset=offset)


Paging = Annotated[PageParams, Depends(paging)]
