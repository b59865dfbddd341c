"""Compaction policy on SQLite and Postgres: which runs, what the row says, transparency."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from runevents import maintenance
from runevents.api.app import create_app
from runevents.app import App
from runevents.compaction_journal import CompactionJournal
from runevents.eventlog.compressed import FrameIndex
from runevents.events import decode_event
from runevents.exceptions import MaintenanceBusy
from runevents.maintenance import compact
from runevents.models import LogState, RunStatus, utcnow
from runevents.settings import Settings
from runevents.summary import summarize_lines
from runevents.upkeep import run_ref
from tests.fixtures.app import asgi_client
from tests.integration.maintenance.conftest import (
    console,
    files_of,
    finished_run,
    follow_bytes,
    live_run,
    log_bytes,
    log_dir,
    row_view,
)

HOUR = timedelta(hours=1)


async def test_compacts_only_ended_runs_older_than_the_age_counted_from_completed_at(
    app: App,
) -> None:
    m = app.manager
    old = await finished_run(app, age=2 * HOUR)
    young = await finished_run(app)
    # created long ago but completed just now: the age counts from completed_at
    late = await finished_run(app)
    late = await m.repo.update_run(late.id, created_at=late.created_at - timedelta(days=30))
    running = await live_run(app)
    queued = await m.create_run("acme", "ext", external=True)

    report = await compact(m, HOUR)

    assert report.run_ids == [old.id] and report.runs == 1 and not report.errors
    after = await m.get_run("acme", "ext", old.id)
    assert after.log_state is LogState.COMPRESSED
    zst = log_dir(app, old) / "events.ndjson.zst"
    assert after.events_path == str(zst)
    assert after.events_bytes == zst.stat().st_size < old.events_bytes
    assert report.bytes_before == old.events_bytes and report.bytes_after == after.events_bytes
    # the counters and the summary are the run's, not the storage form's
    assert after.event_count == old.event_count and after.summary == old.summary
    assert files_of(app, old) == [
        "events.ndjson.zst",
        "events.ndjson.zst.idx",
        "events.ndjson.zst.ngrams",
    ]
    for untouched in (young, late):
        row = await m.get_run("acme", "ext", untouched.id)
        assert row.log_state is LogState.PLAIN and "events.ndjson" in files_of(app, row)
    # the live run keeps its plain log and its writer: appending still works
    assert (await m.get_run("acme", "ext", running.id)).log_state is LogState.LIVE
    await m.ingest("acme", "ext", running.id, [console("more")])
    assert (await m.get_run("acme", "ext", queued.id)).status is RunStatus.QUEUED
    assert CompactionJournal(m.log).pending() == []

    # a second pass finds nothing left to do
    again = await compact(m, HOUR)
    assert again.runs == 0 and not again.errors


async def test_compacted_log_reads_byte_identical_everywhere(app: App, settings: Settings) -> None:
    m = app.manager
    # small frames, so that positions land in the middle of many frames
    m.log.frame_bytes = 4096
    run = await finished_run(app, events=1500, age=2 * HOUR)
    total = run.event_count
    positions = [0, 1, 2, 57, total // 2, total - 2, total - 1, total, total + 5]

    async def snapshot() -> dict[str, object]:
        current = await m.get_run("acme", "ext", run.id)
        data: dict[str, object] = {"all": await log_bytes(app, current)}
        for after in positions:
            for limit in (None, 1, 37):
                data[f"read {after} {limit}"] = await log_bytes(app, current, after, limit)
            data[f"follow {after}"] = await follow_bytes(app, current, after)
        data["search"] = await m.search_events(
            current, q="row 1", stream="stderr", level=None, after_sequence=3, limit=20
        )
        async with asgi_client(create_app(settings, app=app)) as client:
            base = f"/api/v1/workspaces/acme/configurations/ext/runs/{run.id}/events"
            pages: list[bytes] = []
            after = 0
            while True:
                page = await client.get(base, params={"after_sequence": after, "limit": 97})
                assert page.status_code == 200, page.text
                pages.append(page.content)
                body = page.json()
                after = body["next_after_sequence"]
                if not body["has_more"]:
                    break
            data["json pages"] = pages
            for after in (0, 700):
                ndjson = await client.get(
                    base,
                    params={"after_sequence": after},
                    headers={"Accept": "application/x-ndjson"},
                )
                assert ndjson.status_code == 200
                data[f"ndjson {after}"] = ndjson.content
            sse = await client.get(base, params={"stream": "true", "from_sequence": 1000})
            assert sse.status_code == 200
            data["sse"] = sse.content
        return data

    before = await snapshot()
    lines = before["all"].split(b"\n")[:-1]  # type: ignore[union-attr]
    assert [decode_event(line).sequence for line in lines] == list(range(1, total + 1))

    report = await compact(m, HOUR)
    assert report.runs == 1 and not report.errors
    compacted = await m.get_run("acme", "ext", run.id)
    assert compacted.log_state is LogState.COMPRESSED
    index = FrameIndex.from_bytes((log_dir(app, run) / "events.ndjson.zst.idx").read_bytes())
    assert index.frames > 50 and index.event_count == total

    after = await snapshot()
    for key, value in before.items():
        assert after[key] == value, key
    # the summary rebuilt from the compressed log equals the stored one
    assert summarize_lines(lines) == compacted.summary
    # and so does reindex, which points the row at the compressed form
    rebuilt = await m.reindex_log("acme", run.id)
    assert rebuilt.summary == compacted.summary
    assert rebuilt.log_state is LogState.COMPRESSED
    assert rebuilt.events_path == compacted.events_path
    assert rebuilt.event_count == total and rebuilt.events_bytes == compacted.events_bytes


async def test_compaction_dry_run_lists_and_changes_nothing(app: App) -> None:
    m = app.manager
    runs = [await finished_run(app, age=2 * HOUR) for _ in range(3)]
    young = await finished_run(app)
    rows = {r.id: row_view(await m.get_run("acme", "ext", r.id)) for r in [*runs, young]}
    files = {r.id: files_of(app, r) for r in [*runs, young]}

    report = await compact(m, HOUR, dry_run=True)

    assert report.dry_run and sorted(report.run_ids) == sorted(r.id for r in runs)
    assert report.bytes_before == sum(r.events_bytes for r in runs) == report.bytes_after
    for run_id, view in rows.items():
        current = await m.repo.get_run(run_id)
        assert row_view(current) == view
        assert files_of(app, current) == files[run_id]
    assert json.loads(json.dumps(report.to_dict()))["run_ids"] == report.run_ids


async def test_pages_through_many_runs_while_changing_them(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyset pages stay right while the rows they select change state."""
    monkeypatch.setattr(maintenance, "PAGE", 3)
    m = app.manager
    runs = [await finished_run(app, events=3, age=2 * HOUR) for _ in range(10)]
    seen: list[tuple[str | None, int | None]] = []
    report = await compact(
        m, HOUR, progress=lambda run, total: seen.append((run and run.id, total))
    )
    assert sorted(report.run_ids) == sorted(r.id for r in runs)
    for run in runs:
        assert (await m.repo.get_run(run.id)).log_state is LogState.COMPRESSED
    # totals grow page by page to the exact count; every run advances once
    totals = [t for _, t in seen if t is not None]
    assert totals == [3, 6, 9, 10]
    assert sorted(r for r, t in seen if t is None) == sorted(r.id for r in runs)


async def test_compact_run_is_idempotent_and_skips_rows_another_pass_changed(app: App) -> None:
    m = app.manager
    run = await finished_run(app, age=2 * HOUR)
    stale = run  # the row as a page read it, before another pass compacted it
    assert await m.compact_run(run) is not None
    assert await m.compact_run(stale) is None
    await m.expire_run(await m.repo.get_run(run.id))
    assert await m.compact_run(stale) is None
    assert (await m.repo.get_run(run.id)).log_state is LogState.EXPIRED


async def test_interrupted_compaction_in_the_journal_is_finished_by_the_next_pass(
    app: App,
) -> None:
    """The state a kill -9 after the row update leaves: row compressed, plain still there."""
    m = app.manager
    run = await finished_run(app, age=2 * HOUR)
    content = await log_bytes(app, run)
    ref = run_ref(run)
    info = await m.log.compact(ref)
    CompactionJournal(m.log).add(run.id)
    await m.repo.update_run(
        run.id, log_state=LogState.COMPRESSED, events_path=info.events_path, events_bytes=info.bytes
    )
    assert "events.ndjson" in files_of(app, run)

    report = await compact(m, HOUR)

    assert report.recovered == [run.id] and report.runs == 0 and not report.errors
    assert files_of(app, run) == [
        "events.ndjson.zst",
        "events.ndjson.zst.idx",
        "events.ndjson.zst.ngrams",
    ]
    assert CompactionJournal(m.log).pending() == []
    assert await log_bytes(app, await m.repo.get_run(run.id)) == content


async def test_compaction_racing_retention_leaves_the_row_expired(app: App) -> None:
    """Retention deletes the body between compaction's write and its row update.

    On Postgres the maintenance lock keeps retention out (next test); this is
    the step without it (SQLite: one host, the engine's file locks only).
    """
    m = app.manager
    run = await finished_run(app, age=2 * HOUR)
    compact_log = m.log.compact

    async def compact_then_retention_wins(ref):  # type: ignore[no-untyped-def]
        info = await compact_log(ref)
        # retention's step, without the lock: the row expired, the body queued
        assert await m.repo.expire_log(run.id, utcnow()) is not None
        return info

    m.log.compact = compact_then_retention_wins  # type: ignore[method-assign]
    try:
        assert await m.compact_run(run) is None
    finally:
        del m.log.compact
    row = await m.repo.get_run(run.id)
    assert row.log_state is LogState.EXPIRED  # compaction did not undo the expiry
    assert CompactionJournal(m.log).pending() == []
    # the queued deletion takes every form, the compressed one compaction wrote too
    assert await m.delete_due_bodies(now=utcnow() + timedelta(hours=1)) == 1
    assert files_of(app, run) == []


async def test_retention_during_compaction_is_refused_on_a_shared_database(app: App) -> None:
    """Postgres: a retention step that meets a compaction of the same run is refused at once
    (MaintenanceBusy, the pass skips it), and the compaction completes."""
    m = app.manager
    if not m.run_locks.shared:
        pytest.skip("SQLite is one host: no cross-process maintenance lock")
    run = await finished_run(app, age=2 * HOUR)
    compact_log = m.log.compact
    refused: list[str] = []

    async def compact_while_retention_tries(ref):  # type: ignore[no-untyped-def]
        info = await compact_log(ref)
        with pytest.raises(MaintenanceBusy):
            await m.expire_run(await m.repo.get_run(run.id))
        refused.append(run.id)
        return info

    m.log.compact = compact_while_retention_tries  # type: ignore[method-assign]
    try:
        assert await m.compact_run(run) is not None
    finally:
        del m.log.compact
    assert refused == [run.id]
    row = await m.repo.get_run(run.id)
    assert row.log_state is LogState.COMPRESSED
    assert await log_bytes(app, row)  # readable
    # the lock was released: retention now goes through
    assert await m.expire_run(row) == row.events_bytes


async def test_journal_entry_of_a_vanished_run_is_dropped(app: App) -> None:
    """The journal lives under the spool dir (host-local), never in the log store."""
    journal = CompactionJournal(app.manager.log)
    assert journal.directory.is_relative_to(app.manager.log.spool_dir)
    journal.add("run_01JAAAAAAAAAAAAAAAAAAAAAAA")
    assert journal.pending() == ["run_01JAAAAAAAAAAAAAAAAAAAAAAA"]
    # an entry whose run is gone is dropped by the next pass
    report = await compact(app.manager, HOUR)
    assert journal.pending() == [] and report.recovered == []
