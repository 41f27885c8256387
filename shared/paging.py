"""The "visible page plus count" query of every list route, once: a page of rows and how many match in all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, FromClause, func, select

from shared.db import Row, Tx

TOTAL = "total_matching"


async def visible_page(tx: Tx, source: FromClause, where: Sequence[ColumnElement[bool]],
                       order_by: Sequence[Any], limit: int, offset: int,
                       columns: Sequence[Any] | None = None) -> tuple[list[Row], int]:
    """One page of `source` (its columns, or `columns`) matching every clause of `where`, and the number of rows
    matching in all.

    One statement: the count rides on every row of the page (a window over the matches). Only a page past
    the end, which has no row to carry it, asks for the count on its own.
    """
    page = await tx.fetch(
        select(*(columns if columns is not None else source.c), func.count().over().label(TOTAL))
        .select_from(source).where(*where).order_by(*order_by).limit(limit).offset(offset))
    if page:
        return page, int(page[0][TOTAL])
    if offset == 0:
        return [], 0
    return [], int(await tx.fetchval(select(func.count()).select_from(source).where(*where)))
