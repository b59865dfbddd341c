"""What every part of :class:`runevents.db.repository.RunRepository` shares.

The repository is one object to its callers but its SQL is split by concept
into mixins (``run_rows``, ``listing``, ``worker_leases``, ``writer_leases``,
``idempotency``, ``server_keys``, ``run_masks``, ``maintenance_queries``);
this base holds the one thing they all need -- the database and its short
transactions -- so each mixin module only holds its own statements.

Async only, one short transaction per call (SQLite is shared between processes
and serializes writers). Driver errors are translated in ``db.engine.transaction``
and nowhere else: an integrity violation is :class:`Conflict`, a value the
column cannot hold is :class:`InvalidInput`, anything else the database or
connection reports is :class:`DatabaseError`.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from runevents.db.engine import Database, transaction
from runevents.db.rows import from_row
from runevents.models import ENDED_STATUSES, LogState, Run, RunStatus

#: ``runs.status`` values of ended runs, and of runs that have not ended
ENDED_VALUES = sorted(s.value for s in ENDED_STATUSES)
NOT_ENDED_VALUES = sorted(s.value for s in RunStatus if s not in ENDED_STATUSES)


def log_state_values(states: Collection[LogState]) -> list[str]:
    """``runs.log_state`` values of ``states`` (sorted: statements stay cacheable)."""
    return sorted(LogState(s).value for s in states)


class RepositoryBase:
    """The database and its transactions; the repository's mixins inherit this."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._engine = database.engine

    @property
    def database(self) -> Database:
        """The database this repository works on (maintenance locks share it)."""
        return self._db

    def _tx(self, *, write: bool = False) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection in a transaction (``db.engine.transaction``)."""
        return transaction(self._db, write=write)

    async def _runs(self, stmt: sa.Select[Any]) -> list[Run]:
        """The runs ``stmt`` selects (whole rows), in its order."""
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [from_row(row) for row in rows]
