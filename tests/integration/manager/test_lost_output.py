"""A full disk drops an executed run's output: the log says so, and reindex keeps the flag.

An executed run's writer buffers its lines while writes fail and, once its retry
buffer is full, drops further lines (``write_failure.py``). The log then holds a
marker where they are missing (a ``console.line`` of the server's with
``lost_lines``), the row says ``logging_degraded``, and a row rebuilt from the log
(``reindex``) says it too. Faults go through the OS-call seam (``FileOps``), and once
through a real tmpfs filled to ENOSPC; on SQLite and Postgres (``database_url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from runevents.app import App
from runevents.db.tables import runs
from runevents.events import Event, EventDraft, decode_event
from runevents.maintenance import reindex
from runevents.models import Run, RunStatus
from runevents.session import RunSession
from runevents.settings import Settings
from runevents.worker import Worker
from tests.acceptance.conftest import small_tmpfs  # noqa: F401  (the real-disk fixture)
from tests.fixtures.faults import FaultyOps
from tests.integration.maintenance.conftest import row_view
from tests.integration.manager.conftest import started_session

#: a retry buffer this small fills with a few dozen lines
BUFFER_BYTES = 4096


def console(message: str) -> EventDraft:
    return EventDraft(
        type="console.line",
        payload={"scope": "run", "stream": "stdout", "level": "info", "message": message},
    )


async def events_of(app: App, run: Run) -> list[Event]:
    return [
        decode_event(line)
        async for chunk in app.manager.read_events(run)
        for line in chunk.data.split(b"\n")[:-1]
    ]


def lost_in(event: Event) -> int:
    """The count of a lost-lines marker (the server's console line with ``lost_lines``),
    else 0. (Read here, not with ``write_failure.lost_lines``, so the test runs on the
    code before the fix and fails on what it finds.)"""
    count = event.payload.get("lost_lines") if event.type == "console.line" else None
    return count if event.source == "server" and isinstance(count, int) else 0


def markers(events: list[Event]) -> list[tuple[int, int]]:
    """(index in ``events``, lines it says were lost) of each lost-lines marker."""
    found = [(i, lost_in(e)) for i, e in enumerate(events)]
    return [(i, n) for i, n in found if n]


@pytest.fixture
def ops(app: App) -> FaultyOps:
    """Faults for every writer the app opens from now on, with a small retry buffer."""
    faulty = FaultyOps()
    m = app.manager
    m.log.file_ops = faulty
    m.log.config = dataclasses.replace(m.log.config, max_buffer_bytes=BUFFER_BYTES)
    return faulty


async def lose_lines(app: App, ops: FaultyOps) -> tuple[RunSession, int]:
    """An executed run whose writes fail ENOSPC long enough to drop lines, then work
    again; returns its session and how many lines were dropped."""
    session = await started_session(app)
    await session.emit([console("before")])
    await session.writer.sync()
    ops.error = errno.ENOSPC
    for i in range(60):
        await session.emit([console(f"lost {i} " + "x" * 200)])
        await session.writer.flush()  # the policy's flush, failing at once
    dropped = session.writer.dropped_events
    assert dropped > 0 and session.run.logging_degraded
    ops.error = None
    await session.writer.flush()  # (the retry timer's) writes work again
    await session.emit([console("after")])
    return session, dropped


async def test_a_full_disk_dropped_executed_output_without_a_trace(
    app: App, ops: FaultyOps
) -> None:
    """The dropped lines left no trace: the log jumped from one line to a later one, and
    the summary did not say either. Now a marker stands in the gap, written by the
    server, counted by the summary as the console line it is (contract 2.1)."""
    session, dropped = await lose_lines(app, ops)
    done = await session.complete(status="succeeded", failure=None, execution=None)
    assert done.logging_degraded and done.status is RunStatus.SUCCEEDED
    events = await events_of(app, done)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    [(at, count)] = markers(events)
    assert count == dropped
    marker = events[at]
    assert marker.source == "server"
    assert {k: marker.payload[k] for k in ("scope", "stream", "level", "logger")} == {
        "scope": "run",
        "stream": "stderr",
        "level": "warning",
        "logger": "runevents",
    }
    assert marker.payload["message"] == (
        f"runevents: {dropped:,} lines of output were lost: "
        "the log could not be written (No space left on device)"
    )
    # where they are missing: after the last line kept, before the first one after
    kept = [
        e.payload["message"].split()[1]
        for e in events[:at]
        if e.type == "console.line" and e.payload["message"].startswith("lost ")
    ]
    assert kept == [str(i) for i in range(len(kept))]
    assert len(kept) + dropped == 60
    assert events[at + 1].payload["message"] == "after"
    # the summary counts it like any console line, and nothing more
    summary = done.summary
    assert summary is not None
    lines = sum(e.type == "console.line" for e in events)
    assert summary["console"]["lines"] == lines == len(kept) + 3  # before, marker, after
    assert summary["console"]["by_stream"] == {"stdout": lines - 1, "stderr": 1}
    assert summary["console"]["by_level"] == {"info": lines - 1, "warning": 1}
    assert (summary["console"]["truncated"], summary["console"]["masked"]) == (0, 0)
    assert events[-1].payload["summary"] == summary


async def test_reindex_reset_logging_degraded(app: App, ops: FaultyOps) -> None:
    """``logging_degraded`` lived only in the row: reindex, which rebuilds rows from the
    logs alone, set it back to false. The marker in the log is what it reads now, so
    the rebuilt row is the same row -- from a row that lost the flag too."""
    session, _ = await lose_lines(app, ops)
    done = await session.complete(status="succeeded", failure=None, execution=None)
    assert done.logging_degraded
    m = app.manager
    report = await reindex(m)
    assert not report.errors
    rebuilt = await m.repo.get_run(done.id)
    assert rebuilt.logging_degraded
    assert row_view(rebuilt) == row_view(done)
    await m.repo.upsert_run(done.evolve(logging_degraded=False))  # a damaged row
    assert not (await reindex(m)).errors
    assert (await m.repo.get_run(done.id)).logging_degraded


async def test_reindex_reset_logging_degraded_of_a_live_run_whose_row_was_lost(
    app: App, ops: FaultyOps
) -> None:
    """The same for a run whose log has no run.completed (its worker let it go) and whose
    row was lost with the database: the live row reindex rebuilds says so (and whoever
    completes the run keeps the row's flag: ``HeldRun.settle``)."""
    session, _ = await lose_lines(app, ops)
    run_id = session.run.id
    await session.abandon()
    async with app.database.engine.begin() as conn:
        await conn.execute(sa.delete(runs).where(runs.c.id == run_id))
    assert not (await reindex(app.manager)).errors
    rebuilt = await app.manager.repo.get_run(run_id)
    assert not rebuilt.status.ended and rebuilt.event_count == session.writer.durable_sequence
    assert rebuilt.logging_degraded


async def test_reindex_keeps_logging_degraded_off_for_a_jobs_look_alike_marker(
    app: App,
) -> None:
    """A job may print a structured console.line with ``lost_lines``: it is the job's
    (source ``worker``), not the server's marker, and the run lost nothing."""
    m = app.manager
    session = await started_session(app)
    look_alike = console("runevents: 5 lines of output were lost")
    look_alike.payload.update(logger="runevents", lost_lines=5)
    await session.emit([look_alike])
    done = await session.complete(status="succeeded", failure=None, execution=None)
    assert not done.logging_degraded
    assert not (await reindex(m)).errors
    assert not (await m.repo.get_run(done.id)).logging_degraded


# ---------------------------------------------------------------------------- a real disk


def fill(mount: Path) -> Path:
    """Fill the tmpfs to ENOSPC; returns the filler file (unlink it to free the space)."""
    filler = mount / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)
    return filler


@pytest.fixture
async def disk_app(
    tmp_path: Path,
    database_url: str,
    small_tmpfs: Path,  # noqa: F811
) -> AsyncIterator[App]:
    """An app whose data dir is a small real tmpfs (its database elsewhere), with a
    job that prints numbered lines until ``tmp_path / "stop"`` exists."""
    job = tmp_path / "job.py"
    job.write_text(
        "import os, sys, time\n"
        "i = 0\n"
        "while not os.path.exists(sys.argv[1]):\n"
        "    print(f'line {i} ' + 'x' * 200, flush=True)\n"
        "    i += 1\n"
        "    time.sleep(0.002)\n"
    )
    config = tmp_path / "runevents.toml"
    config.write_text(
        '[[configuration]]\nworkspace = "acme"\nid = "job"\n'
        f'command = ["{sys.executable}", "{job}", "{tmp_path / "stop"}"]\n'
    )
    settings = Settings(
        data_dir=small_tmpfs / "data",
        database_url=database_url,
        config_file=config,
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        lease_seconds=5.0,
        kill_grace_seconds=1.0,
        flush_interval_ms=5,
    )
    app = await App.open(settings, worker=False)
    m = app.manager
    m.log.config = dataclasses.replace(m.log.config, max_buffer_bytes=64 * 1024)
    try:
        yield app
    finally:
        await app.close()


async def until(check: Any, what: str, timeout: float = 30.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := await check()):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return result


async def test_a_full_disk_dropped_executed_output_without_a_trace_on_a_real_disk(
    disk_app: App,
    tmp_path: Path,
    small_tmpfs: Path,  # noqa: F811
) -> None:
    """End to end: a job prints while its data dir's disk fills up (a real tmpfs,
    ENOSPC from the kernel) past the retry buffer, and then gets space back. The log
    holds a marker exactly where the lines are missing, saying how many; the row says
    ``logging_degraded``, and so does the row reindex rebuilds from the log."""
    m = disk_app.manager
    worker = Worker(m, concurrency=1)
    worker.start()
    try:
        run = await m.create_run("acme", "job")

        async def writing() -> Any:
            held = m.held.get(run.id)
            return held is not None and held.writer.durable_sequence > 20 and held.writer

        writer = await until(writing, "the job's first lines")
        filler = fill(small_tmpfs)
        try:
            await until(lambda: asyncio.sleep(0, writer.dropped_events > 100), "dropped lines")
        finally:
            filler.unlink()

        async def marked() -> bool:
            return bool(markers(await events_of(disk_app, run)))

        await until(marked, "the marker, once writes work again")
        (tmp_path / "stop").touch()

        async def ended() -> Any:
            row = await m.repo.get_run(run.id)
            return row.status.ended and row.log_state.value != "live" and row

        done = await until(ended, "the end of the run")
    finally:
        await worker.stop()
    assert (done.status, done.exit_code) == (RunStatus.SUCCEEDED, 0), done.failure
    assert done.logging_degraded
    events = await events_of(disk_app, done)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events].count("run.completed") == 1
    found = markers(events)
    assert sum(n for _, n in found) == writer.dropped_events
    for at, count in found:
        # the job's own numbers: the line before the marker and the one after it are
        # ``count`` lines apart
        before = int(events[at - 1].payload["message"].split()[1])
        after = int(events[at + 1].payload["message"].split()[1])
        assert after - before - 1 == count, (before, after, count)
    numbers = [
        int(e.payload["message"].split()[1])
        for e in events
        if e.type == "console.line" and not lost_in(e)
    ]
    assert len(numbers) + writer.dropped_events == numbers[-1] + 1  # nothing else missing
    assert done.summary is not None
    assert done.summary["console"]["lines"] == len(numbers) + len(found)
    assert done.summary["console"]["by_level"].get("warning") == len(found)
    assert events[-1].payload["summary"] == done.summary
    assert not (await reindex(m)).errors
    rebuilt = await m.repo.get_run(done.id)
    assert rebuilt.logging_degraded
    assert row_view(rebuilt) == row_view(done)
