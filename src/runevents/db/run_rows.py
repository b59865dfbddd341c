"""The single-run SQL of the run index: insert, read, update and upsert one row.

Part of :class:`runevents.db.repository.RunRepository` (a mixin, see
``db/base.py``). :meth:`RunRows.update_run` is the one place a run's status
moves: one conditional ``UPDATE ... RETURNING``, so of two concurrent
completions guarded by ``expect`` exactly one matches; the writer lease
(``writer_leases.py``) fences it through ``where``.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from runevents.db.base import RepositoryBase
from runevents.db.rows import RUN_FIELDS, column_of, field_to_column_value, from_row, to_row
from runevents.db.tables import runs
from runevents.exceptions import (
    Conflict,
    InvalidInput,
    InvalidTransition,
    RunEnded,
    RunNotFound,
    WriterFenced,
)
from runevents.models import TRANSITIONS, Run, RunStatus, utcnow

_UPDATABLE = frozenset(RUN_FIELDS) - {"id", "updated_at"}
#: columns reindex's upsert never overwrites: the lease of a running job stays its worker's
_KEEP_ON_UPSERT = frozenset({"id", "lease_owner", "lease_expires_at", "cancel_requested"})


def insert_statement(run: Run, writer_owner: str | None, writer_lease_seconds: float) -> sa.Insert:
    """The INSERT of a new run's row (with ``writer_owner``: holding its writer lease, epoch 1)."""
    values = to_row(run)
    if writer_owner is not None:
        values.update(
            writer_owner=writer_owner,
            writer_epoch=1,
            writer_expires_at=utcnow() + timedelta(seconds=writer_lease_seconds),
        )
    return runs.insert().values(**values)


class RunRows(RepositoryBase):
    """One ``runs`` row at a time: insert, upsert, get, conditional update."""

    async def insert_run(
        self, run: Run, *, writer_owner: str | None = None, writer_lease_seconds: float = 8.0
    ) -> None:
        """Insert a new run (with ``writer_owner``: holding its writer lease, epoch 1).

        Conflict if a run with that id exists.
        """
        try:
            async with self._tx(write=True) as conn:
                await conn.execute(insert_statement(run, writer_owner, writer_lease_seconds))
        except Conflict as exc:
            raise Conflict(f"run {run.id} already exists") from exc

    async def upsert_run(self, run: Run) -> None:
        """Insert ``run`` or overwrite every column of its row (reindex)."""
        row = to_row(run)
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt = insert(runs).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[runs.c.id],
            # a rebuilt row describes the log; who runs or writes it is not in the log
            set_={name: stmt.excluded[name] for name in row if name not in _KEEP_ON_UPSERT},
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)

    async def get_run(self, run_id: str) -> Run:
        """The run with id ``run_id``. RunNotFound if there is none."""
        async with self._tx() as conn:
            row = (await conn.execute(runs.select().where(runs.c.id == run_id))).mappings().first()
        if row is None:
            raise RunNotFound(f"run {run_id} not found")
        return from_row(row)

    async def update_run(
        self,
        run_id: str,
        *,
        expect: Collection[RunStatus] | None = None,
        where: sa.ColumnElement[bool] | None = None,
        **fields: Any,
    ) -> Run:
        """Set ``fields`` (Run field names) in one conditional UPDATE; return the updated run.

        ``updated_at`` is always set to the server's clock. The row must currently
        have a status in ``expect`` (any status if None); when ``fields`` sets a
        new ``status``, the row's status must also be one that
        ``models.TRANSITIONS`` allows to move there. The check and the write are
        one statement, so of two concurrent calls with the same ``expect`` only
        one can succeed. If nothing matched: RunNotFound if the run does not
        exist, RunEnded if it has ended (and ``expect`` allowed no ended status),
        otherwise InvalidTransition.
        """
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise InvalidInput(f"cannot update run fields {sorted(unknown)}")
        values = {column_of(k): field_to_column_value(k, v) for k, v in fields.items()}
        allowed = None if expect is None else {RunStatus(s) for s in expect}
        if "status" in fields:
            target = RunStatus(values["status"])
            sources = {s for s, targets in TRANSITIONS.items() if target in targets}
            allowed = sources if allowed is None else allowed & sources
        stmt = runs.update().where(runs.c.id == run_id)
        if where is not None:
            stmt = stmt.where(where)
        if allowed is not None:
            stmt = stmt.where(runs.c.status.in_(sorted(s.value for s in allowed)))
        stmt = stmt.values(**values, updated_at=utcnow()).returning(*runs.c)
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is not None:
                return from_row(row)
            current = await conn.scalar(sa.select(runs.c.status).where(runs.c.id == run_id))
            fenced = (
                where is not None
                and current is not None
                and not await conn.scalar(
                    sa.select(sa.literal(True)).where(runs.c.id == run_id, where)
                )
            )
        if current is None:
            raise RunNotFound(f"run {run_id} not found")
        if fenced:
            raise WriterFenced(f"this process no longer holds the writer of run {run_id}")
        status = RunStatus(current)
        if status.ended and not any(s.ended for s in allowed or ()):
            raise RunEnded(f"run {run_id} has already ended ({status.value})")
        wanted = ", ".join(sorted(s.value for s in allowed or ())) or "none"
        raise InvalidTransition(
            f"run {run_id} is {status.value}; this change needs one of: {wanted}"
        )
