"""A RunManager on a real database (SQLite and Postgres) and local log storage."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runevents.app import App
from runevents.models import Run
from runevents.session import RunSession
from runevents.settings import Settings


def write_config(tmp_path: Path) -> Path:
    """A configurations file with a few tiny commands the tests execute."""
    py = sys.executable
    path = tmp_path / "runevents.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [[configuration]]
            workspace = "acme"
            id = "hello"
            command = ["{py}", "-c", "print('hello'); import sys; print('warn', file=sys.stderr)"]

            [[configuration]]
            workspace = "acme"
            id = "sleepy"
            command = ["{py}", "-c", "import time; print('start', flush=True); time.sleep(60)"]

            [[configuration]]
            workspace = "acme"
            id = "failing"
            command = ["{py}", "-c", "import sys; print('boom'); sys.exit(3)"]

            [[configuration]]
            workspace = "acme"
            id = "missing"
            command = ["/nonexistent/definitely-not-here"]
            """
        )
    )
    return path


def settings_with(tmp_path: Path, database_url: str, config: Path) -> Settings:
    """The settings of one process of a test: the shared data dir and database, quick
    leases and kills, no background passes."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        config_file=config,
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        lease_seconds=2.0,
        kill_grace_seconds=1.0,
        flush_interval_ms=5,
    )


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return settings_with(tmp_path, database_url, write_config(tmp_path))


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    app = await App.open(settings, worker=False)
    try:
        yield app
    finally:
        await app.close()


async def wait_ended(app: App, run: Run, timeout: float = 30.0, why: str = "") -> Run:
    """The run's row once it has ended (fails after ``timeout`` seconds, saying ``why``)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await app.manager.repo.get_run(run.id)
        if current.status.ended:
            return current
        assert asyncio.get_running_loop().time() < deadline, (
            f"run still {current.status.value} after {timeout} s{why}"
        )
        await asyncio.sleep(0.02)


async def started_session(
    app: App, configuration: str = "sleepy", worker: str = "w1"
) -> RunSession:
    """A new executed run of ``acme/configuration``, claimed by ``worker`` and started
    (its writer open, ``run.started`` not yet written): what a worker holds."""
    m = app.manager
    await m.create_run("acme", configuration)
    run = await m.claim_next(worker)
    assert run is not None
    session = await m.start_session(run, worker)
    assert session is not None
    return session
