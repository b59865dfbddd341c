"""Idle live runs cost nothing, and taking a run back costs only its new tail: regression
tests of two defects an outside tester measured on a real server (SQLite and Postgres).

- an idle server re-opened every live run every repair pass (each pass took every live
  run's writer nobody held -- lock, lease, recovery -- and let it go again: 15-37 % of a
  core with 2,000 idle runs and no traffic);
- taking back a run this process had let go (a producer pausing past
  ``external_writer_release_seconds``) re-folded its whole log: 10 s for a 300 MB run.

Counted through seams (takes, bytes read by folds, thread hand-offs), never timed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from runevents import summary_fold
from runevents.app import App
from runevents.db.tables import runs
from runevents.eventlog import Chunk, RunRef
from runevents.events import EventDraft
from runevents.exceptions import StorageError
from runevents.held import HeldRun, run_ref
from runevents.manager import RunManager
from runevents.models import Run, RunStatus, utcnow
from runevents.repair import repair_pass
from runevents.summary import RunSummaryBuilder


def console(message: str) -> EventDraft:
    return EventDraft(
        type="console.line",
        payload={"scope": "run", "stream": "stdout", "level": "info", "message": message},
    )


def completed(status: str = "succeeded") -> EventDraft:
    return EventDraft(type="run.completed", payload={"status": status})


def count_takes(m: RunManager, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The run ids ``HeldRuns.take`` is called for from now on."""
    taken: list[str] = []
    original = m.held.take

    async def take(run: Run, **kwargs: Any) -> HeldRun:
        taken.append(run.id)
        return await original(run, **kwargs)

    monkeypatch.setattr(m.held, "take", take)
    return taken


def count_read_bytes(m: RunManager, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes of every chunk ``EventLog.read`` yields from now on (a summary fold's reads)."""
    read: list[int] = []
    original = m.log.read

    async def counting(ref: RunRef, *args: Any, **kwargs: Any) -> AsyncIterator[Chunk]:
        async for chunk in original(ref, *args, **kwargs):
            read.append(len(chunk.data))
            yield chunk

    monkeypatch.setattr(m.log, "read", counting)
    return read


async def release(m: RunManager, run: Run) -> None:
    """What the idle watch does after ``external_writer_release_seconds`` without a batch."""
    async with m.held.lock(run.id):
        held = m.held.get(run.id)
        assert held is not None
        await held.release()


async def lapse_writer_lease(app: App, run: Run) -> None:
    """What a dead owner leaves: a writer lease nobody renews, its expiry in the past."""
    async with app.database.engine.begin() as conn:
        await conn.execute(
            runs.update()
            .where(runs.c.id == run.id)
            .values(writer_expires_at=utcnow() - timedelta(minutes=1))
        )


async def crash_holding(app: App, run: Run) -> None:
    """This process dies holding ``run``: writer closed, nothing released or recorded."""
    m = app.manager
    held = m.held.get(run.id)
    assert held is not None
    await held.writer.close()
    held.fold.cancel()
    m.held.forget(held)
    m.ownership.forget(held.lease)
    await lapse_writer_lease(app, run)


def rebuilt_summary(m: RunManager, run: Run) -> dict[str, Any]:
    """The summary folded from the whole log on disk, from scratch."""
    builder = RunSummaryBuilder()
    builder.add_chunk(m.log.keys(run_ref(run)).live.read_bytes())
    return builder.build()


# ---------------------------------------------------------------- defect 1: idle repair


async def test_an_idle_server_reopened_every_live_run_every_repair_pass(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each pass took (file lock, writer lease, recovery, fold) every live run nobody held
    and let it go again: an idle server's CPU grew with its live runs. A run let go cleanly
    (its row's counters are the log's end, its lease given back) costs a pass nothing."""
    m = app.manager
    idle = []
    for i in range(6):
        run = await m.create_run("acme", "ext", external=True)
        await m.ingest("acme", "ext", run.id, [console(f"{i}-{j}") for j in range(10)])
        await release(m, run)
        idle.append(run)
    queued = await m.create_run("acme", "hello")  # a worker's queued run, never claimed
    taken = count_takes(m, monkeypatch)
    for _ in range(3):
        assert await repair_pass(m) == {}
    assert taken == []
    assert queued.status is RunStatus.QUEUED
    # the runs are as they were: the next batch takes each one as usual
    for run in idle[:2]:
        answer = await m.ingest("acme", "ext", run.id, [console("later")])
        assert answer == {"first_sequence": 12, "last_sequence": 12}
    assert taken == [idle[0].id, idle[1].id]


async def test_repair_still_takes_a_run_whose_writer_died_among_idle_ones(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filter keeps every finding: a dead writer's run (lease lapsed, a torn unit at
    its log's end) is taken and cut; a row behind its log (run.completed past the row's
    checkpoint) is finished; the idle runs next to them are not taken."""
    m = app.manager
    idle = []
    for _ in range(3):
        run = await m.create_run("acme", "ext", external=True)
        await m.ingest("acme", "ext", run.id, [console("idle")])
        await release(m, run)
        idle.append(run)
    torn = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", torn.id, [console("kept")])
    await crash_holding(app, torn)
    with open(m.log.keys(run_ref(torn)).live, "ab") as f:
        f.write(b'{"type":"console.line","sequence":3')  # a unit torn by the crash
    behind = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", behind.id, [console("a")])
    held = m.held.get(behind.id)
    assert held is not None
    _, ticket = held.commit([completed()])
    await held.writer.sync(ticket)  # run.completed durable; the row update never came
    await crash_holding(app, behind)
    taken = count_takes(m, monkeypatch)
    found = await repair_pass(m)
    assert found["damaged"] == 1 and found["row_behind_log"] == 1
    assert sorted(taken) == sorted([torn.id, behind.id])
    row = await m.get_run("acme", "ext", behind.id)
    assert row.status is RunStatus.SUCCEEDED
    assert await repair_pass(m) == {}  # and the next pass takes nothing
    assert sorted(taken) == sorted([torn.id, behind.id])


async def test_a_completion_let_go_before_its_row_was_finished_is_still_repaired(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.completed durable, the row update failed (database down), then the run let go
    (the idle watch, a shutdown): its lease is not given back, so it lapses and the
    repair pass finishes the row (it does not skip it as a clean release)."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")])

    async def database_down(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("the database is unreachable")

    monkeypatch.setattr(m.repo, "finish_owned", database_down)
    await m.ingest("acme", "ext", run.id, [completed()])
    monkeypatch.undo()
    await release(m, run)
    owner, _, _ = await m.repo.writer_of(run.id)
    assert owner == m.ownership.owner  # kept: it lapses
    await lapse_writer_lease(app, run)
    found = await repair_pass(m)
    assert found["row_behind_log"] == 1
    row = await m.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.SUCCEEDED


# ---------------------------------------------------------------- defect 2: re-fold on take


async def _big_released_run(m: RunManager, batches: int = 40) -> Run:
    run = await m.create_run("acme", "ext", external=True)
    for i in range(batches):
        await m.ingest("acme", "ext", run.id, [console(f"{i}-{j} " + "x" * 200) for j in range(50)])
    await release(m, run)
    return run


async def test_taking_back_a_released_big_run_refolded_its_whole_log(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer pausing past the release: its next batch took the run again and the
    fold re-read the whole log (3-10 s of CPU for 300 MB, mostly on the event loop).
    Now only the log after the fold kept at the release is read, and the summary is
    still the one folded from the whole log."""
    m = app.manager
    run = await _big_released_run(m)
    size = m.log.keys(run_ref(run)).live.stat().st_size
    assert size > 400_000
    read = count_read_bytes(m, monkeypatch)
    await m.ingest("acme", "ext", run.id, [console("after the pause")])
    held = m.held.get(run.id)
    assert held is not None
    builder = await held.fold.ready()
    assert sum(read) < 2_000  # the boundary line, not the log
    assert builder.build() == rebuilt_summary(m, run)
    # and again, after another pause: still only the tail
    await release(m, run)
    await m.ingest("acme", "ext", run.id, [console("after another one")])
    held = m.held.get(run.id)
    assert held is not None
    assert (await held.fold.ready()).build() == rebuilt_summary(m, run)
    assert sum(read) < 4_000
    await m.ingest("acme", "ext", run.id, [completed()])
    row = await m.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.SUCCEEDED


async def test_a_kept_fold_that_no_longer_matches_the_log_is_not_used(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any doubt about the kept fold (the log's line at its boundary is another event:
    cut and written again meanwhile) means a fold of the whole log, as before."""
    m = app.manager
    run = await _big_released_run(m, batches=10)
    kept = m.held._folds[run.id]
    kept.event_id = "evt_not_the_one"
    kept.builder.add("console.line", None, {"message": "never in the log"})
    read = count_read_bytes(m, monkeypatch)
    await m.ingest("acme", "ext", run.id, [console("after")])
    held = m.held.get(run.id)
    assert held is not None
    builder = await held.fold.ready()
    assert sum(read) >= m.log.keys(run_ref(run)).live.stat().st_size - 1_000
    assert builder.build() == rebuilt_summary(m, run)


async def test_a_full_fold_of_a_big_log_ran_on_the_event_loop(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full fold (no kept fold: another process let the run go, or a restart) decoded
    every 256 KiB chunk on the event-loop thread: a health check waited up to 70 ms. Big
    chunks are folded in a thread now."""
    m = app.manager
    run = await _big_released_run(m)
    getattr(m.held, "_folds", {}).clear()  # no kept fold, as after a restart
    handed: list[int] = []
    original = summary_fold.asyncio.to_thread

    async def to_thread(func: Any, *args: Any) -> Any:
        handed.append(len(args[0]) if args and isinstance(args[0], bytes) else 0)
        return await original(func, *args)

    monkeypatch.setattr(summary_fold.asyncio, "to_thread", to_thread)
    await m.ingest("acme", "ext", run.id, [console("after")])
    held = m.held.get(run.id)
    assert held is not None
    builder = await held.fold.ready()
    size = m.log.keys(run_ref(run)).live.stat().st_size
    assert sum(handed) >= size // 2  # most of the log folded off the loop
    assert builder.build() == rebuilt_summary(m, run)


async def test_a_zeroed_tail_after_a_clean_release_is_still_repaired(app: App) -> None:
    """A log longer than its row's checkpoint (a zeroed block after a power loss) is taken
    by the repair pass even though its writer was let go cleanly."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")])
    await release(m, run)
    path = m.log.keys(run_ref(run)).live
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, bytes(512))
    finally:
        os.close(fd)
    found = await repair_pass(m)
    assert found["damaged"] == 1
    async with app.database.engine.begin() as conn:
        size = await conn.scalar(sa.select(runs.c.events_bytes).where(runs.c.id == run.id))
    assert size == path.stat().st_size
