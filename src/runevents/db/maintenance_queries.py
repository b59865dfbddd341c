"""Maintenance queries: which runs the retention, compaction and repair loops visit.

Part of :class:`runevents.db.repository.RunRepository` (a mixin, see
``db/base.py``). Read-only pages of runs in id (or age) order, plus the sizes
the byte caps and gauges need; the policies that act on them live in
``maintenance.py`` and ``repair.py``.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import sqlalchemy as sa

from runevents.db.base import ENDED_VALUES, NOT_ENDED_VALUES, RepositoryBase, log_state_values
from runevents.db.listing import NEWEST_FIRST
from runevents.db.rows import check_aware
from runevents.db.tables import runs
from runevents.exceptions import InvalidInput
from runevents.models import LogState, Run, utcnow


class MaintenanceQueries(RepositoryBase):
    """Pages of runs for the maintenance policies and the repair loop; storage sizes."""

    async def live_runs(self, *, limit: int = 1000, after_id: str | None = None) -> list[Run]:
        """Runs whose log is still ``live`` (ended or not), by id: the repair loop's work list."""
        where: list[sa.ColumnElement[bool]] = [runs.c.log_state == LogState.LIVE.value]
        if after_id is not None:
            where.append(runs.c.id > after_id)
        return await self._runs(runs.select().where(*where).order_by(runs.c.id).limit(limit))

    async def runs_ended_before(
        self,
        cutoff: datetime,
        *,
        log_states: Collection[LogState],
        limit: int,
        after_id: str | None = None,
    ) -> list[Run]:
        """Ended runs with ``completed_at < cutoff`` and a log in one of ``log_states``.

        In id order, at most ``limit``, after ``after_id`` (pass the last id of
        the previous page). Runs that have not ended are never returned.
        """
        where = [
            runs.c.status.in_(ENDED_VALUES),
            runs.c.completed_at < check_aware(cutoff, "cutoff"),
            runs.c.log_state.in_(log_state_values(log_states)),
        ]
        if after_id is not None:
            where.append(runs.c.id > after_id)
        return await self._runs(runs.select().where(*where).order_by(runs.c.id).limit(limit))

    async def live_runs_with_lapsed_writers(self) -> set[str]:
        """Ids of the runs whose log is ``live`` and whose writer lease expired without being
        given back (its holder died or stalled): the repair loop takes those. A writer let go
        cleanly (``release_writer``) clears ``writer_owner``; those are not listed."""
        stmt = sa.select(runs.c.id).where(
            runs.c.log_state == LogState.LIVE.value,
            runs.c.writer_owner.is_not(None),
            runs.c.writer_expires_at < utcnow(),
        )
        async with self._tx() as conn:
            return {str(row[0]) for row in (await conn.execute(stmt)).all()}

    async def runs_with_log_states(
        self,
        log_states: Collection[LogState],
        *,
        ended: bool | None = None,
        limit: int,
        after_id: str | None = None,
    ) -> list[Run]:
        """Runs whose log is in one of ``log_states`` (optionally only ended / not ended), by id.

        E.g. ended runs still ``live`` after a crash, which need sealing.
        """
        where: list[sa.ColumnElement[bool]] = [runs.c.log_state.in_(log_state_values(log_states))]
        if ended is not None:
            where.append(runs.c.status.in_(ENDED_VALUES if ended else NOT_ENDED_VALUES))
        if after_id is not None:
            where.append(runs.c.id > after_id)
        return await self._runs(runs.select().where(*where).order_by(runs.c.id).limit(limit))

    async def runs_beyond_per_configuration(
        self,
        keep: int,
        *,
        log_states: Collection[LogState],
        limit: int,
        after_id: str | None = None,
    ) -> list[Run]:
        """Ended runs with a log in ``log_states`` that are not among the ``keep`` newest
        such runs of their (workspace, configuration); in id order, paged by ``after_id``.
        """
        if keep < 0:
            raise InvalidInput("keep must be >= 0")
        rank = (
            sa.func.row_number()
            .over(
                partition_by=(runs.c.workspace_id, runs.c.configuration_id),
                order_by=NEWEST_FIRST,
            )
            .label("rank")
        )
        ranked = (
            sa.select(runs.c.id, rank)
            .where(
                runs.c.status.in_(ENDED_VALUES),
                runs.c.log_state.in_(log_state_values(log_states)),
            )
            .subquery()
        )
        where = [ranked.c.rank > keep]
        if after_id is not None:
            where.append(ranked.c.id > after_id)
        stmt = (
            runs.select()
            .join(ranked, ranked.c.id == runs.c.id)
            .where(*where)
            .order_by(runs.c.id)
            .limit(limit)
        )
        return await self._runs(stmt)

    async def ended_runs_by_age(
        self,
        *,
        log_states: Collection[LogState],
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[Run]:
        """Ended runs with a log in ``log_states``, oldest ``(completed_at, id)`` first.

        For a total-bytes cap: delete from the oldest until under it. ``after`` is
        the ``(completed_at, id)`` of the last run of the previous page.
        """
        where: list[sa.ColumnElement[bool]] = [
            runs.c.status.in_(ENDED_VALUES),
            runs.c.log_state.in_(log_state_values(log_states)),
            runs.c.completed_at.is_not(None),
        ]
        if after is not None:
            stamp = check_aware(after[0], "after")
            where.append(sa.tuple_(runs.c.completed_at, runs.c.id) > (stamp, after[1]))
        stmt = runs.select().where(*where).order_by(runs.c.completed_at, runs.c.id).limit(limit)
        return await self._runs(stmt)

    async def log_bytes_total(self, log_states: Collection[LogState]) -> int:
        """Sum of ``events_bytes`` over runs whose log is in one of ``log_states``."""
        stmt = sa.select(sa.func.coalesce(sa.func.sum(runs.c.events_bytes), 0)).where(
            runs.c.log_state.in_(log_state_values(log_states))
        )
        async with self._tx() as conn:
            return int(await conn.scalar(stmt) or 0)

    async def database_size_bytes(self) -> int | None:
        """Bytes the database uses on disk (whole database), or None if unknown."""
        async with self._tx() as conn:
            if self._db.dialect == "postgresql":
                size = await conn.scalar(sa.text("SELECT pg_database_size(current_database())"))
            else:
                pages = await conn.scalar(sa.text("PRAGMA page_count"))
                page_size = await conn.scalar(sa.text("PRAGMA page_size"))
                size = None if pages is None or page_size is None else pages * page_size
        return None if size is None else int(size)

    async def runs_table_bytes(self) -> int | None:
        """Bytes of the runs table and its indexes (Postgres), or None where not measurable."""
        if self._db.dialect != "postgresql":
            return None
        async with self._tx() as conn:
            size = await conn.scalar(sa.text("SELECT pg_total_relation_size('runs')"))
        return None if size is None else int(size)
