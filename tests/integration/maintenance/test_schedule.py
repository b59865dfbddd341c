"""The server's own maintenance schedule (``App._maintain`` -> ``scheduled_pass``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from runevents.app import App
from runevents.maintenance import scheduled_pass
from runevents.models import LogState, Run
from runevents.settings import Settings
from runevents.upkeep import run_ref
from tests.integration.maintenance.conftest import files_of, finished_run, live_run, log_bytes


async def wait_for_state(app: App, run: Run, wanted: LogState, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (await app.manager.repo.get_run(run.id)).log_state is not wanted:
        assert asyncio.get_running_loop().time() < deadline, f"{run.id} never became {wanted}"
        await asyncio.sleep(0.05)


async def test_server_compacts_on_its_schedule_and_leaves_live_runs(settings: Settings) -> None:
    quick = Settings(
        **{**settings.model_dump(), "maintenance_interval_seconds": 0.1, "compact_after": "0s"}
    )
    app = await App.open(quick, worker=False)
    try:
        running = await live_run(app)
        run = await finished_run(app)
        content = await log_bytes(app, run)
        await wait_for_state(app, run, LogState.COMPRESSED)
        assert files_of(app, run) == [
            "events.ndjson.zst",
            "events.ndjson.zst.idx",
            "events.ndjson.zst.ngrams",
        ]
        assert await log_bytes(app, await app.manager.repo.get_run(run.id)) == content
        # several more passes go by: the live run is never touched
        await asyncio.sleep(0.3)
        assert (await app.manager.repo.get_run(running.id)).log_state is LogState.LIVE
    finally:
        await app.close()


async def test_server_applies_retention_settings_on_its_schedule(settings: Settings) -> None:
    quick = Settings(
        **{
            **settings.model_dump(),
            "maintenance_interval_seconds": 0.1,
            "compact_after": None,
            "retention_after": "1h",
            "retention_keep_per_configuration": 1,
        }
    )
    app = await App.open(quick, worker=False)
    try:
        old = await finished_run(app, cfg="a", age=timedelta(hours=2))
        older_sibling = await finished_run(app, cfg="b")
        newest = await finished_run(app, cfg="b")
        await wait_for_state(app, old, LogState.EXPIRED)
        await wait_for_state(app, older_sibling, LogState.EXPIRED)
        assert (await app.manager.repo.get_run(newest.id)).log_state is LogState.PLAIN
    finally:
        await app.close()


async def test_scheduled_pass_runs_retention_before_compaction(app: App) -> None:
    """A body about to be deleted is not compressed first."""
    settings = Settings(
        **{**app.settings.model_dump(), "compact_after": "0s", "retention_after": "1h"}
    )
    app.manager.settings = settings
    doomed = await finished_run(app, age=timedelta(hours=2))
    kept = await finished_run(app)
    reports = await scheduled_pass(app.manager)
    assert [r.action for r in reports] == ["retention", "compact"]
    assert reports[0].run_ids == [doomed.id] and reports[1].run_ids == [kept.id]


async def test_scheduled_pass_with_nothing_configured_does_nothing(app: App) -> None:
    app.manager.settings = Settings(
        **{**app.settings.model_dump(), "compact_after": None, "retention_after": None}
    )
    run = await finished_run(app, age=timedelta(days=400))
    assert await scheduled_pass(app.manager) == []
    assert (await app.manager.repo.get_run(run.id)).log_state is LogState.PLAIN


async def test_scheduled_pass_logs_what_it_did_and_what_failed(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    app.manager.settings = Settings(**{**app.settings.model_dump(), "compact_after": "0s"})
    good = await finished_run(app)
    broken = await finished_run(app)
    # a body lost behind the server's back: the row says plain, storage has nothing
    await app.manager.log.delete(run_ref(broken))
    with caplog.at_level(logging.INFO, logger="runevents.maintenance"):
        [report] = await scheduled_pass(app.manager)
    assert report.run_ids == [good.id] and len(report.errors) == 1
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert any(level == logging.INFO and "compact: 1 run(s)" in m for level, m in messages)
    assert any(level == logging.WARNING and broken.id in m for level, m in messages)
