"""Maintenance tests: an App on SQLite and Postgres with a tmp data dir, and run builders.

Runs are external (``RunManager.ingest``): they are created, filled and ended
in a few milliseconds, and their ``completed_at`` is moved into the past with
``backdate`` to make them old enough for a policy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from runevents.app import App
from runevents.events import EventDraft
from runevents.models import Run, utcnow
from runevents.settings import Settings
from runevents.upkeep import run_ref


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        flush_interval_ms=5,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    app = await App.open(settings, worker=False)
    try:
        yield app
    finally:
        await app.close()


def console(message: str, stream: str = "stdout") -> EventDraft:
    level = "info" if stream == "stdout" else "warning"
    return EventDraft(
        type="console.line",
        payload={"scope": "run", "stream": stream, "level": level, "message": message},
    )


def varied_events(n: int, seed: int = 0) -> list[EventDraft]:
    """Console lines of mixed sizes and characters plus telemetry the summary reads."""
    drafts: list[EventDraft] = [
        EventDraft(type="run.phase.started", payload={"phase": "extracting"}),
    ]
    for i in range(n):
        k = (i * 7919 + seed) % 97
        if k == 0:
            drafts.append(
                EventDraft(
                    type="run.table.summary",
                    payload={
                        "table_id": f"t{i}",
                        "source_file": f"f{i % 3}.xlsx",
                        "source_sheet": None,
                        "table_index": i,
                        "row_count": k + i,
                        "column_count": 4,
                    },
                )
            )
        elif k == 1:
            drafts.append(
                EventDraft(
                    type="run.validation.issue",
                    payload={"severity": "warning", "code": "missing", "row": i},
                )
            )
        else:
            # ANSI codes, U+2028 and a lone CR inside messages must survive byte for byte
            text = f"\x1b[32mrow {i}\x1b[0m ok \u2028 é \r" + "x" * (k * 5)
            drafts.append(console(text, "stderr" if k % 5 == 0 else "stdout"))
    drafts.append(EventDraft(type="run.phase.completed", payload={"phase": "extracting"}))
    return drafts


async def finished_run(
    app: App,
    *,
    ws: str = "acme",
    cfg: str = "ext",
    events: int = 20,
    status: str = "succeeded",
    age: timedelta | None = None,
) -> Run:
    """An ended external run with ``events`` producer events (plus run.queued/completed).

    ``age``: move ``completed_at`` that far into the past.
    """
    m = app.manager
    run = await m.create_run(ws, cfg, external=True)
    drafts = varied_events(events, seed=len(run.id))
    for start in range(0, len(drafts), 500):
        await m.ingest(ws, cfg, run.id, drafts[start : start + 500])
    await m.ingest(ws, cfg, run.id, [EventDraft(type="run.completed", payload={"status": status})])
    if age is not None:
        return await backdate(app, run, age)
    return await m.get_run(ws, cfg, run.id)


async def live_run(app: App, *, ws: str = "acme", cfg: str = "ext") -> Run:
    """A running external run (its writer held by this process) created long ago."""
    m = app.manager
    run = await m.create_run(ws, cfg, external=True)
    await m.ingest(ws, cfg, run.id, [console("still going")])
    # a live run is old by created_at, yet never a maintenance candidate
    return await m.repo.update_run(run.id, created_at=utcnow() - timedelta(days=400))


async def backdate(app: App, run: Run, age: timedelta) -> Run:
    """Move the run's ``completed_at`` ``age`` into the past."""
    return await app.manager.repo.update_run(run.id, completed_at=utcnow() - age)


async def log_bytes(app: App, run: Run, after_sequence: int = 0, limit: int | None = None) -> bytes:
    """What ``read_events`` yields, joined."""
    return b"".join(
        [chunk.data async for chunk in app.manager.read_events(run, after_sequence, limit)]
    )


async def follow_bytes(app: App, run: Run, after_sequence: int = 0) -> bytes:
    """What ``follow_events`` yields (replay; the run has ended so it stops), joined."""
    return b"".join([chunk.data async for chunk in app.manager.follow_events(run, after_sequence)])


def log_dir(app: App, run: Run) -> Path:
    """The local directory of the run's log files."""
    return app.manager.log.keys(run_ref(run)).live.parent


def files_of(app: App, run: Run) -> list[str]:
    """Names in the run's log directory (empty when it is gone)."""
    directory = log_dir(app, run)
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def row_view(run: Run) -> dict[str, Any]:
    """The row without ``updated_at`` (which every UPDATE moves)."""
    data = run.to_dict()
    data.pop("updated_at")
    data["summary"] = run.summary
    return data
