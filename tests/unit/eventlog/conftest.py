"""Fixtures of the event log engine tests: an EventLog over a local or a remote-like store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from runevents.eventlog import EventLog, RunRef
from runevents.ids import new_run_id
from runevents.logstore import LogStore, open_log_store
from runevents.notify import LocalNotifier

MakeLog = Callable[..., EventLog]


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LogStore:
    """The local store (logs written in place) or the memory store (remote: spooled)."""
    if request.param == "file":
        return open_log_store((tmp_path / "store").as_uri())
    return open_log_store("memory://")


@pytest.fixture
def local_store(tmp_path: Path) -> LogStore:
    """Only the local store."""
    return open_log_store((tmp_path / "store").as_uri())


@pytest.fixture
def make_log(tmp_path: Path) -> MakeLog:
    """``make_log(store, **options)``: an EventLog with small index steps (so tests seek)."""

    def make(store: LogStore, **options: Any) -> EventLog:
        options.setdefault("spool_dir", tmp_path / "spool")
        options.setdefault("notifier", LocalNotifier())
        options.setdefault("index_every_bytes", 2048)
        options.setdefault("index_every_events", 16)
        options.setdefault("poll_interval_ms", 20)
        return EventLog(store, **options)

    return make


@pytest.fixture
def log(store: LogStore, make_log: MakeLog) -> EventLog:
    """An EventLog over each kind of store."""
    return make_log(store)


@pytest.fixture
def ref() -> RunRef:
    """A fresh run."""
    return RunRef("acme", "etl", new_run_id())


async def collect(chunks: AsyncIterator[Any]) -> list[Any]:
    """All items of an async iterator."""
    return [chunk async for chunk in chunks]
