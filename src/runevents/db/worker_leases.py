"""Worker leases: which worker executes a queued run, and until when.

Part of :class:`runevents.db.repository.RunRepository` (a mixin, see
``db/base.py``). A worker lease (``lease_owner``, ``lease_expires_at``) says
which worker process runs a job; it is not the writer lease
(``writer_leases.py``), which says who may write the run's log.
:meth:`WorkerLeases.claim_queued` never hands one run to two workers
(Postgres: ``FOR UPDATE SKIP LOCKED``; SQLite: one ``UPDATE`` under
``BEGIN IMMEDIATE``, writers are serialized).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

import sqlalchemy as sa

from runevents.db.base import NOT_ENDED_VALUES, RepositoryBase
from runevents.db.rows import check_aware, from_row
from runevents.db.tables import runs
from runevents.exceptions import Conflict, RunNotFound
from runevents.models import Run, RunStatus, utcnow


class WorkerLeases(RepositoryBase):
    """Claim, renew, release and reap the worker lease of runs."""

    async def claim_queued(
        self,
        worker_id: str,
        lease_seconds: float,
        configurations: Collection[tuple[str, str]] | None = None,
    ) -> Run | None:
        """Lease the oldest queued, non-external run that no live lease holds; None if none.

        ``configurations``: the ``(workspace_id, configuration_id)`` pairs the
        claiming worker can execute; a run of any other configuration is left
        queued for a worker that has it (workers of one database may load
        different configuration files). None: any configuration.

        Never hands the same run to two concurrent callers. A queued run whose
        lease expired (its worker died before starting it) is claimable again.
        """
        now = utcnow()
        free = sa.or_(runs.c.lease_owner.is_(None), runs.c.lease_expires_at < now)
        queued = runs.c.status == RunStatus.QUEUED.value
        conditions = [queued, runs.c.external == sa.false(), free]
        if configurations is not None:
            # an empty set renders as a false condition: such a worker claims nothing
            pairs = sorted(set(configurations))
            key = sa.tuple_(runs.c.workspace_id, runs.c.configuration_id)
            conditions.append(key.in_(pairs))
        pick = (
            sa.select(runs.c.id).where(*conditions).order_by(runs.c.created_at, runs.c.id).limit(1)
        )
        if self._db.dialect == "postgresql":
            # skip rows another claimer has locked instead of queueing behind it
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            runs.update()
            .where(runs.c.id == pick.scalar_subquery(), queued, free)
            .values(lease_owner=worker_id, lease_expires_at=now + timedelta(seconds=lease_seconds))
            .returning(*runs.c)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else from_row(row)

    async def claim_expired(self, run_id: str, worker_id: str, lease_seconds: float) -> Run | None:
        """Take over the run's lease if it has expired and the run has not ended; else None.

        Lets one reaper (of several) act on a run whose worker died.
        """
        now = utcnow()
        stmt = (
            runs.update()
            .where(
                runs.c.id == run_id,
                runs.c.status.in_(NOT_ENDED_VALUES),
                runs.c.lease_owner.is_not(None),
                runs.c.lease_expires_at < now,
            )
            .values(lease_owner=worker_id, lease_expires_at=now + timedelta(seconds=lease_seconds))
            .returning(*runs.c)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else from_row(row)

    async def renew_lease(self, run_id: str, worker_id: str, lease_seconds: float) -> Run:
        """Extend the lease ``worker_id`` holds on the run.

        RunNotFound if there is no such run; Conflict if the worker no longer owns it.
        """
        expires = utcnow() + timedelta(seconds=lease_seconds)
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.lease_owner == worker_id)
            .values(lease_expires_at=expires)
            .returning(*runs.c)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
            exists = row is not None or (
                await conn.scalar(sa.select(runs.c.id).where(runs.c.id == run_id)) is not None
            )
        if row is not None:
            return from_row(row)
        if not exists:
            raise RunNotFound(f"run {run_id} not found")
        raise Conflict(f"worker {worker_id} no longer holds the lease on run {run_id}")

    async def cancel_requested_among(self, run_ids: Collection[str]) -> set[str]:
        """Which of ``run_ids`` have not ended and carry a cancel request (one read by
        primary key: a worker's cancel watch asks it about its runs every half second)."""
        if not run_ids:
            return set()
        stmt = sa.select(runs.c.id).where(
            runs.c.id.in_(sorted(set(run_ids))),
            runs.c.cancel_requested.is_(True),
            runs.c.status.in_(NOT_ENDED_VALUES),
        )
        async with self._tx() as conn:
            return set((await conn.scalars(stmt)).all())

    async def release_lease(self, run_id: str, worker_id: str) -> None:
        """Drop the lease if ``worker_id`` still holds it (otherwise do nothing)."""
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.lease_owner == worker_id)
            .values(lease_owner=None, lease_expires_at=None)
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)

    async def expired_leases(self, now: datetime | None = None, *, limit: int = 100) -> list[Run]:
        """Runs that have not ended and whose lease expired before ``now``, oldest expiry first."""
        now = check_aware(now, "now") or utcnow()
        stmt = (
            runs.select()
            .where(runs.c.lease_expires_at < now, runs.c.status.in_(NOT_ENDED_VALUES))
            .order_by(runs.c.lease_expires_at, runs.c.id)
            .limit(limit)
        )
        return await self._runs(stmt)

    async def idle_external_runs(self, before: datetime, *, limit: int = 100) -> list[Run]:
        """External runs not ended whose row has not changed since ``before``, oldest first."""
        before = check_aware(before, "before") or utcnow()
        stmt = (
            runs.select()
            .where(
                runs.c.external.is_(True),
                runs.c.status.in_(NOT_ENDED_VALUES),
                runs.c.updated_at < before,
            )
            .order_by(runs.c.updated_at, runs.c.id)
            .limit(limit)
        )
        return await self._runs(stmt)
