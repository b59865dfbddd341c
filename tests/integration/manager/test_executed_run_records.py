"""What an executed run's row and run.completed say: who may claim it, when it started,
how a lost worker's run ended. On SQLite and Postgres.

Three defects:

- a worker that did not have a queued run's configuration claimed it anyway and
  failed it ``configuration_not_found``; with workers that load different
  configuration files on one database, the run must wait for a worker that has it;
- a run that never started (cancelled while queued, its build step failed) got a
  ``started_at`` (the completion's instant, and reindex copied ``completed_at``);
  contract 2.1: ``execution.started_at`` is the first run.started's ``created_at``,
  null without one, and the row's ``started_at`` with it;
- the run.completed written for ``worker_lost`` had no ``execution`` object
  (contract 2: every run.completed carries one).
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from runevents.app import App
from runevents.events import EventDraft, decode_event
from runevents.models import Run, RunStatus, parse_timestamp, rfc3339, utcnow
from runevents.worker import IDLE_POLL_SECONDS, Worker
from tests.integration.manager.conftest import settings_with, wait_ended

PY = sys.executable
CONFIGS = {
    "hello": f'command = ["{PY}", "-c", "print(\'hello\')"]',
    "elsewhere": f'command = ["{PY}", "-c", "print(\'ran where it belongs\')"]',
    "badbuild": textwrap.dedent(
        f"""\
        command = ["{PY}", "-c", "print('never runs')"]
        [configuration.build]
        commands = [["{PY}", "-c", "import sys; print('compiling'); sys.exit(2)"]]
        """
    ),
}


def config_file(path: Path, *names: str) -> Path:
    """A configurations file holding ``names`` (of ``CONFIGS``), all in workspace acme."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = [
        f'[[configuration]]\nworkspace = "acme"\nid = "{name}"\n{CONFIGS[name]}\n' for name in names
    ]
    path.write_text("\n".join(blocks))
    return path


@pytest.fixture
async def api(tmp_path: Path, database_url: str) -> AsyncIterator[App]:
    """A server (no worker of its own) that has every configuration."""
    config = config_file(tmp_path / "all.toml", *CONFIGS)
    app = await App.open(settings_with(tmp_path, database_url, config), worker=False)
    try:
        yield app
    finally:
        await app.close()


async def events_of(app: App, run: Run) -> list[Any]:
    out = []
    async for chunk in app.manager.read_events(run):
        out += [decode_event(line) for line in chunk.data.split(b"\n")[:-1]]
    return out


async def test_a_worker_without_the_configuration_failed_the_run(
    api: App, tmp_path: Path, database_url: str
) -> None:
    """Two workers on one database, loading different configuration files: the one
    without ``elsewhere`` claimed its run (the oldest queued) and failed it
    ``configuration_not_found``. It must leave it queued for the worker that has it."""
    partial = config_file(tmp_path / "partial.toml", "hello")
    other = await App.open(settings_with(tmp_path, database_url, partial), worker=False)
    try:
        waiting = await api.manager.create_run("acme", "elsewhere")
        worker = Worker(other.manager, concurrency=1)
        worker.start()
        try:
            # a later run of its own configuration: it claims past the waiting one
            mine = await wait_ended(api, await api.manager.create_run("acme", "hello"))
            await asyncio.sleep(IDLE_POLL_SECONDS * 4)  # a few more claim rounds
            left = await api.manager.repo.get_run(waiting.id)
        finally:
            await worker.stop()
        assert mine.status is RunStatus.SUCCEEDED
        assert (left.status, left.lease_owner, left.failure) == (RunStatus.QUEUED, None, None)
        assert [e.type for e in await events_of(api, left)] == ["run.queued"]
        # the worker that has the configuration runs it
        full = Worker(api.manager, concurrency=1)
        full.start()
        try:
            done = await wait_ended(api, waiting)
        finally:
            await full.stop()
        assert done.status is RunStatus.SUCCEEDED, done.failure
        lines = [e.payload.get("message") for e in await events_of(api, done)]
        assert "ran where it belongs" in lines
    finally:
        await other.close()


async def _cancelled_while_queued(api: App) -> Run:
    run = await api.manager.create_run("acme", "elsewhere")  # no worker runs anything
    await api.manager.cancel_run("acme", "elsewhere", run.id)
    return await wait_ended(api, run)


async def _external_cancelled_before_a_batch(api: App) -> Run:
    run = await api.manager.create_run("acme", "ext", external=True)
    await api.manager.cancel_run("acme", "ext", run.id)
    return await wait_ended(api, run)


async def _build_failed(api: App) -> Run:
    worker = Worker(api.manager, concurrency=1)
    worker.start()
    try:
        return await wait_ended(api, await api.manager.create_run("acme", "badbuild"))
    finally:
        await worker.stop()


NEVER_STARTED = {
    "cancelled_while_queued": (_cancelled_while_queued, RunStatus.CANCELLED),
    "external_cancelled_before_a_batch": (_external_cancelled_before_a_batch, RunStatus.CANCELLED),
    "build_failed": (_build_failed, RunStatus.FAILED),
}


@pytest.mark.parametrize("case", list(NEVER_STARTED))
async def test_started_at_was_set_for_runs_that_never_started(api: App, case: str) -> None:
    """The row got ``started_at`` = its completion's instant (``HeldRun.settle``), and
    reindex gave it ``completed_at``; the log holds no run.started, so it is null."""
    from runevents.maintenance import reindex

    make, status = NEVER_STARTED[case]
    done = await make(api)
    assert done.status is status, done.failure
    events = await events_of(api, done)
    assert "run.started" not in [e.type for e in events]
    assert done.started_at is None
    assert done.summary is not None and done.summary["execution"]["started_at"] is None
    assert done.summary["execution"]["duration_ms"] is None
    # reindex, which has only the log, rebuilds the same row
    await api.manager.repo.upsert_run(done.evolve(started_at=utcnow()))
    report = await reindex(api.manager)
    assert not report.errors
    assert (await api.manager.repo.get_run(done.id)).started_at is None


async def test_a_run_that_ran_started_at_its_run_started(api: App) -> None:
    """The other side of the rule above: a run whose command ran started when its
    run.started says, in the row, the summary and run.completed alike."""
    worker = Worker(api.manager, concurrency=1)
    worker.start()
    try:
        done = await wait_ended(api, await api.manager.create_run("acme", "hello"))
    finally:
        await worker.stop()
    assert done.status is RunStatus.SUCCEEDED
    events = await events_of(api, done)
    started = next(e for e in events if e.type == "run.started")
    assert done.started_at == parse_timestamp(started.created_at)
    assert done.summary is not None
    assert done.summary["execution"]["started_at"] == started.created_at
    assert events[-1].payload["execution"]["started_at"] == started.created_at


@pytest.mark.parametrize("started", [True, False], ids=["after_run_started", "before_it"])
async def test_the_run_completed_written_for_worker_lost_had_no_execution(
    api: App, started: bool
) -> None:
    """A worker claims a run, takes its log (and maybe starts the command), and dies.
    The reaper's run.completed said ``failed`` / ``worker_lost`` with no ``execution``;
    contract 2: ``{exit_code: null, started_at: run.started's created_at or null,
    completed_at, duration_ms}``, as every run.completed."""
    run = await api.manager.create_run("acme", "hello")
    claimed = await api.manager.claim_next("killed-worker")
    assert claimed is not None and claimed.id == run.id
    session = await api.manager.start_session(claimed, "killed-worker")
    assert session is not None
    if started:
        at = utcnow()
        await session.set_status(RunStatus.RUNNING, at=at)
        await session.emit(
            [EventDraft(type="run.started", created_at=rfc3339(at), payload={"status": "running"})]
        )
    await session.abandon()  # the worker is gone: no heartbeat, its lease lapses
    done = await wait_ended(api, run, timeout=api.settings.lease_seconds + 10)
    assert done.status is RunStatus.FAILED
    assert done.failure is not None and done.failure["code"] == "worker_lost"
    events = await events_of(api, done)
    completed = events[-1]
    assert completed.type == "run.completed"
    run_started = [e.created_at for e in events if e.type == "run.started"]
    assert len(run_started) == (1 if started else 0)
    start = run_started[0] if started else None
    duration = None
    if start is not None:
        elapsed = parse_timestamp(completed.created_at) - parse_timestamp(start)
        duration = elapsed // timedelta(milliseconds=1)
    expected = {
        "exit_code": None,
        "started_at": start,
        "completed_at": completed.created_at,
        "duration_ms": duration,
    }
    assert completed.payload.get("execution") == expected
    assert done.summary is not None and done.summary["execution"] == expected
    assert done.started_at == (parse_timestamp(start) if start else None)
