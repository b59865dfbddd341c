"""``runevents compact | retention | reindex`` as a user runs them: subprocesses on real data."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from runevents.app import App
from runevents.models import LogState, Run
from runevents.settings import Settings
from tests.integration.maintenance.conftest import (
    files_of,
    finished_run,
    live_run,
    log_bytes,
    row_view,
)

RUNEVENTS = Path(sys.executable).with_name("runevents")

# every test starts `runevents` processes (~1-2 s each on the shared machine)
pytestmark = pytest.mark.slow


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        flush_interval_ms=5,
    )


def runevents(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(RUNEVENTS),
            *args,
            "--data-dir",
            str(settings.data_dir),
            "--database-url",
            str(settings.database_url),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        # a wide, colourless console: Rich would otherwise wrap the summary line
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
    )


class Data:
    """Runs made in-process before the CLI runs; the App is closed while the CLI works."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runs: dict[str, Run] = {}
        self.content: dict[str, bytes] = {}

    @contextlib.asynccontextmanager
    async def app(self) -> AsyncIterator[App]:
        app = await App.open(self.settings, worker=False)
        try:
            yield app
        finally:
            await app.close()

    async def make(self, app: App, name: str, **kwargs: Any) -> None:
        run = await finished_run(app, **kwargs)
        self.runs[name] = run
        self.content[name] = await log_bytes(app, run)


async def test_compact_older_than_0s_compresses_every_ended_run(settings: Settings) -> None:
    data = Data(settings)
    async with data.app() as app:
        await data.make(app, "a", events=400)
        await data.make(app, "b", events=50)
        running = await live_run(app)
        await app.manager.close()  # the CLI is another process: let go of the writer

    dry = runevents(settings, "compact", "--older-than", "0s", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(dry.stdout.split()) == sorted(r.id for r in data.runs.values())
    plain = sum(r.events_bytes for r in data.runs.values())
    # what it would do, never "saved 0 B" (nothing is compressed in a dry run)
    assert f"compact: would change 2 run(s); {plain / 1024:.1f} KiB of plain logs" in dry.stderr
    assert "saved" not in dry.stderr

    result = runevents(settings, "compact", "--older-than", "0s")

    assert result.returncode == 0, result.stderr
    assert "compact: changed 2 run(s)" in result.stderr and "saved" in result.stderr
    async with data.app() as app:
        for name, run in data.runs.items():
            row = await app.manager.repo.get_run(run.id)
            assert row.log_state is LogState.COMPRESSED, name
            assert await log_bytes(app, row) == data.content[name]
            assert files_of(app, row) == [
                "events.ndjson.zst",
                "events.ndjson.zst.idx",
                "events.ndjson.zst.ngrams",
            ]
        assert (await app.manager.repo.get_run(running.id)).log_state is LogState.LIVE


async def test_compact_json_report(settings: Settings) -> None:
    data = Data(settings)
    async with data.app() as app:
        await data.make(app, "a", events=300)

    result = runevents(settings, "compact", "--older-than", "1h", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["runs"] == 0  # ended just now: too young

    result = runevents(settings, "compact", "--older-than", "0s", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["action"] == "compact" and report["dry_run"] is False
    assert report["run_ids"] == [data.runs["a"].id]
    assert report["bytes_before"] == data.runs["a"].events_bytes
    assert 0 < report["bytes_after"] < report["bytes_before"]
    assert report["bytes_saved"] == report["bytes_before"] - report["bytes_after"]
    assert report["errors"] == []


async def test_retention_dry_run_lists_then_real_run_expires(settings: Settings) -> None:
    data = Data(settings)
    async with data.app() as app:
        await data.make(app, "old", age=timedelta(days=10))
        await data.make(app, "older", age=timedelta(days=20))
        await data.make(app, "young", age=timedelta(hours=1))
        rows = {n: row_view(await app.manager.repo.get_run(r.id)) for n, r in data.runs.items()}
    doomed = sorted([data.runs["old"].id, data.runs["older"].id])

    dry = runevents(settings, "retention", "--older-than", "7d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(dry.stdout.split()) == doomed  # stdout: the run ids, one a line
    assert "retention: would change 2 run(s)" in dry.stderr
    async with data.app() as app:
        for name, run in data.runs.items():
            assert row_view(await app.manager.repo.get_run(run.id)) == rows[name]
            assert await log_bytes(app, run) == data.content[name]

    dry_json = runevents(settings, "retention", "--older-than", "7d", "--dry-run", "--json")
    report = json.loads(dry_json.stdout)
    assert report["dry_run"] is True and sorted(report["run_ids"]) == doomed
    freed = data.runs["old"].events_bytes + data.runs["older"].events_bytes
    assert report["bytes_saved"] == freed

    real = runevents(settings, "retention", "--older-than", "7d", "--json")
    assert real.returncode == 0, real.stderr
    report = json.loads(real.stdout)
    assert sorted(report["run_ids"]) == doomed and report["bytes_saved"] == freed
    async with data.app() as app:
        for name, run in data.runs.items():
            row = await app.manager.repo.get_run(run.id)
            if name == "young":
                assert row.log_state is LogState.PLAIN
            else:
                assert row.log_state is LogState.EXPIRED and row.summary == run.summary
                # the body waits out the default delay (a read that started goes on)
                assert files_of(app, row) != []
                assert await app.manager.repo.log_deletion_queued(row.id)

    # a pass with no delay deletes what is due now: these bodies, and its own
    again = runevents(settings, "retention", "--older-than", "1m", "--delete-delay", "0s", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["run_ids"] == [data.runs["young"].id]
    async with data.app() as app:
        for run in data.runs.values():
            row = await app.manager.repo.get_run(run.id)
            assert row.log_state is LogState.EXPIRED
            assert files_of(app, row) == []
            assert not await app.manager.repo.log_deletion_queued(row.id)


async def test_retention_count_and_bytes_options(settings: Settings) -> None:
    data = Data(settings)
    async with data.app() as app:
        for i in range(3):
            await data.make(app, f"r{i}", events=20)
    result = runevents(settings, "retention", "--keep-per-configuration", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["run_ids"] == [data.runs["r0"].id, data.runs["r1"].id]
    result = runevents(settings, "retention", "--max-bytes", "0", "--json")
    assert json.loads(result.stdout)["run_ids"] == [data.runs["r2"].id]


def test_bad_arguments_fail_with_a_message(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    bad = runevents(settings, "compact", "--older-than", "soon")
    assert bad.returncode == 2 and "invalid duration 'soon'" in bad.stderr
    none = runevents(settings, "retention")
    assert none.returncode == 2 and "--older-than" in none.stderr
    assert "Traceback" not in bad.stderr + none.stderr


async def test_reindex_rebuilds_rows_from_plain_and_compressed_logs(
    settings: Settings, tmp_path: Path
) -> None:
    data = Data(settings)
    async with data.app() as app:
        await data.make(app, "packed", events=200)
    assert runevents(settings, "compact", "--older-than", "0s").returncode == 0
    async with data.app() as app:
        packed = await app.manager.repo.get_run(data.runs["packed"].id)
        await data.make(app, "plain", events=40, status="failed")
    # the database is lost: a fresh one, the same logs
    fresh = Settings(
        **{**settings.model_dump(), "database_url": f"sqlite:///{tmp_path / 'fresh.db'}"}
    )

    result = runevents(fresh, "reindex", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["action"] == "reindex" and report["runs"] == 2 and not report["errors"]
    async with Data(fresh).app() as app:
        plain = await app.manager.repo.get_run(data.runs["plain"].id)
        assert plain.status.value == "failed" and plain.log_state is LogState.PLAIN
        assert plain.summary == data.runs["plain"].summary
        rebuilt = await app.manager.repo.get_run(packed.id)
        assert rebuilt.log_state is LogState.COMPRESSED
        assert rebuilt.events_path == packed.events_path
        assert rebuilt.summary == packed.summary and rebuilt.event_count == packed.event_count
        assert await log_bytes(app, rebuilt) == data.content["packed"]

    human = runevents(fresh, "reindex")
    assert human.returncode == 0 and "reindex: changed 2 run(s)" in human.stderr
