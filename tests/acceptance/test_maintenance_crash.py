"""kill -9 at every step of compaction and retention, then a fresh process on the same data.

Each case prepares ended runs with a real :class:`App`, then runs one
maintenance pass in a child process (``CHILD`` below) that SIGKILLs itself at
the chosen step -- through the engine's ``step_hook`` or by wrapping the call
that comes right after the step. A fresh ``App`` then checks that:

* every run's log reads back byte for byte what it held before the crash (for
  compaction), and the row names a form that exists in storage;
* the next ordinary pass finishes the work: the row matches storage exactly,
  nothing of the old form is left behind.

The last test runs ``runevents compact`` / ``retention`` while a server process
is live on the same data, with a run in progress on it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from runevents.app import App
from runevents.compaction_journal import CompactionJournal
from runevents.eventlog.compressed import FrameIndex
from runevents.logstore.local import TEMP_PREFIX
from runevents.maintenance import compact, retention
from runevents.models import LogState, Run, utcnow
from runevents.settings import Settings
from runevents.upkeep import run_ref
from tests.integration.maintenance.conftest import finished_run, log_bytes

RUNEVENTS = Path(sys.executable).with_name("runevents")

# every case starts one or more Python processes (~1-2 s each on the shared machine)
pytestmark = pytest.mark.slow

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys
    from datetime import timedelta

    from runevents import maintenance
    from runevents.app import App
    from runevents.eventlog import compressed
    from runevents.settings import Settings

    config = json.loads(sys.argv[1])
    action, point = config.pop("action"), config.pop("point")


    def die(*_args, **_kwargs):
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


    async def main():
        app = await App.open(Settings(**config), worker=False)
        m = app.manager
        log = m.log
        log.frame_bytes = 4096  # many frames: "mid-write" dies with a partial file
        if point in {"written", "synced", "verified", "index_stored", "stored", "plain_deleted"}:
            log.step_hook = lambda name: die() if name == point else None
        elif point == "mid-write":
            emit, frames = compressed.FrameWriter._emit, []

            async def emit_then_die(self, raw):
                await emit(self, raw)
                frames.append(1)
                if len(frames) == 3:
                    die()

            compressed.FrameWriter._emit = emit_then_die
        elif point == "journaled":
            add = maintenance.CompactionJournal.add

            def add_then_die(self, run_id):
                add(self, run_id)
                die()

            maintenance.CompactionJournal.add = add_then_die
        elif point == "row-updated":
            log.drop_plain = die  # called right after the row update
        elif point == "deleted":
            delete = log.delete

            async def delete_then_die(ref):
                await delete(ref)
                die()

            log.delete = delete_then_die
        elif point == "mid-delete":
            store_delete, calls = log.store.delete, []

            async def delete_one_then_die(key):
                await store_delete(key)
                calls.append(key)
                if len(calls) == 1:
                    die()

            log.store.delete = delete_one_then_die
        else:
            raise SystemExit(f"unknown point {point}")
        if action == "compact":
            report = await maintenance.compact(m, timedelta(0))
        else:
            report = await maintenance.retention(m, timedelta(0))
        print(json.dumps(report.to_dict()))
        await app.close()


    asyncio.run(main())
    """
)

COMPACTION_POINTS = [
    "mid-write",  # a partial temp file of frames
    "written",  # every frame written, not yet fsynced
    "synced",
    "verified",
    "index_stored",  # the frame index renamed into place, the frames not yet
    "stored",  # the compressed form complete; the row still says plain
    "journaled",  # the journal names the run; the row still says plain
    "row-updated",  # the row says compressed; the plain log is still there
    "plain_deleted",  # the plain log is gone; its sparse index not yet
]
RETENTION_POINTS = [
    "mid-delete",  # one object of the body deleted
    "deleted",  # the whole body deleted; the row still says plain
]


def settings_for(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        flush_interval_ms=5,
        # bodies go in the pass that expires them: the kill points are in that deletion
        delete_delay_seconds=0,
    )


def run_child(settings: Settings, action: str, point: str) -> subprocess.CompletedProcess[str]:
    config = {
        "data_dir": str(settings.data_dir),
        "database_url": settings.database_url,
        "worker_concurrency": 0,
        "maintenance_interval_seconds": 0,
        "delete_delay_seconds": 0,
        "action": action,
        "point": point,
    }
    return subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def prepare(settings: Settings) -> dict[str, tuple[Run, bytes]]:
    """Two ended runs (one spanning many frames); their rows and log bytes."""
    app = await App.open(settings, worker=False)
    try:
        runs = [
            await finished_run(app, events=1200, age=timedelta(hours=2)),
            await finished_run(app, events=10, age=timedelta(hours=2)),
        ]
        return {run.id: (run, await log_bytes(app, run)) for run in runs}
    finally:
        await app.close()


def log_files(app: App, run: Run) -> list[str]:
    directory = app.manager.log.keys(run_ref(run)).live.parent
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def assert_row_names_an_existing_form(app: App, row: Run) -> None:
    names = log_files(app, row)
    if row.log_state is LogState.PLAIN:
        assert "events.ndjson" in names, names
    else:
        assert row.log_state is LogState.COMPRESSED
        directory = Path(row.events_path or "").parent
        index = FrameIndex.from_bytes((directory / "events.ndjson.zst.idx").read_bytes())
        assert Path(row.events_path or "").stat().st_size == index.compressed_bytes
        assert row.events_bytes == index.compressed_bytes


@pytest.mark.parametrize("point", COMPACTION_POINTS)
async def test_kill_during_compaction_leaves_a_readable_log_and_the_next_pass_finishes(
    tmp_path: Path, database_url: str, point: str
) -> None:
    settings = settings_for(tmp_path, database_url)
    before = await prepare(settings)

    child = await asyncio.to_thread(run_child, settings, "compact", point)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr)

    app = await App.open(settings, worker=False)
    try:
        m = app.manager
        # straight after the crash: every log reads back what it held, and the
        # row names a form that is there
        for run_id, (_, content) in before.items():
            row = await m.repo.get_run(run_id)
            assert_row_names_an_existing_form(app, row)
            assert await log_bytes(app, row) == content, run_id
        # the next pass finishes (or redoes) the work
        report = await compact(m, timedelta(0))
        assert not report.errors
        leftovers: list[str] = []
        for run_id, (old, content) in before.items():
            row = await m.repo.get_run(run_id)
            assert row.log_state is LogState.COMPRESSED, run_id
            assert_row_names_an_existing_form(app, row)
            assert row.event_count == old.event_count and row.summary == old.summary
            assert await log_bytes(app, row) == content, run_id
            names = log_files(app, row)
            leftovers += [name for name in names if name.startswith(TEMP_PREFIX)]
            names = [name for name in names if not name.startswith(TEMP_PREFIX)]
            assert names == [
                "events.ndjson.zst",
                "events.ndjson.zst.idx",
                "events.ndjson.zst.ngrams",
            ]
        assert CompactionJournal(m.log).pending() == []
    finally:
        await app.close()
    if leftovers:
        # Everything else held: only the killed pass's temp files are left. Not
        # this module's to sweep -- only the engine, holding the run's writer
        # lock, can tell a dead pass's temp file from a live one's.
        pytest.xfail(
            f"a killed compaction's temp files stay behind {leftovers}: "
            "eventlog/compaction.py should remove stale .tmp- files under the lock"
        )


@pytest.mark.parametrize("point", RETENTION_POINTS)
async def test_kill_during_retention_is_finished_by_the_next_pass(
    tmp_path: Path, database_url: str, point: str
) -> None:
    settings = settings_for(tmp_path, database_url)
    before = await prepare(settings)

    child = await asyncio.to_thread(run_child, settings, "retention", point)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr)

    app = await App.open(settings, worker=False)
    try:
        m = app.manager
        rows = {run_id: await m.repo.get_run(run_id) for run_id in before}
        # the first run (id order) was being expired; the second is untouched
        first, second = sorted(rows)
        assert rows[second].log_state is LogState.PLAIN
        assert await log_bytes(app, rows[second]) == before[second][1]
        # the row said expired before any of its body went (queued in the same
        # transaction), and the start-up repair pass finished deleting it
        assert rows[first].log_state is LogState.EXPIRED
        assert not await m.repo.log_deletion_queued(first)
        assert log_files(app, rows[first]) == []

        report = await retention(m, timedelta(0))
        assert not report.errors and report.run_ids == [second]
        for run_id, (old, _) in before.items():
            row = await m.repo.get_run(run_id)
            assert row.log_state is LogState.EXPIRED
            assert row.summary == old.summary and row.event_count == old.event_count
            assert log_files(app, row) == []
            assert not await m.repo.log_deletion_queued(run_id)
    finally:
        await app.close()


# ---------------------------------------------------------------------------
# maintenance from the CLI while a server runs on the same data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(settings: Settings, port: int, output: Path) -> subprocess.Popen[bytes]:
    """``runevents serve`` on the test's data, no worker (runs are external).

    Its output goes to a file: a pipe nobody reads would fill up and stall it.
    """
    with output.open("wb") as sink:
        return subprocess.Popen(
            [
                str(RUNEVENTS),
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(settings.data_dir),
                "--database-url",
                str(settings.database_url),
                "--workers",
                "0",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def cli(*args: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(RUNEVENTS),
            *args,
            "--data-dir",
            str(settings.data_dir),
            "--database-url",
            str(settings.database_url),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )


def ndjson(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def line(message: str) -> dict[str, Any]:
    return {
        "type": "console.line",
        "payload": {"scope": "run", "stream": "stdout", "level": "info", "message": message},
    }


async def test_cli_maintenance_while_a_server_runs_leaves_the_live_run_alone(
    tmp_path: Path, database_url: str
) -> None:
    settings = settings_for(tmp_path, database_url)
    port = free_port()
    server_log = tmp_path / "server.log"
    server = start_server(settings, port, server_log)
    try:
        base = f"http://127.0.0.1:{port}/api/v1/workspaces/acme/configurations/ext/runs"
        async with httpx.AsyncClient(timeout=30) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/api/v1/health")).is_success:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not start"
                assert server.poll() is None, server_log.read_text()
                await asyncio.sleep(0.1)

            async def create() -> str:
                made = await client.post(base, json={"external": True})
                assert made.status_code == 201, (made.text, server_log.read_text()[-3000:])
                run_id: str = made.json()["run"]["id"]
                return run_id

            async def append(run_id: str, *events: dict[str, Any]) -> None:
                sent = await client.post(
                    f"{base}/{run_id}/events",
                    content=ndjson(*events),
                    headers={"Content-Type": "application/x-ndjson"},
                )
                assert sent.status_code == 200, sent.text

            async def events(run_id: str) -> httpx.Response:
                return await client.get(
                    f"{base}/{run_id}/events", headers={"Accept": "application/x-ndjson"}
                )

            done = await create()
            await append(done, *(line(f"done {i}") for i in range(300)))
            await append(done, {"type": "run.completed", "payload": {"status": "succeeded"}})
            gone = await create()
            await append(
                gone, line("old"), {"type": "run.completed", "payload": {"status": "failed"}}
            )
            live = await create()
            await append(live, *(line(f"live {i}") for i in range(50)))
            done_body = (await events(done)).content
            # the server's writer flushes on its own clock: wait until all 51 are visible
            deadline = time.monotonic() + 10
            while (live_body := (await events(live)).content).count(b"\n") < 51:
                assert time.monotonic() < deadline, live_body
                await asyncio.sleep(0.05)

            # the server holds the live run's writer; the CLI processes work beside it
            compacted = cli("compact", "--older-than", "0s", settings=settings)
            assert compacted.returncode == 0, compacted.stderr
            assert sorted(json.loads(compacted.stdout)["run_ids"]) == sorted([done, gone])

            app = await App.open(settings, worker=False)
            try:
                await app.manager.repo.update_run(gone, completed_at=utcnow() - timedelta(days=10))
            finally:
                await app.close()
            expired = cli("retention", "--older-than", "1d", settings=settings)
            assert expired.returncode == 0, expired.stderr
            assert json.loads(expired.stdout)["run_ids"] == [gone]

            # the server reads the compacted log, answers 410 for the expired one,
            # and the live run goes on as if nothing happened
            assert (await events(done)).content == done_body
            assert (await events(gone)).status_code == 410
            assert (await events(live)).content == live_body
            await append(live, line("after maintenance"))
            await append(live, {"type": "run.completed", "payload": {"status": "succeeded"}})
            final = (await client.get(f"{base}/{live}")).json()["run"]
            assert final["status"] == "succeeded" and final["log_state"] == "plain"
            assert final["event_count"] == 53
            body = (await events(live)).content
            assert body.startswith(live_body) and body.count(b"\n") == 53
            rows = {r: (await client.get(f"{base}/{r}")).json()["run"] for r in (done, gone)}
            assert rows[done]["log_state"] == "compressed"
            assert rows[gone]["log_state"] == "expired"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


async def test_retention_after_a_killed_compaction_leaves_nothing_behind(
    tmp_path: Path, database_url: str
) -> None:
    """A body expired before any compaction pass cleaned up a killed one's temp files."""
    settings = settings_for(tmp_path, database_url)
    before = await prepare(settings)
    child = await asyncio.to_thread(run_child, settings, "compact", "mid-write")
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr)

    app = await App.open(settings, worker=False)
    leftovers: list[str] = []
    try:
        report = await retention(app.manager, timedelta(0))
        assert not report.errors and sorted(report.run_ids) == sorted(before)
        for run_id in before:
            row = await app.manager.repo.get_run(run_id)
            assert row.log_state is LogState.EXPIRED
            names = log_files(app, row)
            leftovers += [name for name in names if name.startswith(TEMP_PREFIX)]
            assert [name for name in names if not name.startswith(TEMP_PREFIX)] == []
    finally:
        await app.close()
    if leftovers:
        # the body is gone, the row is right; only the killed pass's temp file stays,
        # and with it the run's directory. The engine's delete holds the lock and
        # should sweep it, as its compaction does.
        pytest.xfail(
            f"retention leaves a killed compaction's temp files {leftovers}: "
            "eventlog/compaction.py delete() should remove .tmp-events.ndjson* under the lock"
        )
