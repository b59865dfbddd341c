"""Operational queries: is the database there, and the row counts behind the gauges.

:func:`run_counts` is one ``GROUP BY status`` over the runs table that yields
every database-derived gauge of ``GET /metrics`` at once (runs by status,
degraded runs, the oldest queued run, leases held and expired). It is a scan,
so ``metrics_state.py`` caches it (``metrics_refresh_seconds``) instead of running
it on every scrape.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import sqlalchemy as sa

from runevents.db.engine import Database
from runevents.db.tables import runs
from runevents.models import RunStatus, utcnow


@dataclasses.dataclass(frozen=True, slots=True)
class RunCounts:
    """What :func:`run_counts` found, at ``taken_at``."""

    #: rows per status (every status present, 0 when none)
    by_status: dict[str, int]
    #: rows flagged ``logging_degraded``, per status
    degraded: dict[str, int]
    #: created_at of the oldest queued run a worker executes (None: none waits; queued
    #: external runs wait for their producer and are not counted)
    oldest_queued: datetime | None
    #: live runs with a worker lease
    leases_held: int
    #: live runs whose lease ran out and nobody reaped yet
    leases_expired: int
    taken_at: datetime


async def ping(database: Database) -> None:
    """One round trip (``SELECT 1``); raises whatever the driver raises when it cannot."""
    async with database.engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


def _count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


async def run_counts(database: Database) -> RunCounts:
    """Every database-derived gauge in one query."""
    now = utcnow()
    statement = sa.select(
        runs.c.status,
        sa.func.count(),
        _count_if(runs.c.logging_degraded.is_(True)),
        # the queue a worker drains: an external run waits for its producer, not a
        # worker, so an idle one must not look like a stuck queue (RuneventsQueueStuck)
        sa.func.min(sa.case((runs.c.external.is_(False), runs.c.created_at), else_=None)),
        _count_if(runs.c.lease_owner.is_not(None)),
        _count_if(runs.c.lease_expires_at < now),
    ).group_by(runs.c.status)
    async with database.engine.connect() as conn:
        rows = (await conn.execute(statement)).all()
    by_status = {status.value: 0 for status in RunStatus}
    degraded = dict(by_status)
    oldest: datetime | None = None
    held = expired = 0
    for status, count, flagged, first_created, leased, lapsed in rows:
        by_status[status] = int(count)
        degraded[status] = int(flagged)
        if status == RunStatus.QUEUED.value:
            oldest = first_created
        if not RunStatus(status).ended:
            held += int(leased)
            expired += int(lapsed)
    return RunCounts(by_status, degraded, oldest, held, expired, now)
