"""Retention policy on SQLite and Postgres: by age, by count per configuration, by total bytes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from runevents import maintenance
from runevents.api.app import create_app
from runevents.app import App
from runevents.exceptions import LogExpired, RunEnded, StorageError
from runevents.maintenance import retention
from runevents.models import LogState, Run, RunQuery, RunStatus, utcnow
from runevents.repair import repair_pass
from runevents.settings import Settings
from tests.fixtures.app import asgi_client
from tests.integration.maintenance.conftest import (
    backdate,
    console,
    files_of,
    finished_run,
    live_run,
    log_bytes,
    row_view,
)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


async def state(app: App, run: Run) -> LogState:
    return (await app.manager.repo.get_run(run.id)).log_state


async def assert_expired(app: App, settings: Settings, before: Run) -> None:
    """Row and summary stay, body gone, events answer LogExpired / 410 with a clear message."""
    m = app.manager
    row = await m.repo.get_run(before.id)
    assert row.log_state is LogState.EXPIRED
    view, old = row_view(row), row_view(before)
    view.pop("log_state"), old.pop("log_state")
    assert view == old  # status, summary, counters, pointers: all kept
    # new reads are refused at once; the body waits out the delay (deferred deletion)
    assert await m.repo.log_deletion_queued(row.id)
    with pytest.raises(LogExpired):
        await m.open_events(row.workspace_id, row.configuration_id, row.id)
    async with asgi_client(create_app(settings, app=app)) as client:
        base = f"/api/v1/workspaces/{row.workspace_id}/configurations/{row.configuration_id}"
        got = await client.get(f"{base}/runs/{row.id}")
        assert got.status_code == 200
        assert got.json()["run"]["log_state"] == "expired"
        assert got.json()["summary"] == before.summary
        events = await client.get(f"{base}/runs/{row.id}/events")
        assert events.status_code == 410
        error = events.json()["error"]
        assert error["code"] == "log_expired" and "retention" in error["message"]


async def assert_deleted_after_the_delay(app: App, settings: Settings, *expired: Run) -> None:
    """The bodies stay until ``delete_delay_seconds`` after the expiry, then one sweep
    deletes every form of each."""
    m = app.manager
    assert all(files_of(app, run) != [] for run in expired)
    assert await m.delete_due_bodies() == 0  # not yet due
    later = utcnow() + timedelta(seconds=settings.delete_delay_seconds)
    assert await m.delete_due_bodies(now=later) == len(expired)
    for run in expired:
        assert files_of(app, run) == []
        assert not await m.repo.log_deletion_queued(run.id)


async def test_retention_by_age_keeps_rows_and_never_touches_live_or_young_runs(
    app: App, settings: Settings
) -> None:
    m = app.manager
    old_compressed = await finished_run(app, age=3 * DAY)
    assert await m.compact_run(old_compressed) is not None
    old_compressed = await m.repo.get_run(old_compressed.id)
    old_plain = await finished_run(app, age=3 * DAY, status="failed")
    young = await finished_run(app, age=HOUR)
    running = await live_run(app)
    content = await log_bytes(app, young)

    report = await retention(m, 2 * DAY)

    assert sorted(report.run_ids) == sorted([old_plain.id, old_compressed.id])
    assert report.bytes_before == old_plain.events_bytes + old_compressed.events_bytes
    assert report.bytes_after == 0 and not report.errors
    await assert_expired(app, settings, old_plain)
    await assert_expired(app, settings, old_compressed)
    await assert_deleted_after_the_delay(app, settings, old_plain, old_compressed)
    assert await state(app, young) is LogState.PLAIN
    assert await log_bytes(app, young) == content
    assert await state(app, running) is LogState.LIVE
    await m.ingest("acme", "ext", running.id, [console("alive")])
    # nothing left for a second pass
    assert (await retention(m, 2 * DAY)).runs == 0


async def test_retention_with_every_policy_at_zero_still_spares_live_runs(app: App) -> None:
    m = app.manager
    ended = [await finished_run(app) for _ in range(3)]
    running = await live_run(app)
    queued = await m.create_run("acme", "ext", external=True)

    report = await retention(m, timedelta(0), keep_per_configuration=0, max_bytes=0)

    assert sorted(report.run_ids) == sorted(r.id for r in ended)
    for run in ended:
        assert await state(app, run) is LogState.EXPIRED
    assert await state(app, running) is LogState.LIVE
    assert await state(app, queued) is LogState.LIVE
    assert "events.ndjson" in files_of(app, running) and "events.ndjson" in files_of(app, queued)


async def test_retention_keeps_the_newest_runs_per_configuration(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "RANKED_PAGE", 2)  # several pages while rows change
    m = app.manager
    etl = [await finished_run(app, cfg="etl") for _ in range(5)]
    other = [await finished_run(app, cfg="other") for _ in range(2)]
    beta = [await finished_run(app, ws="beta", cfg="etl") for _ in range(3)]
    running = await live_run(app, cfg="etl")

    report = await retention(m, None, keep_per_configuration=2)

    gone = {*(r.id for r in etl[:3]), beta[0].id}
    assert set(report.run_ids) == gone and report.runs == 4
    for run in [*etl, *other, *beta]:
        expected = LogState.EXPIRED if run.id in gone else LogState.PLAIN
        assert await state(app, run) is expected, run.id
    assert await state(app, running) is LogState.LIVE


async def test_retention_by_total_bytes_deletes_the_oldest_first(app: App) -> None:
    m = app.manager
    runs = [await finished_run(app, events=30) for _ in range(5)]
    # completed_at order differs from creation order: the cap goes by completed_at
    ages = [5, 1, 4, 2, 3]
    runs = [await backdate(app, run, age * HOUR) for run, age in zip(runs, ages, strict=True)]
    by_age = sorted(runs, key=lambda r: r.completed_at or r.created_at)
    total = sum(r.events_bytes for r in runs)
    cap = total - by_age[0].events_bytes - by_age[1].events_bytes + 1

    report = await retention(m, None, max_bytes=cap)

    assert report.run_ids == [by_age[0].id, by_age[1].id]
    assert await m.repo.log_bytes_total({LogState.PLAIN, LogState.COMPRESSED}) <= cap
    assert (await retention(m, None, max_bytes=cap)).runs == 0


async def test_retention_dry_run_lists_exactly_what_the_real_pass_then_does(app: App) -> None:
    m = app.manager
    by_age = [await finished_run(app, cfg="a", age=3 * DAY) for _ in range(2)]
    by_count = [await finished_run(app, cfg="b", age=HOUR) for _ in range(3)]
    by_bytes = [await finished_run(app, cfg="c", events=200, age=2 * HOUR)]
    kept = [await finished_run(app, cfg="c", age=timedelta(minutes=1))]
    everything = [*by_age, *by_count, *by_bytes, *kept]
    rows = {r.id: row_view(await m.repo.get_run(r.id)) for r in everything}
    files = {r.id: files_of(app, r) for r in everything}
    cap = sum(r.events_bytes for r in [*by_count[1:], *kept])

    dry = await retention(m, 2 * DAY, keep_per_configuration=2, max_bytes=cap, dry_run=True)

    expected = [*(r.id for r in by_age), by_count[0].id, by_bytes[0].id]
    assert dry.dry_run and dry.run_ids == expected
    assert dry.bytes_before == sum(r.events_bytes for r in [*by_age, by_count[0], *by_bytes])
    assert dry.bytes_after == 0
    for run_id, view in rows.items():
        current = await m.repo.get_run(run_id)
        assert row_view(current) == view
        assert files_of(app, current) == files[run_id]

    real = await retention(m, 2 * DAY, keep_per_configuration=2, max_bytes=cap)
    assert real.run_ids == dry.run_ids and real.bytes_saved == dry.bytes_saved


async def test_expired_run_stays_listed_and_cancel_or_ingest_still_conflict(app: App) -> None:
    m = app.manager
    run = await finished_run(app, age=2 * DAY)
    await retention(m, DAY)
    page, _ = await m.list_runs(RunQuery(workspace_id="acme"))
    assert [r.id for r in page] == [run.id] and page[0].status is RunStatus.SUCCEEDED
    with pytest.raises(RunEnded):
        await m.ingest("acme", "ext", run.id, [console("late")])


async def test_the_repair_loop_deletes_a_body_whose_delay_has_passed(app: App) -> None:
    """An expiry whose pass died before the deletion (or a body waiting out the delay):
    every process's repair pass deletes it once due, and leaves younger ones alone."""
    m = app.manager
    due, young = await finished_run(app, age=3 * DAY), await finished_run(app, age=3 * DAY)
    delay = timedelta(seconds=m.settings.delete_delay_seconds)
    assert await m.repo.expire_log(due.id, utcnow() - delay - timedelta(seconds=1))
    assert await m.repo.expire_log(young.id, utcnow())
    await repair_pass(m)
    assert files_of(app, due) == [] and not await m.repo.log_deletion_queued(due.id)
    assert files_of(app, young) != [] and await m.repo.log_deletion_queued(young.id)
    assert (await m.repo.get_run(young.id)).log_state is LogState.EXPIRED


async def test_retention_during_an_object_store_outage_reported_an_error_alone(
    app: App, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: with S3 away, ``retention --older-than 0s --delete-delay 0s``
    exited with only "error: S3 list ... failed" (no report, ``--json`` printed nothing)
    although it had expired every run; a second pass then reported 0 runs. The report
    now lists the runs it expired, and says their bodies wait for deletion."""
    m = app.manager
    old = await finished_run(app, age=3 * DAY)

    async def store_away(*args: object, **kwargs: object) -> int:
        raise StorageError("S3 list of the log store failed: cannot reach the object store")

    monkeypatch.setattr(m, "delete_due_bodies", store_away)
    report = await retention(m, 2 * DAY)  # (raised StorageError)
    assert report.run_ids == [old.id] and report.runs == 1
    assert any("queued for deletion" in error for error in report.errors), report.errors
    monkeypatch.undo()
    await assert_expired(app, settings, old)
    await assert_deleted_after_the_delay(app, settings, old)
