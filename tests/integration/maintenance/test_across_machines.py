"""Maintenance on several machines at once (contract 10, issue 14).

Two Apps with data dirs of their own share one Postgres database and one
SeaweedFS bucket, as two replicas on two hosts do: nothing local (the spool's
file locks, the compaction journal) is shared between them. Both run the same
passes over the same runs at the same time while readers on both read every
run. Each run must be compacted / expired by exactly one of them (the other
counts it skipped or finds it done), no pass reports an error, and every read
returns the whole log byte for byte (or, once expired, LogExpired).

The maintenance lock itself (``db/runlocks.py``) is checked directly too: a
second session does not get it, a dead holder's session gives it back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from runevents import maintenance
from runevents.app import App
from runevents.db import open_database
from runevents.db.runlocks import RunLocks, maintenance_key
from runevents.events import EventDraft
from runevents.exceptions import LogExpired, LogNotFound
from runevents.models import LogState, Run, utcnow
from runevents.settings import Settings
from runevents.upkeep import run_ref
from tests.fixtures.s3 import SeaweedFS
from tests.integration.maintenance.conftest import backdate, console, finished_run, log_bytes

pytestmark = [pytest.mark.postgres, pytest.mark.s3]

HOUR = timedelta(hours=1)
NOW = timedelta(0)
RUNS = 16


@pytest.fixture
def machines_env(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[SeaweedFS, str]:
    """The bucket (through the AWS variables, as a deployment configures it) and a prefix."""
    server: SeaweedFS = request.getfixturevalue("seaweedfs")
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_access_key)
    monkeypatch.setenv("AWS_REGION", server.region)
    return server, f"machines/{uuid.uuid4().hex}"


@pytest.fixture
async def two_machines(
    machines_env: tuple[SeaweedFS, str], pg_database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[App, App]]:
    server, prefix = machines_env
    apps: list[App] = []
    try:
        for name in ("host-a", "host-b"):
            settings = Settings(
                data_dir=tmp_path / name,
                database_url=pg_database_url,
                storage_url=server.url(prefix),
                worker_concurrency=0,
                maintenance_interval_seconds=0,
                repair_interval_seconds=0,
                flush_interval_ms=5,
            )
            apps.append(await App.open(settings, worker=False))
        yield apps[0], apps[1]
    finally:
        for app in apps:
            await app.close()


async def _reader(
    apps: tuple[App, App], runs: list[Run], expected: dict[str, bytes], stop: asyncio.Event
) -> int:
    """Read every run through both apps until ``stop``; fail on any wrong or failed read."""
    reads = 0
    while not stop.is_set():
        for app in apps:
            for run in runs:
                try:
                    row = await app.manager.repo.get_run(run.id)
                    # the API's check (410 once expired); a read past it is never cut:
                    # the body outlives the expiry by the delete delay
                    await app.manager.open_events(row.workspace_id, row.configuration_id, row.id)
                    got = await log_bytes(app, row)
                except LogExpired:
                    continue  # retention removed it: the documented answer (410)
                assert got == expected[run.id], f"{run.id}: a read returned other bytes"
                reads += 1
                await asyncio.sleep(0)
    return reads


async def _race(apps: tuple[App, App], runs: list[Run], expected, *passes) -> tuple[list, int]:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    reader = asyncio.create_task(_reader(apps, runs, expected, stop))
    try:
        reports = await asyncio.gather(*passes)
    finally:
        stop.set()
    return list(reports), await reader


async def test_two_hosts_compact_and_expire_each_run_exactly_once_while_reads_go_on(
    two_machines: tuple[App, App],
) -> None:
    a, b = two_machines
    runs = [await finished_run(a, events=300, age=2 * HOUR) for _ in range(RUNS)]
    ids = {run.id for run in runs}
    expected = {run.id: await log_bytes(a, run) for run in runs}

    # compaction on both hosts at once, readers on both
    reports, reads = await _race(
        (a, b),
        runs,
        expected,
        maintenance.compact(a.manager, HOUR),
        maintenance.compact(b.manager, HOUR),
    )
    assert [r.errors for r in reports] == [[], []]
    done_a, done_b = (set(r.run_ids) for r in reports)
    assert not done_a & done_b, "a run was compacted by both hosts"
    assert done_a | done_b == ids
    assert reports[0].runs + reports[1].runs == RUNS
    assert reads > 0
    rows = {run.id: await a.manager.repo.get_run(run.id) for run in runs}
    assert {row.log_state for row in rows.values()} == {LogState.COMPRESSED}
    compressed_bytes = sum(row.events_bytes for row in rows.values())
    assert sum(r.bytes_after for r in reports) == compressed_bytes

    # retention on both hosts at once, reindex on a third pass beside them
    reports, _ = await _race(
        (a, b),
        runs,
        expected,
        # age 0: reindex rebuilds completed_at from the log, undoing the test's backdating
        maintenance.retention(a.manager, NOW),
        maintenance.retention(b.manager, NOW),
        maintenance.reindex(b.manager),
    )
    expire_a, expire_b, reindexed = reports
    assert [r.errors for r in reports] == [[], [], []]
    # a run reindex held while both retention passes came by is left to the next pass
    again = await maintenance.retention(a.manager, NOW)
    expired = [set(expire_a.run_ids), set(expire_b.run_ids), set(again.run_ids)]
    assert sum(len(s) for s in expired) == len(set().union(*expired)), "expired twice"
    assert set().union(*expired) == ids
    assert again.runs <= expire_a.skipped + expire_b.skipped
    # each body's bytes are counted once: by the host that deleted it
    freed = expire_a.bytes_before + expire_b.bytes_before + again.bytes_before
    assert freed == compressed_bytes
    assert reindexed.runs + reindexed.skipped <= RUNS
    for run in runs:
        row = await b.manager.repo.get_run(run.id)
        assert row.log_state is LogState.EXPIRED, run.id
        with pytest.raises(LogExpired):
            await b.manager.open_events(row.workspace_id, row.configuration_id, row.id)
    # the bodies outlive the expiry by the delete delay; then one sweep deletes each
    later = utcnow() + timedelta(seconds=a.settings.delete_delay_seconds)
    swept = await asyncio.gather(
        a.manager.delete_due_bodies(now=later), b.manager.delete_due_bodies(now=later)
    )
    swept_again = await a.manager.delete_due_bodies(now=later)
    assert sum(swept) + swept_again == RUNS
    for run in runs:
        assert not await a.manager.repo.log_deletion_queued(run.id)
        assert (await a.manager.log.stats(run_ref(run))).form is None, run.id


async def test_a_pass_skips_the_runs_another_host_is_maintaining(
    two_machines: tuple[App, App],
) -> None:
    a, b = two_machines
    runs = [await finished_run(a, events=50, age=2 * HOUR) for _ in range(3)]
    held = runs[1]
    # host A is in the middle of a step on one run (it holds its maintenance lock)
    async with a.manager.maintaining(held.id):
        report = await maintenance.compact(b.manager, HOUR)
        assert report.skipped == 1 and report.errors == []
        assert set(report.run_ids) == {runs[0].id, runs[2].id}
        expired = await maintenance.retention(b.manager, HOUR)
        assert expired.skipped == 1 and held.id not in expired.run_ids
    assert (await b.manager.repo.get_run(held.id)).log_state is LogState.PLAIN
    # once A lets go, the next pass does it
    report = await maintenance.compact(b.manager, HOUR)
    assert report.run_ids == [held.id] and report.skipped == 0


async def test_maintenance_lock_is_exclusive_and_dies_with_its_session(
    pg_database_url: str,
) -> None:
    one, two = await open_database(pg_database_url), await open_database(pg_database_url)
    try:
        first, second = RunLocks(one), RunLocks(two)
        assert first.shared and second.shared
        async with first.hold("run_x") as got:
            assert got
            async with second.hold("run_x") as other:
                assert not other
            async with second.hold("run_y") as other:
                assert other  # another run: no contention
        async with second.hold("run_x") as got:
            assert got  # released at the end of the block

        # a holder whose session dies (kill -9, a lost connection) gives the lock back
        key = maintenance_key("run_z")
        holder = await asyncpg.connect(pg_database_url)
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", key)
        async with second.hold("run_z") as got:
            assert not got
        await holder.close()
        for _ in range(100):  # the server ends the backend a moment after the close
            async with second.hold("run_z") as got:
                if got:
                    break
            await asyncio.sleep(0.02)
        assert got
        # nothing stays locked in the pool after the blocks
        check = await asyncpg.connect(pg_database_url)
        try:
            held = await check.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        finally:
            await check.close()
        assert held == 0
    finally:
        await one.close()
        await two.close()


async def test_sqlite_keeps_the_single_host_behaviour(tmp_path: Path) -> None:
    database = await open_database(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        locks = RunLocks(database)
        assert not locks.shared
        async with locks.hold("run_x") as got, locks.hold("run_x") as again:
            assert got and again  # no database lock: the engine's file locks guard one host
    finally:
        await database.close()


async def _big_run(app: App, megabytes: int) -> Run:
    """An ended external run whose plain log is about ``megabytes`` MiB (several S3 windows)."""
    m = app.manager
    run = await m.create_run("acme", "big", external=True)
    line = "x" * 1000
    batch = [console(f"{i} {line}") for i in range(1000)]
    for _ in range(megabytes):
        await m.ingest("acme", "big", run.id, batch)
    await m.ingest(
        "acme", "big", run.id, [EventDraft(type="run.completed", payload={"status": "succeeded"})]
    )
    return await backdate(app, await m.repo.get_run(run.id), 2 * HOUR)


async def test_a_read_that_meets_compaction_on_another_host_goes_on(
    two_machines: tuple[App, App],
) -> None:
    """Host B reads a plain log (more than one 8 MiB S3 window) while host A compacts it
    and drops the plain form: the read goes on from the compressed form, whole and
    byte-identical -- not 410 ("removed by retention") halfway."""
    a, b = two_machines
    run = await _big_run(a, 28)
    expected = await log_bytes(b, run)
    assert len(expected) > 3 * 8 * 1024 * 1024  # more than the read-ahead of two windows
    row = await b.manager.repo.get_run(run.id)
    whole = b.manager.read_events(row)
    limited = b.manager.read_events(row, after_sequence=10, limit=25_000)
    got = [bytearray((await anext(whole)).data), bytearray((await anext(limited)).data)]
    # host A compacts the run and drops the plain form between two of B's windows
    assert await a.manager.compact_run(run) is not None
    assert (await a.manager.repo.get_run(run.id)).log_state is LogState.COMPRESSED
    keys = b.manager.log.keys(run_ref(run))
    with pytest.raises(LogNotFound):
        await b.manager.log.store.stat(keys.log)  # the plain form B was reading is gone
    for buffer, chunks in zip(got, (whole, limited), strict=True):
        async for chunk in chunks:
            buffer += chunk.data
    lines = expected.splitlines(keepends=True)
    assert bytes(got[0]) == expected
    assert bytes(got[1]) == b"".join(lines[10 : 10 + 25_000])


async def test_a_read_that_meets_retention_on_another_host_goes_on(
    two_machines: tuple[App, App],
) -> None:
    """Host B reads a log (more than one 8 MiB S3 window) while host A expires it:
    the read goes on to its end, whole and byte-identical (contract 10: no read fails
    while another machine maintains the run). Before deferred deletion, retention
    deleted the objects between two of B's windows and the read ended halfway
    (LogExpired after the first chunk: 3 of 7 probe reads of a streaming NDJSON
    response were cut). New reads get 410 at once; the body goes after the delay."""
    a, b = two_machines
    run = await _big_run(a, 28)
    expected = await log_bytes(b, run)
    assert len(expected) > 3 * 8 * 1024 * 1024  # more than the read-ahead of two windows
    row = await b.manager.repo.get_run(run.id)
    whole = b.manager.read_events(row)
    got = bytearray((await anext(whole)).data)
    # host A's retention expires the run between two of B's windows
    report = await maintenance.retention(a.manager, NOW)
    assert report.run_ids == [run.id] and not report.errors
    with pytest.raises(LogExpired):  # a new read: 410 at once
        await b.manager.open_events(row.workspace_id, row.configuration_id, row.id)
    async for chunk in whole:
        got += chunk.data
    assert bytes(got) == expected
    # once the delay has passed, the body is deleted (by either host's sweep)
    later = utcnow() + timedelta(seconds=a.settings.delete_delay_seconds)
    assert await b.manager.delete_due_bodies(now=later) == 1
    assert (await a.manager.log.stats(run_ref(run))).form is None
    assert not await a.manager.repo.log_deletion_queued(run.id)
