"""Search tests: an App (SQLite and Postgres) with small frames, and runs to search.

``app`` stores logs on local disk, ``remote_app`` in a remote-like store; every test
starts and ends with an empty filter cache.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from runevents.app import App
from runevents.events import EventDraft
from runevents.models import Run
from runevents.search import Filters, Pattern, SearchRequest
from runevents.search.filters import CACHE
from runevents.settings import Settings


def clear_filter_cache() -> None:
    CACHE._entries.clear()
    CACHE._bytes = 0


@pytest.fixture(autouse=True)
def _fresh_filter_cache() -> Iterator[None]:
    # the filter cache is per process: each test starts without one and leaves none behind
    clear_filter_cache()
    yield
    clear_filter_cache()


def search_settings(data_dir: Path, database_url: str, storage_url: str | None = None) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        storage_url=storage_url,
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        flush_interval_ms=5,
    )


async def _open(settings: Settings) -> App:
    app = await App.open(settings, worker=False)
    # small frames, so one run has many and the index has frames to skip
    app.manager.log.frame_bytes = 4096
    return app


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return search_settings(tmp_path / "data", database_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    app = await _open(settings)
    try:
        yield app
    finally:
        await app.close()


@pytest.fixture
async def remote_app(tmp_path: Path, database_url: str) -> AsyncIterator[App]:
    """An App on memory://, which behaves as a remote store: logs are spooled, then
    uploaded and read by key (a store of this test's own: named stores live on)."""
    storage = f"memory://search-{uuid.uuid4().hex}"
    app = await _open(search_settings(tmp_path / "remote", database_url, storage))
    try:
        yield app
    finally:
        await app.close()


def console(message: str, stream: str = "stdout", level: str = "info") -> EventDraft:
    return EventDraft(
        type="console.line",
        payload={"scope": "run", "stream": stream, "level": level, "message": message},
    )


def filler(n: int, seed: int = 0) -> list[EventDraft]:
    """Ordinary console lines (no rare words)."""
    return [
        console(f"row {seed}-{i} parsed ok: amount={i * 7 % 1000} region=eu status=merged")
        for i in range(n)
    ]


async def make_run(
    app: App,
    lines: Sequence[EventDraft],
    *,
    cfg: str = "etl",
    ws: str = "acme",
    status: str = "succeeded",
    end: bool = True,
) -> Run:
    m = app.manager
    run = await m.create_run(ws, cfg, external=True)
    for start in range(0, len(lines), 500):
        await m.ingest(ws, cfg, run.id, list(lines[start : start + 500]))
    if end:
        await m.ingest(
            ws, cfg, run.id, [EventDraft(type="run.completed", payload={"status": status})]
        )
    return await m.get_run(ws, cfg, run.id)


async def search(app: App, q: str, **kw: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(hits, done record) of one search request."""
    regex = kw.pop("regex", False)
    stream = kw.pop("stream", None)
    level = kw.pop("level", None)
    request = SearchRequest(
        workspace_id=kw.pop("ws", "acme"),
        pattern=Pattern(q, regex=regex),
        filters=Filters(stream=stream, level=level),
        **kw,
    )
    lines = [msgspec.json.decode(line) async for line in await app.manager.search_runs(request)]
    assert lines and lines[-1].get("done") is True, lines
    return lines[:-1], lines[-1]
