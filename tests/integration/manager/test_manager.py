"""RunManager end to end on SQLite and Postgres: ingest, completion, cancel, reindex."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from runevents.app import App
from runevents.events import ENVELOPE_ALLOWANCE, EventDraft, decode_event
from runevents.exceptions import (
    ConfigurationNotFound,
    Conflict,
    InvalidEvent,
    InvalidInput,
    LogExpired,
    RunEnded,
    RunNotFound,
)
from runevents.models import LogState, RunQuery, RunStatus
from runevents.summary import summarize_lines


def console(message: str, stream: str = "stdout") -> EventDraft:
    level = "info" if stream == "stdout" else "warning"
    return EventDraft(
        type="console.line",
        payload={"scope": "run", "stream": stream, "level": level, "message": message},
    )


def completed(status: str = "succeeded", **extra: Any) -> EventDraft:
    return EventDraft(type="run.completed", payload={"status": status, **extra})


async def log_lines(app: App, run: Any) -> list[bytes]:
    lines: list[bytes] = []
    async for chunk in app.manager.read_events(run):
        lines.extend(chunk.data.split(b"\n")[:-1])
    return lines


async def test_external_run_lifecycle_builds_summary_from_log(app: App) -> None:
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    assert run.status is RunStatus.QUEUED
    answer = await m.ingest("acme", "ext", run.id, [console("a"), console("b", "stderr")])
    assert answer == {"first_sequence": 2, "last_sequence": 3}
    running = await m.get_run("acme", "ext", run.id)
    assert running.status is RunStatus.RUNNING and running.started_at is not None
    table = EventDraft(
        type="run.table.summary",
        payload={
            "table_id": "t1",
            "source_file": "a.xlsx",
            "source_sheet": None,
            "table_index": 0,
            "row_count": 7,
            "column_count": 3,
        },
    )
    answer = await m.ingest("acme", "ext", run.id, [table, completed("succeeded")])
    assert answer == {"first_sequence": 4, "last_sequence": 5}

    done = await m.get_run("acme", "ext", run.id)
    assert done.status is RunStatus.SUCCEEDED
    assert done.completed_at is not None and done.log_state is LogState.PLAIN
    assert done.event_count == 5 and done.events_bytes > 0
    assert done.table_count == 1 and done.row_count == 7 and done.input_file_count == 1
    lines = await log_lines(app, done)
    events = [decode_event(line) for line in lines]
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]
    assert events[0].type == "run.queued" and events[-1].type == "run.completed"
    # the stored run.completed carries the summary; rebuilding from the log gives the same
    assert events[-1].payload["summary"] == done.summary
    assert summarize_lines(lines) == done.summary
    assert done.summary is not None and done.summary["events"]["total"] == 5
    assert "b" in (done.last_console_snippet or "")


async def test_append_after_completion_is_409_and_idempotent_retry_gets_first_answer(
    app: App,
) -> None:
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    first = await m.ingest(
        "acme", "ext", run.id, [console("x"), completed()], idempotency_key="k-1"
    )
    again = await m.ingest(
        "acme", "ext", run.id, [console("x"), completed()], idempotency_key="k-1"
    )
    assert again == first
    with pytest.raises(RunEnded):
        await m.ingest("acme", "ext", run.id, [console("late")])
    assert len(await log_lines(app, run)) == 3


async def test_idempotency_key_retry_appends_nothing(app: App) -> None:
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    a = await m.ingest("acme", "ext", run.id, [console("1"), console("2")], idempotency_key="b1")
    b = await m.ingest("acme", "ext", run.id, [console("1"), console("2")], idempotency_key="b1")
    assert a == b == {"first_sequence": 2, "last_sequence": 3}
    assert len(await log_lines(app, run)) == 3


async def test_idempotency_key_stored_before_a_crash_that_lost_the_batch_appends_once(
    app: App,
) -> None:
    # the key is stored before the append: a process that died in between left
    # an answer the log does not bear out; the retry appends, exactly once
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await app.manager.repo.put_idempotency(
        run.id, "lost", {"first_sequence": 2, "last_sequence": 3}
    )
    a = await m.ingest("acme", "ext", run.id, [console("1"), console("2")], idempotency_key="lost")
    assert a == {"first_sequence": 2, "last_sequence": 3}
    b = await m.ingest("acme", "ext", run.id, [console("1"), console("2")], idempotency_key="lost")
    assert b == a
    lines = [decode_event(x) for x in await log_lines(app, run)]
    assert [e.payload.get("message") for e in lines[1:]] == ["1", "2"]


async def test_idempotency_answer_whose_sequences_hold_other_events_is_not_replayed(
    app: App,
) -> None:
    # a stale answer (its batch never landed) whose sequences other batches took
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await app.manager.repo.put_idempotency(
        run.id, "stale", {"first_sequence": 2, "last_sequence": 2}
    )
    await m.ingest("acme", "ext", run.id, [console("other")])
    answer = await m.ingest("acme", "ext", run.id, [console("mine")], idempotency_key="stale")
    assert answer == {"first_sequence": 3, "last_sequence": 3}
    lines = [decode_event(x) for x in await log_lines(app, run)]
    assert [e.payload.get("message") for e in lines[1:]] == ["other", "mine"]
    again = await m.ingest("acme", "ext", run.id, [console("mine")], idempotency_key="stale")
    assert again == answer
    assert len(await log_lines(app, run)) == 3


async def test_idempotency_key_of_a_refused_batch_does_not_stick(app: App) -> None:
    # an append refused after the key was stored (here: an event over the size
    # limit found at encoding) must not turn the retry into a false success
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    huge = console("x" * (app.settings.max_event_bytes + ENVELOPE_ALLOWANCE + 10))
    with pytest.raises(Exception) as first:
        await m.ingest("acme", "ext", run.id, [huge], idempotency_key="big")
    with pytest.raises(type(first.value)):
        await m.ingest("acme", "ext", run.id, [huge], idempotency_key="big")
    assert len(await log_lines(app, run)) == 1


@pytest.mark.parametrize(
    "drafts",
    [
        [],
        [completed(), console("after")],
        [EventDraft(type="run.queued", payload={})],
        [completed("weird")],
    ],
    ids=["empty", "completed-not-last", "server-only-type", "bad-final-status"],
)
async def test_invalid_batch_appends_nothing(app: App, drafts: list[EventDraft]) -> None:
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    with pytest.raises(InvalidEvent):
        await m.ingest("acme", "ext", run.id, drafts)
    assert len(await log_lines(app, run)) == 1


async def test_unknown_ids_are_not_found_or_invalid(app: App) -> None:
    m = app.manager
    with pytest.raises(ConfigurationNotFound):
        await m.create_run("acme", "nope")
    with pytest.raises(InvalidInput):
        await m.create_run("../etc", "x", external=True)
    with pytest.raises(InvalidInput):
        await m.get_run("acme", "ext", "run_../../x")
    with pytest.raises(RunNotFound):
        await m.get_run("acme", "ext", "run_01JAAAAAAAAAAAAAAAAAAAAAAA")
    run = await m.create_run("acme", "ext", external=True)
    with pytest.raises(RunNotFound):
        await m.get_run("other", "ext", run.id)


async def test_ingest_into_executed_run_is_a_conflict(app: App) -> None:
    m = app.manager
    run = await m.create_run("acme", "hello")
    with pytest.raises(Conflict):
        await m.ingest("acme", "hello", run.id, [console("x")])


async def test_cancel_queued_run_completes_it_once(app: App) -> None:
    m = app.manager
    run = await m.create_run("acme", "hello")
    cancelled = await m.cancel_run("acme", "hello", run.id)
    assert cancelled.status is RunStatus.CANCELLED
    with pytest.raises(RunEnded):
        await m.cancel_run("acme", "hello", run.id)
    types = [decode_event(line).type for line in await log_lines(app, run)]
    assert types == ["run.queued", "run.completed"]


async def test_concurrent_completion_writes_exactly_one_run_completed(app: App) -> None:
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("x")])
    results = await asyncio.gather(
        m.ingest("acme", "ext", run.id, [completed("succeeded")]),
        m.cancel_run("acme", "ext", run.id),
        m.ingest("acme", "ext", run.id, [completed("failed")]),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, RunEnded) for r in results if isinstance(r, BaseException))
    types = [decode_event(line).type for line in await log_lines(app, run)]
    assert types.count("run.completed") == 1 and types[-1] == "run.completed"


async def test_runs_list_filters_and_pages(app: App) -> None:
    m = app.manager
    made = [await m.create_run("acme", "ext", external=True) for _ in range(5)]
    await m.ingest("acme", "ext", made[0].id, [completed("failed")])
    page, cursor = await m.list_runs(RunQuery(workspace_id="acme", limit=2))
    assert [r.id for r in page] == [made[4].id, made[3].id] and cursor
    rest, _ = await m.list_runs(RunQuery(workspace_id="acme", limit=10, cursor=cursor))
    assert [r.id for r in rest] == [made[2].id, made[1].id, made[0].id]
    failed, _ = await m.list_runs(
        RunQuery(workspace_id="acme", statuses=frozenset({RunStatus.FAILED}))
    )
    assert [r.id for r in failed] == [made[0].id]
    assert "acme" in await m.list_workspaces()


async def test_database_bytes_per_run_do_not_grow_with_events(app: App) -> None:
    """Design doc 4.2: the row holds counters and pointers, never the events."""
    m = app.manager
    sizes = []
    for n in (10, 100_000):
        run = await m.create_run("acme", "ext", external=True)
        batch = [console(f"line {i} " + "x" * 60) for i in range(1000)]
        for _ in range(n // 1000 or 1):
            await m.ingest("acme", "ext", run.id, batch[: min(n, 1000)])
        await m.ingest("acme", "ext", run.id, [completed()])
        done = await m.get_run("acme", "ext", run.id)
        assert done.event_count == min(n, 1000) * (n // 1000 or 1) + 2
        row = await app.manager.repo.get_run(run.id)
        # the console snippet is a bounded tail (<= 4 KiB), measured apart
        assert len((row.last_console_snippet or "").encode()) <= 4096
        fields = {**row.to_dict(), "last_console_snippet": None}
        sizes.append(len(json.dumps(fields, default=str)) + len(json.dumps(row.summary)))
    # only the digit counts of the counters may differ
    assert abs(sizes[0] - sizes[1]) < 40, sizes


async def test_reindex_rebuilds_rows_from_logs_alone(
    app: App, settings: Any, tmp_path: Any
) -> None:
    from runevents.maintenance import reindex
    from runevents.settings import Settings

    m = app.manager
    ok = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", ok.id, [console("a"), completed("succeeded")])
    # a run whose producer talked in two batches, some time apart
    two = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", two.id, [console("first")])
    await asyncio.sleep(0.05)
    await m.ingest("acme", "ext", two.id, [completed("succeeded")])
    orphan = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", orphan.id, [console("b")])
    original = await m.get_run("acme", "ext", ok.id)
    original_two = await m.get_run("acme", "ext", two.id)
    await app.manager.close()  # drops the orphan's writer, as a crash would

    fresh_settings = Settings(
        **{**settings.model_dump(), "database_url": f"sqlite:///{tmp_path / 'fresh.db'}"}
    )
    fresh = await App.open(fresh_settings, worker=False)
    try:
        report = await reindex(fresh.manager)
        assert report.runs == 3 and not report.errors
        rebuilt = await fresh.manager.get_run("acme", "ext", ok.id)
        assert rebuilt.status is RunStatus.SUCCEEDED
        assert rebuilt.summary == original.summary
        assert rebuilt.event_count == original.event_count
        # regression (durability issue, defect 13): the rebuilt row is the same row
        assert rebuilt.created_at == original.created_at
        # ...its started_at and completed_at too: reindex made an external run start
        # when it completed (duration 0), and took completed_at a few ms off
        for before in (original, original_two):
            after = await fresh.manager.get_run("acme", "ext", before.id)
            stamps = ("created_at", "started_at", "completed_at")
            assert [getattr(after, k) for k in stamps] == [getattr(before, k) for k in stamps]
        assert original_two.started_at is not None and original_two.completed_at is not None
        assert original_two.completed_at - original_two.started_at >= timedelta(seconds=0.05)
        # regression (defect 9): an external run whose producer pauses is not "orphaned"
        # by reindex; it stays live (its idle timeout fails it if the producer is gone)
        paused = await fresh.manager.get_run("acme", "ext", orphan.id)
        assert not paused.status.ended and paused.event_count == 2
    finally:
        await fresh.close()


def table_summary(table_id: str, row_count: Any) -> EventDraft:
    return EventDraft(
        type="run.table.summary",
        payload={
            "table_id": table_id,
            "source_file": "f",
            "table_index": 0,
            "row_count": row_count,
            "column_count": 1,
        },
    )


async def reindex_into_fresh_database(settings: Any, tmp_path: Any) -> tuple[App, Any]:
    """A second App on an empty SQLite database over the same logs, and its reindex report."""
    from runevents.maintenance import reindex
    from runevents.settings import Settings

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    fresh = await App.open(Settings(**{**settings.model_dump(), "database_url": url}), worker=False)
    try:
        return fresh, await reindex(fresh.manager)
    except BaseException:
        await fresh.close()
        raise


async def test_huge_row_count_leaves_the_run_stuck_in_running(
    app: App, settings: Any, tmp_path: Any
) -> None:
    # regression (summary defect 1): a row_count >= 2**63 (or two whose sum is) reached the
    # row's BIGINT: SQLite failed the completion (500), Postgres never finished the row,
    # cancel failed and reindex crashed. Now: malformed, or the sum saturates.
    m = app.manager
    half, int64_max = 2**62, 2**63 - 1
    cases = {
        "huge": ([table_summary("t", 2**63)], 0),
        "huger": ([table_summary("t", 10**20)], 0),
        "sum": ([table_summary("t", half), table_summary("u", half)], int64_max),
    }
    finished = {}
    for name, (drafts, rows) in cases.items():
        run = await m.create_run("acme", "ext", external=True)
        # an exit code past the 32-bit column is kept in the summary, null in the row
        execution = {"exit_code": 10**20, "duration_ms": 10**20}
        await m.ingest("acme", "ext", run.id, [*drafts, completed(execution=execution)])
        done = await m.get_run("acme", "ext", run.id)
        assert done.status is RunStatus.SUCCEEDED and done.log_state is LogState.PLAIN, name
        assert done.summary is not None and done.row_count == rows, name
        assert done.summary["tables"]["row_count"] == rows, name
        assert done.summary["events"]["ignored"] == (0 if name == "sum" else 1), name
        assert done.summary["execution"]["exit_code"] == 10**20 and done.exit_code is None
        finished[run.id] = done
    # a cancel finishes the row from the same summary
    cancel = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", cancel.id, cases["sum"][0])
    cancelled = await m.cancel_run("acme", "ext", cancel.id)
    assert cancelled.status is RunStatus.CANCELLED and cancelled.row_count == int64_max
    finished[cancel.id] = await m.get_run("acme", "ext", cancel.id)
    await app.manager.close()
    fresh, report = await reindex_into_fresh_database(settings, tmp_path)
    try:
        assert report.runs == len(finished) and not report.errors
        for before in finished.values():
            after = await fresh.manager.get_run("acme", "ext", before.id)
            assert after.summary == before.summary and after.row_count == before.row_count
    finally:
        await fresh.close()


async def test_run_completed_with_a_non_object_failure_or_execution(
    app: App, settings: Any, tmp_path: Any
) -> None:
    # regression (summary defect 2): {"failure": "boom"} made the whole run.completed
    # malformed (summary status null while the row said failed), and reindex then
    # aborted for the whole store (ValueError: None is not a valid RunStatus)
    m = app.manager
    runs = []
    for key in ("failure", "execution"):
        run = await m.create_run("acme", "ext", external=True)
        await m.ingest("acme", "ext", run.id, [console("a"), completed("failed", **{key: "boom"})])
        done = await m.get_run("acme", "ext", run.id)
        assert done.status is RunStatus.FAILED and done.summary is not None
        assert done.summary["status"] == "failed" and done.summary["events"]["ignored"] == 0
        assert done.summary["execution"]["completed_at"] is not None
        lines = await log_lines(app, done)
        assert decode_event(lines[-1]).payload["summary"] == done.summary
        runs.append(done)
    await app.manager.close()
    fresh, report = await reindex_into_fresh_database(settings, tmp_path)
    try:
        assert report.runs == 2 and not report.errors
        for before in runs:
            after = await fresh.manager.get_run("acme", "ext", before.id)
            assert after.status is RunStatus.FAILED and after.summary == before.summary
    finally:
        await fresh.close()


async def test_reindex_goes_on_past_a_run_whose_log_cannot_be_rebuilt(
    app: App, settings: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # regression (summary defect 2): one run's unexpected error (a ValueError) aborted
    # the rebuild of every other run; now it is reported and the pass goes on
    from runevents.manager import RunManager

    m = app.manager
    ids = []
    for _ in range(3):
        run = await m.create_run("acme", "ext", external=True)
        await m.ingest("acme", "ext", run.id, [console("a"), completed()])
        ids.append(run.id)
    await app.manager.close()
    bad = ids[1]
    real = RunManager.reindex_log

    async def broken(self: RunManager, workspace_id: str, run_id: str) -> Any:
        if run_id == bad:
            raise ValueError("None is not a valid RunStatus")
        return await real(self, workspace_id, run_id)

    monkeypatch.setattr(RunManager, "reindex_log", broken)
    fresh, report = await reindex_into_fresh_database(settings, tmp_path)
    try:
        assert report.runs == 2 and sorted(report.run_ids) == sorted(set(ids) - {bad})
        assert len(report.errors) == 1 and report.errors[0].startswith(f"{bad}: ")
        assert "ValueError" in report.errors[0]
        for run_id in set(ids) - {bad}:
            assert (await fresh.manager.get_run("acme", "ext", run_id)).status.ended
        with pytest.raises(RunNotFound):
            await fresh.manager.get_run("acme", "ext", bad)
    finally:
        await fresh.close()


async def test_summary_string_containing_nul_is_the_same_in_row_and_log(
    app: App, settings: Any, tmp_path: Any
) -> None:
    # regression (summary defect 3): the stored run.completed kept U+0000 where the row
    # (Postgres cannot store it; SQLite scrubbed alike) said U+FFFD: GET {run} differed
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    phase = EventDraft(type="run.phase.started", payload={"phase": "p\u2028q\x00"})
    error = EventDraft(
        type="run.error", payload={"stage": "run", "code": "c\x00", "message": "m\x00"}
    )
    await m.ingest("acme", "ext", run.id, [phase, error, completed("failed")])
    done = await m.get_run("acme", "ext", run.id)
    assert done.summary is not None
    assert done.summary["phases"][0]["phase"] == "p\u2028q\ufffd"
    assert done.summary["failure"] == {"stage": "run", "code": "c\ufffd", "message": "m\ufffd"}
    lines = await log_lines(app, done)
    assert decode_event(lines[-1]).payload["summary"] == done.summary
    assert summarize_lines(lines) == done.summary
    await app.manager.close()
    fresh, report = await reindex_into_fresh_database(settings, tmp_path)
    try:
        assert report.runs == 1 and not report.errors
        rebuilt = await fresh.manager.get_run("acme", "ext", run.id)
        assert rebuilt.summary == done.summary
    finally:
        await fresh.close()


async def test_expired_run_keeps_row_and_reports_410(app: App) -> None:
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a"), completed()])
    done = await m.get_run("acme", "ext", run.id)
    assert await m.expire_run(done) == done.events_bytes
    expired = await m.get_run("acme", "ext", run.id)
    assert expired.log_state is LogState.EXPIRED and expired.summary == done.summary
    with pytest.raises(LogExpired):
        await m.open_events("acme", "ext", run.id)
