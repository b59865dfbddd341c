"""Expired log bodies waiting to be deleted (deferred deletion, ``tables.log_deletions``).

Part of :class:`runevents.db.repository.RunRepository` (a mixin, see
``db/base.py``). Expiring a run is one transaction here -- the row says
``expired`` and its body is queued -- so a crash can never leave an expired
row whose body nobody will delete, nor a deleted body whose row still points
at it. Deleting the body later is the caller's (``upkeep.py``); the entry goes
once the body is gone.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from runevents.db.base import ENDED_VALUES, RepositoryBase
from runevents.db.rows import check_aware, from_row
from runevents.db.tables import log_deletions, runs
from runevents.models import LogState, Run, utcnow


class QueuedDeletion(NamedTuple):
    """A body waiting in the queue: the ids that find it in storage."""

    workspace_id: str
    configuration_id: str
    run_id: str


class LogDeletions(RepositoryBase):
    """The ``log_deletions`` queue, the expiry that fills it, and the compaction step
    that must not undo an expiry."""

    async def expire_log(self, run_id: str, expired_at: datetime) -> Run | None:
        """Mark an ended run's log ``expired`` (at ``expired_at``) and queue its body.

        One transaction. None (nothing changed) if the run has not ended, is
        gone, or is expired already.
        """
        stmt = (
            runs.update()
            .where(
                runs.c.id == run_id,
                runs.c.status.in_(ENDED_VALUES),
                runs.c.log_state.in_([LogState.PLAIN.value, LogState.COMPRESSED.value]),
            )
            .values(log_state=LogState.EXPIRED.value, updated_at=utcnow())
            .returning(*runs.c)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is None:
                return None
            run = from_row(row)
            await conn.execute(
                self._queue(run.workspace_id, run.configuration_id, run_id, expired_at)
            )
        return run

    async def mark_compressed(self, run_id: str, *, events_path: str, events_bytes: int) -> bool:
        """Point a plain log's row at its compressed form; False if the row is no longer
        plain (retention expired it meanwhile: the compressed form goes with the body)."""
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.log_state == LogState.PLAIN.value)
            .values(
                log_state=LogState.COMPRESSED.value,
                events_path=events_path,
                events_bytes=events_bytes,
                updated_at=utcnow(),
            )
        )
        async with self._tx(write=True) as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def queue_log_deletion(self, body: QueuedDeletion, expired_at: datetime) -> None:
        """Queue ``body`` for deletion (an entry already queued keeps its time)."""
        async with self._tx(write=True) as conn:
            await conn.execute(self._queue(*body, expired_at))

    def _queue(
        self, workspace_id: str, configuration_id: str, run_id: str, expired_at: datetime
    ) -> sa.Insert:
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        return (
            insert(log_deletions)
            .values(
                run_id=run_id,
                workspace_id=workspace_id,
                configuration_id=configuration_id,
                expired_at=check_aware(expired_at, "expired_at"),
            )
            .on_conflict_do_nothing(index_elements=[log_deletions.c.run_id])
        )

    async def due_log_deletions(
        self, expired_before: datetime, *, limit: int = 100
    ) -> list[QueuedDeletion]:
        """The queued bodies expired at or before ``expired_before``, oldest first."""
        stmt = (
            sa.select(log_deletions)
            .where(log_deletions.c.expired_at <= check_aware(expired_before, "expired_before"))
            .order_by(log_deletions.c.expired_at, log_deletions.c.run_id)
            .limit(limit)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [
            QueuedDeletion(row["workspace_id"], row["configuration_id"], row["run_id"])
            for row in rows
        ]

    async def log_deletion_queued(self, run_id: str) -> bool:
        """Whether ``run_id``'s body is queued for deletion (and not deleted yet)."""
        async with self._tx() as conn:
            found = await conn.scalar(
                sa.select(sa.literal(True)).where(log_deletions.c.run_id == run_id)
            )
        return bool(found)

    async def log_deleted(self, run_id: str) -> None:
        """The body of ``run_id`` is gone: drop its queue entry."""
        async with self._tx(write=True) as conn:
            await conn.execute(log_deletions.delete().where(log_deletions.c.run_id == run_id))
