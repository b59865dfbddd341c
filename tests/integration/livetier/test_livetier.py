"""The shared live tier (contract 10) with two replicas in one test process.

Each replica is a real :class:`App` with its own data dir; they share one
Postgres database and one SeaweedFS bucket, as two machines would. The
defects named in issue 14 each have a test named after them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from runevents.app import App
from runevents.db.tables import runs
from runevents.eventlog import RunRef
from runevents.events import EventDraft
from runevents.exceptions import StorageError
from runevents.models import Run, RunStatus
from runevents.settings import Settings
from tests.fixtures.app import write_configs
from tests.fixtures.s3 import SeaweedFS

pytestmark = pytest.mark.s3


def console(message: str) -> EventDraft:
    return EventDraft(
        type="console.line",
        payload={"scope": "run", "stream": "stdout", "level": "info", "message": message},
    )


def completed(status: str = "succeeded") -> EventDraft:
    return EventDraft(type="run.completed", payload={"status": status})


@pytest.fixture
def cluster_env(monkeypatch: pytest.MonkeyPatch, seaweedfs: SeaweedFS) -> SeaweedFS:
    """The S3 endpoint in the environment, as a deployment gives it (no allow-http flag)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_access_key)
    monkeypatch.setenv("AWS_REGION", seaweedfs.region)
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)
    return seaweedfs


def replica_settings(tmp_path: Path, name: str, database: str, storage: str) -> Settings:
    return Settings(
        data_dir=tmp_path / name,
        config_file=write_configs(tmp_path),
        database_url=database,
        storage_url=storage,
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        repair_interval_seconds=0,
        lease_seconds=2.0,
        writer_lease_seconds=2.0,
        flush_interval_ms=5,
        poll_interval_ms=100,
    )


@pytest.fixture
async def pair(
    tmp_path: Path, pg_database_url: str, cluster_env: SeaweedFS
) -> AsyncIterator[tuple[App, App]]:
    """Two replicas (separate data dirs) on one database and one bucket prefix."""
    storage = cluster_env.url(f"livetier/{uuid.uuid4().hex}")
    a = await App.open(replica_settings(tmp_path, "a", pg_database_url, storage), worker=False)
    b = await App.open(replica_settings(tmp_path, "b", pg_database_url, storage), worker=False)
    try:
        assert a.manager.tier is not None and b.manager.tier is not None
        yield a, b
    finally:
        await b.close()
        await a.close()


def ref(run: Run) -> RunRef:
    return RunRef(run.workspace_id, run.configuration_id, run.id)


async def log_bytes(app: App, run: Run) -> bytes:
    return b"".join([chunk.data async for chunk in app.manager.log.read(ref(run))])


def sequences(data: bytes) -> list[int]:
    import json

    return [json.loads(line)["sequence"] for line in data.splitlines()]


async def release(app: App, run: Run) -> None:
    async with app.manager.held.lock(run.id):
        held = app.manager.held.get(run.id)
        assert held is not None
        await held.release()


async def expire_writer_lease(app: App, run: Run) -> None:
    """What a dead owner leaves: a lease nobody renews (its expiry in the past)."""
    if app._leases is not None:
        app._leases.cancel()  # its renewals stop, as a paused or dead process's do
    async with app.database.engine.begin() as conn:
        await conn.execute(
            runs.update()
            .where(runs.c.id == run.id)
            .values(writer_expires_at=sa.func.now() - sa.text("interval '1 minute'"))
        )


async def test_a_batch_to_a_replica_that_does_not_hold_the_run_continues_its_log(
    pair: tuple[App, App],
) -> None:
    """Issue 14: it started a fresh log at sequence 1 (a fork with the same numbers)."""
    a, b = pair
    run = await a.manager.create_run("acme", "ext", external=True)
    await a.manager.ingest("acme", "ext", run.id, [console("1"), console("2")])
    await release(a, run)
    answer = await b.manager.ingest("acme", "ext", run.id, [console("3")])
    assert answer == {"first_sequence": 4, "last_sequence": 4}
    data_b = await log_bytes(b, run)
    assert sequences(data_b) == [1, 2, 3, 4]
    assert await log_bytes(a, run) == data_b  # byte-identical on every replica


async def test_live_run_is_read_on_a_replica_without_its_spool(pair: tuple[App, App]) -> None:
    """Issue 14: a live run's reads answered 404 on every other host."""
    a, b = pair
    run = await a.manager.create_run("acme", "ext", external=True)
    await a.manager.ingest("acme", "ext", run.id, [console(f"line {i}") for i in range(50)])
    assert a.manager.held.get(run.id) is not None  # A still owns it
    assert await log_bytes(b, run) == await log_bytes(a, run)
    assert sequences(await log_bytes(b, run)) == list(range(1, 52))


async def test_follower_on_another_replica_gets_events_and_the_end(
    pair: tuple[App, App],
) -> None:
    """Issue 14: SSE on another host closed at once; followers hung on an ended run."""
    a, b = pair
    run = await a.manager.create_run("acme", "ext", external=True)
    got: list[int] = []

    async def follow() -> None:
        async for chunk in b.manager.log.follow(ref(run)):
            got.extend(sequences(chunk.data))

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await a.manager.ingest("acme", "ext", run.id, [console("live")])
    while 2 not in got:
        assert loop.time() - started < 1.0, "the follower on B did not get the event in 1 s"
        await asyncio.sleep(0.01)
    await a.manager.ingest("acme", "ext", run.id, [console("last"), completed()])
    await asyncio.wait_for(follower, 10)
    assert got == [1, 2, 3, 4]


async def test_ended_run_is_served_from_storage_and_leaves_nothing_in_the_tier(
    pair: tuple[App, App], tmp_path: Path, pg_database_url: str, cluster_env: SeaweedFS
) -> None:
    """Issue 14: the creator kept serving a stale spool; chunk rows exist only for live runs."""
    a, b = pair
    run = await a.manager.create_run("acme", "ext", external=True)
    await a.manager.ingest("acme", "ext", run.id, [console("x")])
    before_end = await log_bytes(b, run)  # B now has a local copy of the live run
    await a.manager.ingest("acme", "ext", run.id, [console("y"), completed()])
    tier = a.manager.tier
    assert tier is not None
    assert (await tier.size()).bytes == 0
    full = await log_bytes(a, run)
    assert full.startswith(before_end) and len(full) > len(before_end)
    assert await log_bytes(b, run) == full  # not B's stale copy
    # a replica started with an empty data dir serves it too
    storage = a.settings.resolved_storage_url
    c = await App.open(replica_settings(tmp_path, "c", pg_database_url, storage), worker=False)
    try:
        assert await log_bytes(c, run) == full
        row = await c.manager.get_run("acme", "ext", run.id)
        assert row.status is RunStatus.SUCCEEDED and row.event_count == 4
    finally:
        await c.close()


async def test_owner_that_lost_its_lease_can_never_write_again(pair: tuple[App, App]) -> None:
    """Issue 14: two replicas handed out the same sequence numbers."""
    a, b = pair
    run = await a.manager.create_run("acme", "ext", external=True)
    await a.manager.ingest("acme", "ext", run.id, [console("a1")])
    await expire_writer_lease(a, run)  # A paused past its lease (SIGSTOP, a long stall)
    await b.manager.ingest("acme", "ext", run.id, [console("b1")])
    a_lease = a.manager.ownership.held(run.id)
    if a_lease is not None:
        a_lease.trusted_until = 0  # A's next write must ask the database
    with pytest.raises(StorageError):
        await a.manager.ingest("acme", "ext", run.id, [console("a2 (fenced)")])
    data = await log_bytes(b, run)
    assert sequences(data) == [1, 2, 3]
    assert b"a2 (fenced)" not in data
    assert await log_bytes(a, run) == data


async def test_takeover_after_the_owner_died_keeps_every_acknowledged_event(
    pair: tuple[App, App],
) -> None:
    """Issue 14: a dead worker's whole log was lost with its disk."""
    a, b = pair
    run = await a.manager.create_run("acme", "ext", external=True)
    for i in range(5):
        await a.manager.ingest("acme", "ext", run.id, [console(f"a{i}")])
    # A's disk is gone: its data dir removed; its lease expires
    import shutil

    shutil.rmtree(a.settings.data_dir / "spool", ignore_errors=True)
    await expire_writer_lease(a, run)
    await b.manager.ingest("acme", "ext", run.id, [console("b"), completed()])
    data = await log_bytes(b, run)
    assert sequences(data) == list(range(1, 9))
    assert all(f"a{i}".encode() in data for i in range(5))


async def test_executed_run_created_on_one_host_keeps_run_queued_when_claimed_elsewhere(
    pair: tuple[App, App],
) -> None:
    """Issue 14: run.queued stayed in the creator's spool."""
    a, b = pair
    run = await a.manager.create_run("acme", "hello", external=False)
    held = None
    async with b.manager.held.lock(run.id):
        held = await b.manager.held.take(run, source="worker", atomic=False)
        _events, ticket = held.commit([console("from the worker")])
        await held.writer.sync(ticket)
        await held.release()
    data = await log_bytes(a, run)
    assert sequences(data) == [1, 2]
    assert b'"run.queued"' in data.splitlines()[0]


async def test_chunks_of_a_sealed_run_left_by_a_crash_are_dropped_by_repair(
    pair: tuple[App, App],
) -> None:
    a, b = pair
    run = await a.manager.create_run("acme", "ext", external=True)
    tier = a.manager.tier
    assert tier is not None
    kept: list[Any] = []
    original = tier.sealed

    async def crash_before_drop(r: RunRef, uploaded: Any) -> None:
        kept.append(r)
        raise StorageError("simulated crash after the upload")

    tier.sealed = crash_before_drop  # type: ignore[method-assign,assignment]
    # run.completed is committed: the batch's answer is 200 whatever the seal does
    await a.manager.ingest("acme", "ext", run.id, [console("x"), completed()])
    tier.sealed = original  # type: ignore[method-assign]
    assert kept and (await tier.size()).chunks > 0
    from runevents.repair import repair_pass

    await expire_writer_lease(a, run)  # A died there: its lease runs out
    await repair_pass(b.manager)
    assert (await tier.size()).chunks == 0
    row = await b.manager.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.SUCCEEDED
    assert sequences(await log_bytes(b, run)) == [1, 2, 3]


async def test_dead_workers_run_ends_worker_lost_elsewhere_with_every_committed_line(
    pair: tuple[App, App],
) -> None:
    """Issue 14: the reaper on a host without the spool uploaded a one-event log."""
    a, b = pair
    run = await a.manager.create_run("acme", "hello", external=False)
    async with b.manager.held.lock(run.id):
        held = await b.manager.held.take(run, source="worker", atomic=False)
        _events, ticket = held.commit([console(f"worker line {i}") for i in range(20)])
        await held.writer.sync(ticket)
    # B (the worker's machine) dies: no more renewals, its disk gone
    import shutil

    shutil.rmtree(b.settings.data_dir / "spool", ignore_errors=True)
    await expire_writer_lease(b, run)
    async with a.database.engine.begin() as conn:
        await conn.execute(
            runs.update()
            .where(runs.c.id == run.id)
            .values(
                status="running",
                lease_owner="worker-b",
                lease_expires_at=sa.func.now() - sa.text("interval '1 second'"),
            )
        )
    reaped = await a.manager.reap_expired_leases()
    assert [r.id for r in reaped] in ([run.id], [])  # [] if a replica's own reaper was first

    async def ended() -> bool:
        return (await a.manager.repo.get_run(run.id)).status.ended

    await _until(ended, 10, "the run was never reaped")
    done = await a.manager.get_run("acme", "hello", run.id)
    assert done.status is RunStatus.FAILED
    assert done.failure is not None and done.failure["code"] == "worker_lost"
    data = await log_bytes(a, run)
    assert sequences(data) == list(range(1, 23))  # queued, 20 lines, run.completed
    assert b'"worker_lost"' in data.splitlines()[-1]
    tier = a.manager.tier
    assert tier is not None and (await tier.size()).chunks == 0


async def test_a_replica_that_copied_a_live_run_compacts_it_once_sealed(
    pair: tuple[App, App],
) -> None:
    a, b = pair
    run = await a.manager.create_run("acme", "ext", external=True)
    await a.manager.ingest("acme", "ext", run.id, [console("x")])
    await log_bytes(b, run)  # B keeps a local copy of the live log
    await a.manager.ingest("acme", "ext", run.id, [console("y"), completed()])
    full = await log_bytes(a, run)
    row = await b.manager.get_run("acme", "ext", run.id)
    assert await b.manager.compact_run(row) is not None
    assert (await b.manager.get_run("acme", "ext", run.id)).log_state.value == "compressed"
    assert await log_bytes(b, run) == full
    assert await log_bytes(a, run) == full


async def test_stored_size_is_the_plain_bytes_of_the_sealed_log_in_either_form(
    pair: tuple[App, App],
) -> None:
    """What sealing and repair verify the chunks against: the plain log's size, or the
    plain size a compressed form's index records; None while nothing is stored."""
    a, b = pair
    tier = a.manager.tier
    assert tier is not None
    run = await a.manager.create_run("acme", "ext", external=True)
    assert await tier.stored_size(ref(run)) is None  # live: only in the chunks
    await a.manager.ingest("acme", "ext", run.id, [console("x"), completed()])
    full = await log_bytes(a, run)
    assert await tier.stored_size(ref(run)) == len(full)
    row = await a.manager.get_run("acme", "ext", run.id)
    assert await a.manager.compact_run(row) is not None
    assert (await a.manager.get_run("acme", "ext", run.id)).log_state.value == "compressed"
    assert await tier.stored_size(ref(run)) == len(full)
    assert b.manager.tier is not None
    assert await b.manager.tier.stored_size(ref(run)) == len(full)  # no local copy there


async def test_owner_that_died_after_committing_run_completed_is_finished_by_repair(
    pair: tuple[App, App],
) -> None:
    """Repair's row_behind_log on several machines: the newest chunk says run.completed."""
    a, b = pair
    run = await a.manager.create_run("acme", "ext", external=True)
    async with a.manager.held.lock(run.id):
        held = await a.manager.held.take(run, source="producer", atomic=True)
        events = held.writer.prepare([console("last words"), completed()])
        ticket = held.writer.commit(events)
        await held.writer.sync(ticket)  # durable in the tier; A dies before the row
    tier = b.manager.tier
    assert tier is not None and await tier.ends_run(run.id)
    await expire_writer_lease(a, run)
    from runevents.repair import repair_pass

    found = await repair_pass(b.manager)
    assert found["row_behind_log"] == 1
    row = await b.manager.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.SUCCEEDED and row.event_count == 3
    assert (await tier.size()).chunks == 0


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_woken_worker_whose_run_was_reaped_lets_it_go_and_frees_its_slot(
    pair: tuple[App, App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """C6: a worker paused (SIGSTOP) past its leases woke after another process had
    ended its run ``worker_lost``; its writes were refused (fenced), but it retried the
    completion forever ("run.completed is not in its log yet") and never freed its
    slot, so with concurrency 1 it executed nothing again. Expected (ARCHITECTURE,
    "a paused owner wakes after a takeover"): it lets the run go and records nothing."""
    from runevents.worker import Worker

    a, b = pair
    worker = Worker(a.manager, concurrency=1, worker_id="worker-a")
    awake = asyncio.Event()
    awake.set()
    heartbeat, renew_all = a.manager.heartbeat, a.manager.ownership.renew_all

    async def paused_heartbeat(session: Any, worker_id: str) -> None:
        await awake.wait()
        await heartbeat(session, worker_id)

    async def paused_renewals() -> None:
        await awake.wait()
        await renew_all()

    monkeypatch.setattr(a.manager, "heartbeat", paused_heartbeat)
    monkeypatch.setattr(a.manager.ownership, "renew_all", paused_renewals)
    worker.start()
    try:
        run = await a.manager.create_run("acme", "sleepy")

        async def running() -> bool:
            row = await a.manager.repo.get_run(run.id)
            return row.status is RunStatus.RUNNING and a.manager.held.get(run.id) is not None

        await _until(running, 15, "the worker never ran the run")
        # A is paused (its child sleeps silently): no heartbeat, no lease renewal, and
        # both of its leases run out
        awake.clear()
        async with a.database.engine.begin() as conn:
            await conn.execute(
                runs.update()
                .where(runs.c.id == run.id)
                .values(
                    lease_expires_at=sa.func.now() - sa.text("interval '1 second'"),
                    writer_expires_at=sa.func.now() - sa.text("interval '1 minute'"),
                )
            )

        async def reaped() -> bool:
            await b.manager.reap_expired_leases("worker-b")  # (or B's own reaper round)
            return (await b.manager.repo.get_run(run.id)).status.ended

        await _until(reaped, 10, "B never reaped the run")
        lost = await b.manager.get_run("acme", "sleepy", run.id)
        assert lost.status is RunStatus.FAILED
        assert lost.failure is not None and lost.failure["code"] == "worker_lost"
        logged = await log_bytes(b, lost)
        assert b'"worker_lost"' in logged.splitlines()[-1]

        awake.set()  # SIGCONT: A learns it lost the run and lets it go

        async def free() -> bool:
            return not worker._tasks and a.manager.held.get(run.id) is None

        await _until(free, 15, "the woken worker never freed its slot")
        assert not a.manager.executes(run.id)
        nxt = await a.manager.create_run("acme", "hello")

        async def executed() -> bool:
            return (await a.manager.repo.get_run(nxt.id)).status is RunStatus.SUCCEEDED

        await _until(executed, 20, "the woken worker's slot never took a queued run")
        # nothing more was recorded for the lost run, in its row or its log
        after = await b.manager.get_run("acme", "sleepy", run.id)
        assert after.status is RunStatus.FAILED and after.failure == lost.failure
        assert after.completed_at == lost.completed_at
        assert await log_bytes(b, after) == logged
    finally:
        awake.set()
        await worker.stop()


async def test_replicas_reaping_the_same_dead_workers_run_at_once_end_it_once(
    pair: tuple[App, App],
) -> None:
    """C2: every replica reaps now, so several reap the same run at the same moment:
    exactly one ends it (one run.completed), and none keeps holding it."""
    a, b = pair
    run = await a.manager.create_run("acme", "hello", external=False)
    await expire_writer_lease(a, run)
    async with a.database.engine.begin() as conn:
        await conn.execute(
            runs.update()
            .where(runs.c.id == run.id)
            .values(
                status="running",
                lease_owner="dead-worker",
                lease_expires_at=sa.func.now() - sa.text("interval '1 second'"),
            )
        )
    rounds = await asyncio.gather(
        a.manager.reap_expired_leases("reaper-a"),
        b.manager.reap_expired_leases("reaper-b"),
        a.manager.reap_expired_leases("reaper-a2"),
        b.manager.reap_expired_leases("reaper-b2"),
    )
    assert sum(len(r) for r in rounds) <= 1

    async def ended() -> bool:
        return (await a.manager.repo.get_run(run.id)).status.ended

    await _until(ended, 10, "the run was never reaped")  # (or by a replica's own round)
    done = await a.manager.get_run("acme", "hello", run.id)
    assert done.failure is not None and done.failure["code"] == "worker_lost"
    data = await log_bytes(b, done)
    types = [json.loads(line)["type"] for line in data.splitlines()]
    assert types.count("run.completed") == 1 and types[-1] == "run.completed"
    assert a.manager.held.get(run.id) is None and b.manager.held.get(run.id) is None
