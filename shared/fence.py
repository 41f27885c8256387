"""The compensation fence, once for every saga participant: a step for an order never lands after its compensation.

Each participant's metadata has the fence table (`participant_metadata`). A step calls `enter_step` before its
work, a compensation calls `compensate` before its own, both in the request's transaction. One row per order:

- a step after the compensation is refused (409, code "compensated"): the saga gave up waiting for it and
  undid the order, so a late copy must not charge, reserve, assign or ship for a cancelled order;
- a step still running holds the row: a concurrent compensation waits for it to end, then sees what it did
  and undoes it;
- a compensation with nothing to undo still leaves the row, so the step that arrives later is refused.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, bindparam
from sqlalchemy.sql.expression import Executable

from shared.bus import outbox_table
from shared.db import Tx, UTCDateTime, conflict_insert, new_metadata, utc_now
from shared.errors import Conflict
from shared.idempotency import idempotency_table


class FenceState(StrEnum):
    STEPPED = "STEPPED"  # a step of the order's saga came here first
    COMPENSATED = "COMPENSATED"  # the order's compensation came here: steps for it are refused


def fence_table(metadata: MetaData) -> Table:
    """Each participant adds this table to its own metadata, so its migrations create it."""
    return Table(
        "compensation_fence",
        metadata,
        Column("order_id", String(64), primary_key=True),
        Column("state", String(16), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
    )


fence = fence_table(MetaData())


def participant_metadata() -> MetaData:
    """A saga participant's metadata: its own tables (added by its models) plus the idempotency records, the
    compensation fence and the event outbox (shared/bus.py), so its migrations create them."""
    metadata = new_metadata()
    idempotency_table(metadata)
    fence_table(metadata)
    outbox_table(metadata)
    return metadata


def _upsert_statement(state_on_conflict: Any) -> Executable:
    """INSERT ... ON CONFLICT DO UPDATE ... RETURNING state: one statement (on either database) that takes the
    row's lock whether it inserts or finds the row (DO NOTHING would not lock a row it finds)."""
    insert = conflict_insert(fence).values(order_id=bindparam("f_order_id"), state=bindparam("f_state"),
                                           updated_at=bindparam("f_updated_at"))
    return insert.on_conflict_do_update(
        index_elements=[fence.c.order_id], set_={"state": state_on_conflict}).returning(fence.c.state)


# A step keeps the row's state (SET state = state: the lock without a change); a compensation sets COMPENSATED.
_STEP = _upsert_statement(fence.c.state)
_COMPENSATE = _upsert_statement(FenceState.COMPENSATED.value)


async def _upsert(tx: Tx, statement: Executable, order_id: str, state: FenceState) -> str:
    return str(await tx.fetchval(statement, {"f_order_id": order_id, "f_state": state.value,
                                             "f_updated_at": utc_now()}))


async def enter_step(tx: Tx, order_id: str) -> None:
    """Before a saga step's work for `order_id`: refuse it when the order was compensated here already."""
    if await _upsert(tx, _STEP, order_id, FenceState.STEPPED) == FenceState.COMPENSATED:
        raise Conflict(f"Order {order_id} was compensated before this step arrived; the step is refused.",
                       code="compensated", order_id=order_id)


async def compensate(tx: Tx, order_id: str) -> None:
    """Before a compensation's work for `order_id`: no step for the order lands here after it.

    A step of the order still in its transaction holds the row: this waits for it, and the compensation's
    next statements see what it committed.
    """
    await _upsert(tx, _COMPENSATE, order_id, FenceState.COMPENSATED)
