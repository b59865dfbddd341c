"""db/stats.py: the row counts behind the /metrics gauges, and ping, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest

from runevents.db import RunRepository
from runevents.db.engine import Database, create_engine
from runevents.db.stats import ping, run_counts
from runevents.models import Run, RunStatus, utcnow


async def test_an_empty_database_counts_zero_for_every_status(database: Database) -> None:
    counts = await run_counts(database)
    assert set(counts.by_status) == {s.value for s in RunStatus}
    assert not any(counts.by_status.values()) and not any(counts.degraded.values())
    assert counts.oldest_queued is None
    assert (counts.leases_held, counts.leases_expired) == (0, 0)


async def test_counts_statuses_degraded_rows_queue_and_leases(
    database: Database, repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    oldest = make_run(created_at=utcnow() - timedelta(minutes=5))
    runs = [
        oldest,
        make_run(),
        make_run(),  # claimed below, its lease left to expire
        make_run(status=RunStatus.RUNNING, logging_degraded=True),
        make_run(status=RunStatus.SUCCEEDED, completed_at=utcnow(), logging_degraded=True),
        make_run(status=RunStatus.FAILED, completed_at=utcnow()),
    ]
    for run in runs:
        await repository.insert_run(run)
    await repository.claim_queued("w-alive", 30)  # takes the oldest queued run
    await repository.claim_queued("w-dead", 0.01)
    await asyncio.sleep(0.05)

    counts = await run_counts(database)
    assert counts.by_status["queued"] == 3  # a claimed run stays queued until it starts
    assert counts.by_status["running"] == 1
    assert counts.by_status["succeeded"] == counts.by_status["failed"] == 1
    assert counts.by_status["cancelled"] == 0
    assert counts.degraded == {**dict.fromkeys(counts.degraded, 0), "running": 1, "succeeded": 1}
    assert counts.oldest_queued == oldest.created_at
    assert counts.leases_held == 2
    assert counts.leases_expired == 1


async def test_idle_external_runs_counted_as_a_stuck_queue(
    database: Database, repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    # Defect (outside probe): an idle external run (waiting for its producer, which no
    # worker takes) made runevents_queue_oldest_age_seconds grow, so the documented
    # RuneventsQueueStuck alert fired on a healthy deployment
    await repository.insert_run(make_run(external=True, created_at=utcnow() - timedelta(hours=1)))
    counts = await run_counts(database)
    assert counts.by_status["queued"] == 1  # still a queued run (runevents_runs{status})
    assert counts.oldest_queued is None
    executed = make_run(created_at=utcnow() - timedelta(minutes=5))
    await repository.insert_run(executed)
    assert (await run_counts(database)).oldest_queued == executed.created_at


async def test_ping_fails_on_a_database_nobody_answers() -> None:
    down = create_engine("postgresql://runevents@127.0.0.1:1/runevents")
    try:
        with pytest.raises(OSError):
            await ping(down)
    finally:
        await down.close()
