"""Memory per live run stays bounded, however many events it has written.

Each test is named after the defect an outside tester found: the server's
memory grew with every event of a live run and was freed only when the run
completed (a 300 MB job output peaked at 1.8 GB of RSS). What is measured is
what the Python heap retains (``tracemalloc``) after N and after 10 N events of
one live run, not RSS.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator

import pytest

from runevents.app import App
from runevents.events import EventDraft, decode_event
from runevents.models import Run
from runevents.summary import summarize_lines
from tests.integration.manager.conftest import started_session

#: events per unit (an executor's read, a producer's batch)
UNIT = 100
#: the first measurement is after N events, the second after 10 N
N = 1_000
#: what the heap may grow by between the two (the defect: ~550 bytes per event, ~5 MB;
#: bounded: ~50 KB of noise)
ALLOWED_GROWTH = 1024 * 1024


def console(i: int) -> EventDraft:
    return EventDraft(
        type="console.line",
        payload={"scope": "run", "stream": "stdout", "level": "info", "message": f"line {i:09d}"},
    )


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


async def _retained_after(
    unit: Callable[[int], Awaitable[None]], n: int, durable: Callable[[], Awaitable[None]]
) -> int:
    """Write ``n`` events in units, make them durable, let every pending step run, and
    say what the heap holds.

    Never through ``fold.ready()``: that folds what is pending, which would hide
    anything the fold keeps until the run completes."""
    for start in range(0, n, UNIT):
        await unit(start)
    await durable()
    for _ in range(5):
        await asyncio.sleep(0.01)
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _log_lines(app: App, run: Run) -> list[bytes]:
    lines: list[bytes] = []
    async for chunk in app.manager.read_events(run):
        lines += chunk.data.split(b"\n")[:-1]
    return lines


async def _assert_summary_is_the_logs(app: App, run: Run) -> None:
    """The summary kept bounded is still exactly the one a rebuild from the log gives."""
    done = await app.manager.get_run(run.workspace_id, run.configuration_id, run.id)
    lines = await _log_lines(app, done)
    assert done.summary == summarize_lines(lines)
    assert decode_event(lines[-1]).payload["summary"] == done.summary
    assert done.summary is not None and done.summary["events"]["total"] == len(lines)


async def test_server_memory_grew_with_every_event_of_a_live_executed_run(
    app: App, traced: None
) -> None:
    """Found from outside: 100 MB of a job's output (1 M lines) peaked at ~700 MB of server
    RSS, 300 MB at 1.8 GB, freed only at completion. A claimed run's log already holds
    run.queued, so its summary fold started with a background read of that log, and
    every unit made durable afterwards was kept (``SummaryFold._tail``) until
    completion, which alone emptied it: every event of the run, envelope and payload."""
    session = await started_session(app)

    async def unit(start: int) -> None:
        await session.emit([console(start + i) for i in range(UNIT)])

    after_n = await _retained_after(unit, N, session.writer.flush)
    after_10n = await _retained_after(unit, 9 * N, session.writer.flush)
    growth = after_10n - after_n
    assert growth < ALLOWED_GROWTH, f"{growth} bytes more after {9 * N} more events"

    tracemalloc.stop()
    await session.complete(status="succeeded", failure=None, execution=None)
    await _assert_summary_is_the_logs(app, session.run)


async def test_server_memory_grew_with_every_event_of_a_live_producer_run_taken_again(
    app: App, traced: None
) -> None:
    """The same for a producer's run whose log was taken again (its idle writer let go,
    or another replica's run taken over): every batch after the take was kept until the
    run completed (measured: 2 M events, 128 MB -> 1.7 GB of RSS)."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console(i) for i in range(UNIT)])
    async with m.held.lock(run.id):
        held = m.held.get(run.id)
        assert held is not None
        await held.release()  # as the idle writer is (external_writer_release_seconds)
    assert m.held.get(run.id) is None

    async def unit(start: int) -> None:
        await m.ingest("acme", "ext", run.id, [console(start + i) for i in range(UNIT)])

    async def durable() -> None:
        pass  # a producer's batch is durable when it is answered

    after_n = await _retained_after(unit, N, durable)
    after_10n = await _retained_after(unit, 9 * N, durable)
    growth = after_10n - after_n
    assert growth < ALLOWED_GROWTH, f"{growth} bytes more after {9 * N} more events"

    tracemalloc.stop()
    await m.ingest(
        "acme", "ext", run.id, [EventDraft(type="run.completed", payload={"status": "succeeded"})]
    )
    await _assert_summary_is_the_logs(app, run)
