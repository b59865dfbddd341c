"""The worker executes configured runs: success, failure, missing command, cancel, lost worker."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from unittest.mock import AsyncMock

import pytest

from runevents.app import App
from runevents.events import decode_event
from runevents.models import Run, RunStatus, utcnow
from runevents.settings import Settings
from runevents.worker import Worker
from tests.integration.manager.conftest import wait_ended


async def wait_running(app: App, run: Run) -> None:
    """Until the worker runs ``run`` (its row says running and this process holds it)."""
    for _ in range(200):
        current = await app.manager.repo.get_run(run.id)
        if current.status is RunStatus.RUNNING and app.manager.held.get(run.id):
            return
        await asyncio.sleep(0.05)


async def events_of(app: App, run: Run) -> list[dict[str, object]]:
    out = []
    async for chunk in app.manager.read_events(run):
        for line in chunk.data.split(b"\n")[:-1]:
            e = decode_event(line)
            out.append({"type": e.type, "sequence": e.sequence, "payload": e.payload})
    return out


async def test_worker_runs_command_and_captures_console(app: App) -> None:
    worker = Worker(app.manager, concurrency=2)
    worker.start()
    try:
        run = await app.manager.create_run("acme", "hello")
        done = await wait_ended(app, run)
    finally:
        await worker.stop()
    assert done.status is RunStatus.SUCCEEDED and done.exit_code == 0
    events = await events_of(app, done)
    types = [e["type"] for e in events]
    assert types[0] == "run.queued" and types[-1] == "run.completed"
    assert "run.started" in types
    lines = [e["payload"] for e in events if e["type"] == "console.line"]
    assert {"stream": "stdout", "message": "hello"}.items() <= lines[0].items() or any(
        p.get("message") == "hello" for p in lines
    )
    assert any(p.get("stream") == "stderr" and p.get("level") == "warning" for p in lines)
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert done.summary is not None and done.summary["console"]["lines"] == 2


async def test_failing_command_ends_failed_with_exit_code(app: App) -> None:
    worker = Worker(app.manager, concurrency=1)
    worker.start()
    try:
        run = await app.manager.create_run("acme", "failing")
        done = await wait_ended(app, run)
    finally:
        await worker.stop()
    assert done.status is RunStatus.FAILED and done.exit_code == 3
    assert done.failure is not None and done.failure["stage"] == "run"


async def test_missing_command_fails_with_reason(app: App) -> None:
    worker = Worker(app.manager, concurrency=1)
    worker.start()
    try:
        run = await app.manager.create_run("acme", "missing")
        done = await wait_ended(app, run)
    finally:
        await worker.stop()
    assert done.status is RunStatus.FAILED
    assert done.failure is not None
    assert "nonexistent" in done.failure["message"]


async def test_cancel_running_run(app: App) -> None:
    worker = Worker(app.manager, concurrency=1)
    worker.start()
    try:
        run = await app.manager.create_run("acme", "sleepy")
        await wait_running(app, run)
        await app.manager.cancel_run("acme", "sleepy", run.id)
        done = await wait_ended(app, run, timeout=15)
    finally:
        await worker.stop()
    assert done.status is RunStatus.CANCELLED


async def test_lost_worker_run_is_failed_when_lease_expires(app: App) -> None:
    # a worker that claimed the run and died: lease set, nobody holds the writer
    run = await app.manager.create_run("acme", "hello")
    claimed = await app.manager.repo.claim_queued("ghost-worker", 0.05)
    assert claimed is not None and claimed.id == run.id
    await app.manager.repo.update_run(run.id, status=RunStatus.RUNNING, started_at=utcnow())
    await asyncio.sleep(0.1)
    reaped = await app.manager.reap_expired_leases()
    assert [r.id for r in reaped] in ([run.id], [])  # [] if the app's own reaper was first
    done = await app.manager.repo.get_run(run.id)
    assert done.status is RunStatus.FAILED
    assert done.failure is not None and done.failure["code"] == "worker_lost"
    assert "ghost-worker" in done.failure["message"]
    assert done.completed_at is not None and done.completed_at - utcnow() < timedelta(minutes=1)


async def test_cancel_that_read_the_row_before_the_worker_took_it_leaves_the_run_to_the_worker(
    app: App, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen in CI (the API fuzz): a cancel read the row while the run was still queued,
    # then found the run held here -- taken by this process's worker meanwhile -- and
    # completed it under the running executor. The executor's next lines hit a closed
    # writer ("executor failed") and the worker's own completion tried to seal a sealed
    # log (LifecycleError in a task nobody awaited).
    worker = Worker(app.manager, concurrency=1)
    worker.start()
    try:
        queued = await app.manager.create_run("acme", "sleepy")
        await wait_running(app, queued)
        stale = AsyncMock(return_value=queued)  # the row as the cancel read it: unclaimed
        monkeypatch.setattr(app.manager, "get_run", stale)
        signals = app.manager._cancel_signals
        signal = signals.pop(queued.id, None)  # and before the worker's signal existed
        try:
            await app.manager.cancel_run("acme", "sleepy", queued.id)
        finally:
            if signal is not None:
                signals[queued.id] = signal
        monkeypatch.undo()
        done = await wait_ended(app, queued, timeout=30)
    finally:
        await worker.stop()
    assert done.status is RunStatus.CANCELLED
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def test_cancel_that_read_the_row_before_a_worker_claimed_it_leaves_the_run_to_the_worker(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same race one step earlier: a worker has claimed the row but not yet taken
    # the run's writer. The cancel must not take the log and complete the run under it.
    queued = await app.manager.create_run("acme", "sleepy")
    claimed = await app.manager.claim_next("this-process-worker")
    assert claimed is not None and claimed.id == queued.id
    monkeypatch.setattr(app.manager, "get_run", AsyncMock(return_value=queued))
    answered = await app.manager.cancel_run("acme", "sleepy", queued.id)
    monkeypatch.undo()
    assert answered.cancel_requested is True
    assert answered.status is RunStatus.QUEUED  # the worker's to complete
    assert app.manager.held.get(queued.id) is None


@pytest.mark.parametrize("embedded", [True, False], ids=["serve-workers-0", "worker-false"])
async def test_a_run_whose_only_worker_died_is_failed_worker_lost_by_a_replica_without_workers(
    settings: Settings, embedded: bool
) -> None:
    """C2: only worker processes reaped expired leases, so with replicas started with
    ``--workers 0`` and the only worker killed, the run stayed ``running`` until a
    worker started again. Contract 10: ``worker_lost`` within lease_seconds + 10 s of
    the death, by any surviving process -- here a replica that executes nothing."""
    assert settings.worker_concurrency == 0
    replica = await App.open(settings, worker=embedded)
    try:
        assert replica.worker is None
        run = await replica.manager.create_run("acme", "hello")
        # a worker elsewhere claims it, starts it, heart-beats once ... and is killed
        claimed = await replica.manager.repo.claim_queued("dead-worker", settings.lease_seconds)
        assert claimed is not None and claimed.id == run.id
        await replica.manager.repo.update_run(run.id, status=RunStatus.RUNNING, started_at=utcnow())
        died = asyncio.get_running_loop().time()
        done = await wait_ended(replica, run, timeout=settings.lease_seconds + 10)
        took = asyncio.get_running_loop().time() - died
    finally:
        await replica.close()
    assert done.status is RunStatus.FAILED, took
    assert done.failure is not None and done.failure["code"] == "worker_lost"
    assert "dead-worker" in done.failure["message"]
    assert took <= settings.lease_seconds + 10


async def test_reindex_rebuilds_an_executed_runs_row_with_the_same_timestamps(app: App) -> None:
    """Contract 2: a row rebuilt from the log is the same row. The row's started_at was
    taken a moment before run.started was stamped, and its completed_at a moment after
    run.completed: reindex (which has only the log) moved both by a few ms."""
    from runevents.maintenance import reindex

    worker = Worker(app.manager, concurrency=1)
    worker.start()
    try:
        done = await wait_ended(app, await app.manager.create_run("acme", "hello"))
    finally:
        await worker.stop()
    stamps = ("created_at", "started_at", "completed_at")
    before = [getattr(done, k) for k in stamps]
    # a lost row: reindex rebuilds it from the log alone
    await app.manager.repo.upsert_run(done.evolve(started_at=None, completed_at=utcnow()))
    report = await reindex(app.manager)
    assert not report.errors
    after = await app.manager.repo.get_run(done.id)
    assert [getattr(after, k) for k in stamps] == before
