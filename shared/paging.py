"""What a caller sees of a service's records, once: one row (or 404), and the "visible page plus count" query of
every list route (a page of rows and how many match in all), its filters and the page's child rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, FromClause, func, select
from sqlalchemy.sql.elements import KeyedColumnElement

from shared.auth import Identity
from shared.db import Row, Tx
from shared.errors import NotFound

TOTAL = "total_matching"


def visible_row(row: Row | None, identity: Identity, missing: str) -> Row:
    """`row` when the caller may see it (a customer: their own, by its "customer_id"); else NotFound(missing).

    Another customer's record is reported as missing, so ids cannot be probed."""
    if row is None or not identity.may_access(row["customer_id"]):
        raise NotFound(missing)
    return row


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


def matching(source: FromClause, **values: Any) -> list[ColumnElement[bool]]:
    """A list route's filters as the WHERE of `visible_page`: `column == value` for every value given (None or
    empty: not filtered on)."""
    return [source.c[name] == value for name, value in values.items() if value]


async def children_of(tx: Tx, page: Sequence[Row], parent_id: KeyedColumnElement[Any], columns: Sequence[Any],
                      order_by: Any) -> dict[str, list[Row]]:
    """The child rows of a page's rows (by their "id"), in one statement: each parent's list in `order_by` order.

    Every child row has its parent's id under `parent_id`'s key (a label of the foreign key, or the column)."""
    children: dict[str, list[Row]] = {row["id"]: [] for row in page}
    if children:
        for child in await tx.fetch(select(parent_id, *columns).where(parent_id.in_(children)).order_by(order_by)):
            children[child[parent_id.key]].append(child)
    return children
