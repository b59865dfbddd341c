"""A RunManager on a real database (SQLite and Postgres) and local log storage."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runevents.app import App
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


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        config_file=write_config(tmp_path),
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        lease_seconds=2.0,
        kill_grace_seconds=1.0,
        flush_interval_ms=5,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    app = await App.open(settings, worker=False)
    try:
        yield app
    finally:
        await app.close()
