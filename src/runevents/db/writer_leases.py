"""Writer leases: the ownership SQL (``ownership.py``) -- who may write a run's log.

Part of :class:`runevents.db.repository.RunRepository` (a mixin, see
``db/base.py``). Kept apart from the worker leases (``worker_leases.py``)
because it is a different guarantee: ``(writer_owner, writer_epoch)`` fences
every write of the log and the live tier's chunks (``chunks.py``), across
machines; every statement here is conditional on the owner and its epoch.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from runevents.db.base import RepositoryBase
from runevents.db.tables import runs
from runevents.exceptions import RunNotFound
from runevents.models import Run, RunStatus, utcnow


class WriterLeases(RepositoryBase):
    """Acquire, renew, release and read a run's writer lease; finish the row fenced by it."""

    if TYPE_CHECKING:
        # provided by RunRows (db/run_rows.py), mixed in beside this

        async def update_run(
            self,
            run_id: str,
            *,
            expect: Collection[RunStatus] | None = None,
            where: sa.ColumnElement[bool] | None = None,
            **fields: Any,
        ) -> Run: ...

    async def acquire_writer(self, run_id: str, owner: str, lease_seconds: float) -> int | None:
        """Take the run's writer lease if it is free, expired or already ``owner``'s.

        Bumps the fencing epoch and returns it; None if another owner holds a
        live lease. RunNotFound if the run does not exist.
        """
        now = utcnow()
        free = sa.or_(
            runs.c.writer_owner.is_(None),
            runs.c.writer_expires_at < now,
            runs.c.writer_owner == owner,
        )
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, free)
            .values(
                writer_owner=owner,
                writer_epoch=runs.c.writer_epoch + 1,
                writer_expires_at=now + timedelta(seconds=lease_seconds),
            )
            .returning(runs.c.writer_epoch)
        )
        async with self._tx(write=True) as conn:
            epoch = await conn.scalar(stmt)
            if epoch is None and (
                await conn.scalar(sa.select(runs.c.id).where(runs.c.id == run_id)) is None
            ):
                raise RunNotFound(f"run {run_id} not found")
        return None if epoch is None else int(epoch)

    async def renew_writer(self, run_id: str, owner: str, epoch: int, lease_seconds: float) -> bool:
        """Extend a writer lease that is still ``(owner, epoch)``'s; False if it was taken.

        Expiry alone does not lose a lease: after a pause (a failover, a stalled
        loop) the owner keeps it unless someone else took it meanwhile.
        """
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.writer_owner == owner, runs.c.writer_epoch == epoch)
            .values(writer_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        )
        async with self._tx(write=True) as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)

    async def renew_writers(self, owner: str, lease_seconds: float) -> set[str]:
        """Extend every writer lease ``owner`` still holds, in one statement; their run ids."""
        stmt = (
            runs.update()
            .where(runs.c.writer_owner == owner)
            .values(writer_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            .returning(runs.c.id)
        )
        async with self._tx(write=True) as conn:
            return {str(r) for r in (await conn.execute(stmt)).scalars()}

    async def release_writer(self, run_id: str, owner: str, epoch: int) -> None:
        """Give the writer lease up if it is still ``(owner, epoch)``'s (the epoch stays)."""
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.writer_owner == owner, runs.c.writer_epoch == epoch)
            .values(writer_owner=None, writer_expires_at=None)
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)

    async def writer_of(self, run_id: str) -> tuple[str | None, int, datetime | None]:
        """``(owner, epoch, expires_at)`` of the run's writer lease (tests, the repair loop)."""
        stmt = sa.select(runs.c.writer_owner, runs.c.writer_epoch, runs.c.writer_expires_at).where(
            runs.c.id == run_id
        )
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise RunNotFound(f"run {run_id} not found")
        expires = row[2]
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return row[0], int(row[1]), expires

    async def finish_owned(
        self, run_id: str, owner: str, epoch: int, *, expect: Collection[RunStatus], **fields: Any
    ) -> Run:
        """``update_run`` fenced by the writer lease: only ``(owner, epoch)`` may finish the row.

        WriterFenced if the lease moved on; otherwise as ``update_run``.
        """
        held = sa.and_(runs.c.writer_owner == owner, runs.c.writer_epoch == epoch)
        return await self.update_run(run_id, expect=expect, where=held, **fields)
