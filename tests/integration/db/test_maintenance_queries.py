"""Maintenance queries (db/maintenance_queries.py) and bounded row size."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from runevents.db import Database, RunRepository
from runevents.db.tables import runs
from runevents.exceptions import InvalidInput
from runevents.models import LogState, Run, RunStatus, utcnow

ENDED_LOGS = {LogState.PLAIN, LogState.COMPRESSED}


def _ended(make_run: Callable[..., Run], age: timedelta, **kw: Any) -> Run:
    completed = utcnow() - age
    kw.setdefault("status", RunStatus.SUCCEEDED)
    kw.setdefault("log_state", LogState.PLAIN)
    return make_run(completed_at=completed, **kw)


async def test_runs_ended_before_pages_in_id_order(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    old = [_ended(make_run, timedelta(days=3)) for _ in range(5)]
    recent = _ended(make_run, timedelta(minutes=1))
    expired = _ended(make_run, timedelta(days=3), log_state=LogState.EXPIRED)
    live = make_run(status=RunStatus.RUNNING, completed_at=utcnow() - timedelta(days=3))
    for run in [*old, recent, expired, live]:
        await repository.insert_run(run)
    cutoff = utcnow() - timedelta(days=1)
    first = await repository.runs_ended_before(cutoff, log_states=ENDED_LOGS, limit=3)
    rest = await repository.runs_ended_before(
        cutoff, log_states=ENDED_LOGS, limit=3, after_id=first[-1].id
    )
    assert [r.id for r in first + rest] == sorted(r.id for r in old)


async def test_runs_with_log_states(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    stale = _ended(make_run, timedelta(hours=1), log_state=LogState.LIVE)
    live = make_run(status=RunStatus.RUNNING)
    plain = _ended(make_run, timedelta(hours=1))
    for run in (stale, live, plain):
        await repository.insert_run(run)
    got = await repository.runs_with_log_states({LogState.LIVE}, ended=True, limit=10)
    assert [r.id for r in got] == [stale.id]
    got = await repository.runs_with_log_states({LogState.LIVE}, ended=False, limit=10)
    assert [r.id for r in got] == [live.id]
    got = await repository.runs_with_log_states({LogState.LIVE, LogState.PLAIN}, limit=10)
    assert [r.id for r in got] == sorted([stale.id, live.id, plain.id])


async def test_runs_beyond_per_configuration_keeps_the_newest(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    a = [_ended(make_run, timedelta(hours=1), configuration_id="a") for _ in range(5)]
    b = [_ended(make_run, timedelta(hours=1), configuration_id="b") for _ in range(2)]
    other_ws = [_ended(make_run, timedelta(hours=1), workspace_id="w2", configuration_id="a")]
    running = make_run(configuration_id="a", status=RunStatus.RUNNING)
    for run in [*a, *b, *other_ws, running]:
        await repository.insert_run(run)
    got = await repository.runs_beyond_per_configuration(2, log_states=ENDED_LOGS, limit=100)
    assert [r.id for r in got] == sorted(r.id for r in a[:3])  # a's three oldest
    page = await repository.runs_beyond_per_configuration(
        2, log_states=ENDED_LOGS, limit=2, after_id=got[0].id
    )
    assert [r.id for r in page] == [r.id for r in got[1:3]]
    with pytest.raises(InvalidInput):
        await repository.runs_beyond_per_configuration(-1, log_states=ENDED_LOGS, limit=1)


async def test_ended_runs_by_age_and_total_bytes(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    runs_ = [_ended(make_run, timedelta(hours=h), events_bytes=h * 100) for h in (5, 1, 3)]
    gone = _ended(make_run, timedelta(hours=9), log_state=LogState.EXPIRED, events_bytes=10**6)
    for run in [*runs_, gone]:
        await repository.insert_run(run)
    oldest = await repository.ended_runs_by_age(log_states=ENDED_LOGS, limit=2)
    assert [r.events_bytes for r in oldest] == [500, 300]
    last = oldest[-1]
    assert last.completed_at is not None
    rest = await repository.ended_runs_by_age(
        log_states=ENDED_LOGS, limit=2, after=(last.completed_at, last.id)
    )
    assert [r.events_bytes for r in rest] == [100]
    assert await repository.log_bytes_total(ENDED_LOGS) == 900
    assert await repository.log_bytes_total({LogState.EXPIRED}) == 10**6


async def test_database_size_is_reported(repository: RunRepository) -> None:
    size = await repository.database_size_bytes()
    assert size is not None
    assert size > 0


def _summary(events: int) -> dict[str, Any]:
    """A run summary shaped like contract 2.1 whose counts are all ``events``-sized."""
    return {
        "schema": "runevents.run_summary/v1",
        "status": "succeeded",
        "failure": None,
        "execution": {"exit_code": 0, "started_at": None, "completed_at": None, "duration_ms": 5},
        "events": {"total": events, "by_type": {"console.line": events - 2}, "ignored": 0},
        "console": {
            "lines": events - 2,
            "by_stream": {"stdout": events - 2},
            "by_level": {"info": events - 2},
            "truncated": 0,
        },
        "phases": [],
        "tables": {"input_file_count": 1, "table_count": 1, "row_count": events, "by_file": []},
        "validation": {
            "issues_total": events,
            "issues_by_severity": {"error": events},
            "issues_by_code": {"missing": events},
            "max_severity": "error",
        },
    }


def _console_tail(lines: int) -> str:
    """The last console lines of a run with ``lines`` lines (incompressible text)."""
    first = max(0, lines - 20)
    return "".join(
        f"{i} {hashlib.sha256(str(i).encode()).hexdigest() * 8}\n" for i in range(first, lines)
    )


async def _row_bytes(database: Database, run_id: str) -> int:
    if database.dialect == "postgresql":
        sql = "SELECT pg_column_size(r.*) FROM runs r WHERE id = :id"
    else:
        parts = " + ".join(f"coalesce(length(CAST({c.name} AS BLOB)), 0)" for c in runs.c)
        sql = f"SELECT {parts} FROM runs WHERE id = :id"
    async with database.engine.connect() as conn:
        return int(await conn.scalar(sa.text(sql), {"id": run_id}))


async def test_row_size_does_not_depend_on_event_count(
    database: Database, repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    sizes = {}
    for events in (10, 100_000):
        run = make_run(
            status=RunStatus.SUCCEEDED,
            summary=_summary(events),
            event_count=events,
            events_bytes=events * 180,
            last_console_snippet=_console_tail(events),
        )
        await repository.insert_run(run)
        sizes[events] = await _row_bytes(database, run.id)
    # counters are fixed-width, the snippet is capped at 4 KiB; only a few digits of
    # the summary's numbers differ
    assert abs(sizes[100_000] - sizes[10]) <= 64, sizes
    assert sizes[100_000] < 4096 + 2048, sizes
