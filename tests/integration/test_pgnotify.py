"""Cross-process wake-ups through Postgres LISTEN/NOTIFY.

Two Apps share one Postgres database and one data directory, as an API server
and a standalone worker do. Their readers poll the log only every 30 s here,
so an event that reaches the other App's follower within a second can only
have been woken by the bridge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runevents.app import App
from runevents.events import EventDraft
from runevents.pgnotify import asyncpg_dsn
from runevents.settings import Settings


def test_asyncpg_dsn_only_for_postgres() -> None:
    assert asyncpg_dsn("postgresql://u:p@h:5432/db") == "postgresql://u:p@h:5432/db"
    assert asyncpg_dsn("postgresql+asyncpg://h/db") == "postgresql://h/db"
    assert asyncpg_dsn("sqlite:///x.db") is None


@pytest.fixture
async def two_apps(pg_database_url: str, tmp_path: Path) -> AsyncIterator[tuple[App, App]]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=pg_database_url,
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        poll_interval_ms=30_000,
        flush_interval_ms=5,
    )
    a = await App.open(settings, worker=False)
    b = await App.open(settings, worker=False)
    try:
        yield a, b
    finally:
        await b.close()
        await a.close()


async def test_follower_in_another_app_is_woken_by_notify(two_apps: tuple[App, App]) -> None:
    writer_app, reader_app = two_apps
    run = await writer_app.manager.create_run("acme", "ext", external=True)
    seen: list[tuple[int, float]] = []

    async def follow() -> None:
        async for chunk in reader_app.manager.follow_events(run, after_sequence=1):
            seen.append((chunk.last_sequence, time.monotonic()))
            if chunk.ends_run:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.3)  # the follower is now waiting on its signal
    sent = time.monotonic()
    draft = EventDraft(type="console.line", payload={"stream": "stdout", "message": "hi"})
    await writer_app.manager.ingest("acme", "ext", run.id, [draft])
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.02)
    assert seen, "the follower was not woken within 2 s (poll interval is 30 s)"
    assert seen[0][0] == 2 and seen[0][1] - sent < 1.0
    await writer_app.manager.ingest(
        "acme", "ext", run.id, [EventDraft(type="run.completed", payload={"status": "succeeded"})]
    )
    await asyncio.wait_for(task, 5)
    assert seen[-1][0] == 3


async def test_overlapping_notifies_are_serialized_not_dropped(pg_database_url: str) -> None:
    """Durability issue, defect 12: a second NOTIFY issued while one was in progress on
    the bridge's connection failed ("another operation is in progress") and was dropped."""
    from runevents.pgnotify import PostgresBridge

    woken: set[str] = set()
    listener = PostgresBridge(asyncpg_dsn(pg_database_url) or "", woken.add)
    sender = PostgresBridge(asyncpg_dsn(pg_database_url) or "", lambda _: None)
    await listener.start()
    await sender.start()
    try:
        ids = {f"run_{i:04d}" for i in range(200)}
        sends = []
        for run_id in sorted(ids):
            sender._pending.add(run_id)
            # start a send per id at once: they overlap on the one connection
            sends.append(asyncio.ensure_future(sender._send()))
            await asyncio.sleep(0)  # it takes this id and starts its NOTIFY
        await asyncio.gather(*sends)
        for _ in range(100):
            if woken >= ids:
                break
            await asyncio.sleep(0.02)
        assert woken >= ids
    finally:
        await sender.close()
        await listener.close()
