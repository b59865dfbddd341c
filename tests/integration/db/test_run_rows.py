"""Single runs (db/run_rows.py): insert, get, conditional update, upsert; SQLite and Postgres."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from runevents.db import RunRepository
from runevents.db.engine import create_engine
from runevents.exceptions import (
    Conflict,
    DatabaseError,
    InvalidInput,
    InvalidTransition,
    RunEnded,
    RunNotFound,
)
from runevents.models import ENDED_STATUSES, LogState, Run, RunStatus, utcnow

LIVE = frozenset(RunStatus) - ENDED_STATUSES


def _everything_set(make_run: Callable[..., Run]) -> Run:
    created = datetime(2026, 11, 24, 6, 0, 0, 123456, tzinfo=UTC)
    return make_run(
        status=RunStatus.SUCCEEDED,
        external=True,
        mode="execute",
        options={"nested": {"x": [1, "two", None]}, "flag": True},
        exit_code=0,
        created_at=created,
        started_at=created + timedelta(seconds=1),
        completed_at=created + timedelta(seconds=5),
        updated_at=created + timedelta(seconds=5),
        events_path="workspaces/ws/runs/r/logs/events.ndjson",
        output_paths=["a.xlsx", "b.csv"],
        summary={"schema": "runevents.run_summary/v1", "events": {"total": 3}},
        failure=None,
        input_file_count=2,
        table_count=3,
        row_count=15,
        max_validation_severity="warning",
        last_console_snippet="done\n",
        logging_degraded=True,
        event_count=3,
        events_bytes=2**40,
        log_state=LogState.PLAIN,
        cancel_requested=True,
        lease_owner="worker-1",
        lease_expires_at=created + timedelta(seconds=30),
    )


async def test_insert_then_get_returns_every_field(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = _everything_set(make_run)
    await repository.insert_run(run)
    assert await repository.get_run(run.id) == run


async def test_defaults_round_trip(repository: RunRepository, make_run: Callable[..., Run]) -> None:
    run = make_run()
    await repository.insert_run(run)
    stored = await repository.get_run(run.id)
    assert stored == run
    assert stored.summary is None
    assert stored.options == {}
    assert stored.output_paths == []


async def test_timestamps_come_back_aware_utc_whatever_offset_went_in(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    plus_five = timezone(timedelta(hours=5, minutes=30))
    created = datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=plus_five)
    run = make_run(created_at=created, updated_at=created)
    await repository.insert_run(run)
    stored = await repository.get_run(run.id)
    assert stored.created_at == created
    assert stored.created_at.tzinfo is UTC
    assert stored.created_at.hour == 6
    assert stored.created_at.microsecond == 1


async def test_insert_duplicate_id_is_a_conflict(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run()
    await repository.insert_run(run)
    with pytest.raises(Conflict, match="already exists"):
        await repository.insert_run(run.evolve(workspace_id="other"))


async def test_get_unknown_run_is_not_found(repository: RunRepository) -> None:
    with pytest.raises(RunNotFound):
        await repository.get_run("run_01JAAAAAAAAAAAAAAAAAAAAAAA")


async def test_update_sets_fields_and_bumps_updated_at(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run(
        created_at=utcnow() - timedelta(hours=1), updated_at=utcnow() - timedelta(hours=1)
    )
    await repository.insert_run(run)
    before = utcnow()
    updated = await repository.update_run(
        run.id,
        expect={RunStatus.QUEUED},
        status=RunStatus.RUNNING,
        started_at=before,
        summary={"k": 1},
        event_count=7,
    )
    assert updated.status is RunStatus.RUNNING
    assert updated.summary == {"k": 1}
    assert updated.event_count == 7
    assert updated.updated_at >= before
    assert await repository.get_run(run.id) == updated


async def test_update_unknown_run_is_not_found(repository: RunRepository) -> None:
    with pytest.raises(RunNotFound):
        await repository.update_run("run_01JAAAAAAAAAAAAAAAAAAAAAAA", event_count=1)


async def test_update_unknown_field_is_invalid_input(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run()
    await repository.insert_run(run)
    with pytest.raises(InvalidInput, match="no_such_field"):
        await repository.update_run(run.id, no_such_field=1)
    with pytest.raises(InvalidInput, match="id"):
        await repository.update_run(run.id, id="run_other")


async def test_update_with_unexpected_status_is_an_invalid_transition(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    await repository.insert_run(run)
    with pytest.raises(InvalidTransition, match=r"run .* is running"):
        await repository.update_run(run.id, expect={RunStatus.QUEUED}, cancel_requested=True)
    assert (await repository.get_run(run.id)).cancel_requested is False


async def test_update_of_an_ended_run_is_run_ended(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run(status=RunStatus.SUCCEEDED)
    await repository.insert_run(run)
    with pytest.raises(RunEnded):
        await repository.update_run(run.id, expect=LIVE, cancel_requested=True)
    # an ended run never goes back: the status change itself is guarded
    with pytest.raises(RunEnded):
        await repository.update_run(run.id, status=RunStatus.RUNNING)
    with pytest.raises(RunEnded):
        await repository.update_run(run.id, status=RunStatus.FAILED)
    assert (await repository.get_run(run.id)).status is RunStatus.SUCCEEDED


async def test_update_without_expect_changes_maintenance_fields_of_ended_runs(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run(status=RunStatus.FAILED, log_state=LogState.PLAIN)
    await repository.insert_run(run)
    updated = await repository.update_run(run.id, log_state=LogState.COMPRESSED, events_bytes=10)
    assert updated.log_state is LogState.COMPRESSED
    assert updated.status is RunStatus.FAILED


async def test_update_rejects_status_moves_transitions_forbid(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    await repository.insert_run(run)
    with pytest.raises(InvalidTransition):
        await repository.update_run(run.id, status=RunStatus.BUILDING)
    with pytest.raises(InvalidInput, match="paused"):
        await repository.update_run(run.id, status="paused")


async def test_concurrent_completions_exactly_one_wins(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    await repository.insert_run(run)
    outcomes = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED] * 4

    async def complete(status: RunStatus) -> Run | Exception:
        try:
            return await repository.update_run(
                run.id, expect=LIVE, status=status, completed_at=utcnow()
            )
        except RunEnded as exc:
            return exc

    results = await asyncio.gather(*(complete(s) for s in outcomes))
    winners = [r for r in results if isinstance(r, Run)]
    assert len(winners) == 1
    assert all(isinstance(r, RunEnded) for r in results if not isinstance(r, Run))
    assert (await repository.get_run(run.id)).status is winners[0].status


async def test_snippet_is_capped_at_4_kib(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    long = "".join(f"line {i}\n" for i in range(100_000))
    run = make_run(last_console_snippet=long)
    await repository.insert_run(run)
    stored = (await repository.get_run(run.id)).last_console_snippet
    assert stored is not None
    assert len(stored.encode()) <= 4096
    assert long.endswith(stored)
    updated = await repository.update_run(run.id, last_console_snippet="x" * 10_000)
    assert updated.last_console_snippet == "x" * 4096


async def test_nul_characters_are_storable(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    """Regression: Postgres text/jsonb reject U+0000 that console output may contain."""
    run = make_run(
        last_console_snippet="a\x00b",
        summary={"validation": {"issues_by_code": {"bad\x00code": 1}}},
        failure={"stage": "run", "code": "x", "message": "nul \x00 here"},
    )
    await repository.insert_run(run)
    stored = await repository.get_run(run.id)
    assert stored.last_console_snippet == "a\ufffdb"
    assert stored.summary == {"validation": {"issues_by_code": {"bad\ufffdcode": 1}}}
    assert stored.failure is not None
    assert stored.failure["message"] == "nul \ufffd here"


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_driver_errors_become_database_errors(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "sqlite":
        (tmp_path / "db").mkdir()
        url = f"sqlite:///{tmp_path / 'db'}"  # a directory is not a database file
    else:
        request.getfixturevalue("postgres_available")
        url = "postgresql://postgres@127.0.0.1:5432/runevents_no_such_database"
    database = create_engine(url)  # no connection yet: open_database would fail first
    repository = RunRepository(database)
    try:
        with pytest.raises(DatabaseError, match="the database failed") as caught:
            await repository.get_run("run_01JAAAAAAAAAAAAAAAAAAAAAAA")
        assert "SELECT" not in str(caught.value)  # no SQL text in the message
        with pytest.raises(DatabaseError):
            await repository.claim_queued("w1", 30)
    finally:
        await database.close()
        await _aiosqlite_threads_gone()


async def _aiosqlite_threads_gone() -> None:
    """Wait for aiosqlite's worker threads of failed connections to finish.

    aiosqlite (0.22) stops the thread of a connection that failed to open with
    a future nobody awaits; if the test's loop closes first, the thread raises
    "Event loop is closed".
    """
    for _ in range(200):
        if not any("_connection_worker_thread" in t.name for t in threading.enumerate()):
            return
        await asyncio.sleep(0.01)


async def test_upsert_inserts_then_overwrites_every_column_but_the_leases(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    """Reindex upserts rows from logs; who runs a job is not in its log (defect 9)."""
    run = make_run(status=RunStatus.RUNNING, lease_owner="w1", summary={"a": 1})
    await repository.upsert_run(run)
    assert await repository.get_run(run.id) == run
    rebuilt = run.evolve(
        status=RunStatus.FAILED,
        lease_owner=None,
        summary=None,
        completed_at=utcnow(),
        event_count=42,
        failure={"stage": "run", "code": "orphaned", "message": "no writer"},
    )
    await repository.upsert_run(rebuilt)
    assert await repository.get_run(run.id) == rebuilt.evolve(lease_owner="w1")
