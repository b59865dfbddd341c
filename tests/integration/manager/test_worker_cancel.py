"""A cancel answered 202 is never lost and takes effect at once, whatever the worker is doing.

Probe 5 (High): a cancel that arrived while a worker was claiming the run -- the row
claimed, the worker between its read of the row and its cancel signal -- flagged the
row after the worker had read it, and nothing in this process signalled the worker:
the run went on and the flag was seen only at the next heartbeat (a third of the
lease, 10 s by default), so a short run ended ``succeeded``. A cancel from another
process (an API replica) of a run already running waited for that heartbeat too.

The windows are hit with gates on the worker's own steps (no sleeps and luck), and
the lease is long (heartbeat every 10 s) so that only a prompt cancel passes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from runevents.app import App
from runevents.events import decode_event
from runevents.held import HeldRun
from runevents.manager import RunManager
from runevents.models import Run, RunStatus, utcnow
from runevents.session import RunSession
from runevents.settings import Settings
from runevents.worker import Worker
from tests.integration.manager.conftest import wait_ended

#: the heartbeat comes every lease/3 = 10 s: a cancel seen only there fails PROMPT
LEASE_SECONDS = 30.0
#: how soon a cancel must have ended the run (poll 0.5 s + SIGTERM; well before 10 s)
PROMPT = 5.0


def _configs(tmp_path: Path) -> Path:
    py = sys.executable
    sleep = f'["{py}", "-c", "import time; print(\'start\', flush=True); time.sleep(60)"]'
    path = tmp_path / "cancel.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [[configuration]]
            workspace = "acme"
            id = "sleepy"
            command = {sleep}

            [[configuration]]
            workspace = "acme"
            id = "slowbuild"
            command = ["{py}", "-c", "print('command ran')"]
            [configuration.build]
            commands = [{sleep}]
            """
        )
    )
    return path


@pytest.fixture
def cancel_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        config_file=_configs(tmp_path),
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        lease_seconds=LEASE_SECONDS,
        kill_grace_seconds=1.0,
        flush_interval_ms=5,
    )


@pytest.fixture
async def api(cancel_settings: Settings) -> AsyncIterator[App]:
    """The process the cancel comes to (the API)."""
    app = await App.open(cancel_settings, worker=False)
    try:
        yield app
    finally:
        await app.close()


@pytest.fixture(params=["embedded", "standalone"])
async def executing(
    request: pytest.FixtureRequest, api: App, cancel_settings: Settings
) -> AsyncIterator[RunManager]:
    """The manager of the process whose worker executes the runs: the API's own
    (``serve`` with its embedded worker) or another process's (``runevents worker``)."""
    if request.param == "embedded":
        yield api.manager
        return
    other = await App.open(cancel_settings, worker=False)
    try:
        yield other.manager
    finally:
        await other.close()


class Gate:
    """Stops a coroutine at a step until released; says when it got there."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.open = asyncio.Event()

    async def passing(self) -> None:
        self.reached.set()
        await self.open.wait()

    async def wait_reached(self) -> None:
        await asyncio.wait_for(self.reached.wait(), 15)


def gate_start_session(monkeypatch: pytest.MonkeyPatch, manager: RunManager, gate: Gate) -> None:
    """The worker claimed the run and stops before it starts its session."""
    original = manager.start_session

    async def start_session(run: Run, worker_id: str) -> RunSession | None:
        await gate.passing()
        return await original(run, worker_id)

    monkeypatch.setattr(manager, "start_session", start_session)


def gate_take(
    monkeypatch: pytest.MonkeyPatch, manager: RunManager, source: str, gate: Gate
) -> None:
    """``source`` ("worker" / "server") stops in the middle of taking the run's log."""
    original = manager.held.take
    gated_source = source

    async def gated(run: Run, *, source: str, atomic: bool, full: bool = False) -> HeldRun:
        if source == gated_source:
            await gate.passing()
        return await original(run, source=source, atomic=atomic, full=full)

    monkeypatch.setattr(manager.held, "take", gated)


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def event_types(app: App, run: Run) -> list[str]:
    out = []
    async for chunk in app.manager.read_events(run):
        out += [decode_event(line).type for line in chunk.data.split(b"\n")[:-1]]
    return out


@pytest.mark.parametrize("window", ["claimed", "taking", "building", "running"])
async def test_a_cancel_accepted_while_the_worker_claims_the_run_was_ignored(
    api: App, executing: RunManager, monkeypatch: pytest.MonkeyPatch, window: str
) -> None:
    gate = Gate()
    if window == "claimed":
        gate_start_session(monkeypatch, executing, gate)
    elif window == "taking":
        gate_take(monkeypatch, executing, "worker", gate)
    else:
        gate.open.set()
    config = "slowbuild" if window == "building" else "sleepy"
    worker = Worker(executing, concurrency=1)
    worker.start()
    try:
        run = await api.manager.create_run("acme", config)
        if window in ("claimed", "taking"):
            await gate.wait_reached()  # claimed; the worker stopped at its step
        else:
            status = RunStatus.BUILDING if window == "building" else RunStatus.RUNNING

            async def executing_it() -> bool:
                current = await api.manager.repo.get_run(run.id)
                return current.status is status and executing.executes(run.id)

            await wait_for(executing_it)
        answered = await api.manager.cancel_run("acme", config, run.id)  # the 202
        accepted = asyncio.get_running_loop().time()
        assert answered.cancel_requested and not answered.status.ended
        gate.open.set()
        done = await wait_ended(api, run, timeout=PROMPT)
        took = asyncio.get_running_loop().time() - accepted
    finally:
        gate.open.set()
        await worker.stop()
    assert done.status is RunStatus.CANCELLED, (done.status, done.failure)
    assert took < PROMPT
    types = await event_types(api, done)
    assert types[-1] == "run.completed" and types.count("run.completed") == 1
    if window in ("claimed", "taking"):
        # the cancel came before the command started: it never starts
        assert "run.started" not in types, types
    assert not executing.executes(run.id)


async def test_a_run_a_cancel_completed_while_a_worker_took_it_is_not_executed(
    api: App,
    cancel_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The cancel path judged "nobody executes it" (the row unclaimed), then a worker
    elsewhere claimed the run and read the row (live, its own) before the cancel took
    the log and completed the run ``cancelled``; the worker took the log once the
    cancel let it go. It must let the run go, not execute a cancelled run (it did:
    "executor failed" with RunEnded when it moved the ended row to running)."""
    other = await App.open(cancel_settings, worker=False)
    try:
        server, taking = Gate(), Gate()
        gate_take(monkeypatch, api.manager, "server", server)
        gate_take(monkeypatch, other.manager, "worker", taking)
        run = await api.manager.create_run("acme", "sleepy")
        cancel = asyncio.create_task(api.manager.cancel_run("acme", "sleepy", run.id))
        await server.wait_reached()  # judged unclaimed; about to take the log
        worker = Worker(other.manager, concurrency=1)
        worker.start()
        try:
            await taking.wait_reached()  # claimed, read the row; about to take the log
            server.open.set()
            answered = await cancel
            assert answered.status is RunStatus.CANCELLED  # completed by the cancel
            taking.open.set()
            await wait_for(lambda: _idle(worker))
        finally:
            server.open.set()
            taking.open.set()
            await worker.stop()
        done = await other.manager.repo.get_run(run.id)
        assert done.status is RunStatus.CANCELLED
        types = await event_types(api, done)
        assert "run.started" not in types and types.count("run.completed") == 1, types
        assert other.manager.held.get(run.id) is None and not other.manager.executes(run.id)
        # it let the run go (said once); nothing failed under a command it started
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not [r.getMessage() for r in errors if r.exc_info or "failed" in r.getMessage()]
    finally:
        await other.close()


async def _idle(worker: Worker) -> bool:
    return not worker._tasks


async def test_a_worker_lost_runs_scratch_directory_is_removed_when_it_is_reaped(
    api: App, cancel_settings: Settings
) -> None:
    """``tmp/run_*/options.json`` stayed behind after ``worker_lost`` runs: the worker
    killed mid-run could not remove it; the reaper sharing its data dir does."""
    run = await api.manager.create_run("acme", "sleepy")
    claimed = await api.manager.repo.claim_queued("killed-worker", 0.05)
    assert claimed is not None and claimed.id == run.id
    await api.manager.repo.update_run(run.id, status=RunStatus.RUNNING, started_at=utcnow())
    scratch = cancel_settings.data_dir.resolve() / "tmp" / run.id
    scratch.mkdir(parents=True)
    (scratch / "options.json").write_text("{}")
    await asyncio.sleep(0.1)
    await api.manager.reap_expired_leases("reaper")
    done = await api.manager.repo.get_run(run.id)
    assert done.status is RunStatus.FAILED and done.failure is not None
    assert done.failure["code"] == "worker_lost"
    assert not scratch.exists()


async def test_a_starting_worker_removes_the_scratch_directories_of_ended_runs_only(
    api: App, cancel_settings: Settings
) -> None:
    """A worker with its own data dir whose run another process reaped: its restart
    removes what it left; a live run's directory (a worker sharing the dir) stays."""
    ended = await api.manager.create_run("acme", "sleepy")
    await api.manager.cancel_run("acme", "sleepy", ended.id)
    live = await api.manager.create_run("acme", "sleepy")
    root = cancel_settings.data_dir.resolve() / "tmp"
    for name in (ended.id, live.id, "not-a-run"):
        (root / name).mkdir(parents=True)
        (root / name / "options.json").write_text("{}")
    assert await api.manager.remove_ended_scratch_dirs() == 1
    assert not (root / ended.id).exists()
    assert (root / live.id).exists() and (root / "not-a-run").exists()
