"""A 200 means durable: regression tests of the durability issue, on SQLite and Postgres.

Each test is named after a defect the review reproduced at ``aaa25da``; faults
go through the OS-call seam (``FileOps``) and the storage seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from datetime import timedelta
from typing import Any

import pytest

from runevents import held as held_module
from runevents.app import App
from runevents.eventlog import EventLog
from runevents.events import EventDraft, decode_event
from runevents.exceptions import (
    IdempotencyKeyReused,
    LogDamaged,
    RunEnded,
    StorageError,
    WriterBusy,
    WriterMoving,
)
from runevents.held import run_ref
from runevents.manager import RunManager
from runevents.models import LogState, Run, RunStatus, utcnow
from runevents.repair import repair_pass
from runevents.session import RunSession
from runevents.settings import Settings
from tests.fixtures.faults import FaultyOps
from tests.integration.manager.conftest import started_session


def console(message: str) -> EventDraft:
    return EventDraft(
        type="console.line",
        payload={"scope": "run", "stream": "stdout", "level": "info", "message": message},
    )


def completed(status: str = "succeeded") -> EventDraft:
    return EventDraft(type="run.completed", payload={"status": status})


async def events_of(app: App, run: Any) -> list[Any]:
    found = []
    async for chunk in app.manager.read_events(run):
        found += [decode_event(line) for line in chunk.data.split(b"\n")[:-1]]
    return found


@pytest.fixture
def ops(app: App) -> FaultyOps:
    """Faults for every writer the app opens from now on."""
    faulty = FaultyOps()
    app.manager.log.file_ops = faulty
    return faulty


async def test_disk_full_during_ingest_answers_503_and_a_keyed_retry_appends_once(
    app: App, ops: FaultyOps
) -> None:
    """Defect 1: ENOSPC was acknowledged (batch only in memory), and the keyed retry
    appended it again behind the buffered copy: twice in the log."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")])
    ops.error = errno.ENOSPC
    with pytest.raises(StorageError) as refused:
        await m.ingest("acme", "ext", run.id, [console("b")], idempotency_key="k")
    assert refused.value.retry_after >= 1
    assert [e.payload.get("message") for e in await events_of(app, run)] == [None, "a"]
    ops.error = None
    answer = await m.ingest("acme", "ext", run.id, [console("b")], idempotency_key="k")
    again = await m.ingest("acme", "ext", run.id, [console("b")], idempotency_key="k")
    assert answer == again == {"first_sequence": 3, "last_sequence": 3}
    messages = [e.payload.get("message") for e in await events_of(app, run)]
    assert messages == [None, "a", "b"]


async def test_an_ingest_write_failure_does_not_mark_the_run_logging_degraded(
    app: App, ops: FaultyOps
) -> None:
    """R5: ENOSPC on an external run's batch set ``logging_degraded: true`` on its row; the
    batch was refused whole (503) and nothing of it kept, so the row stays unchanged
    (``logging_degraded`` is for an executor's buffered lines)."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")])
    ops.error = errno.ENOSPC
    with pytest.raises(StorageError):
        await m.ingest("acme", "ext", run.id, [console("b")], idempotency_key="k")
    ops.fail_fsync, ops.error = True, None
    with pytest.raises(StorageError):
        await m.ingest("acme", "ext", run.id, [console("b")], idempotency_key="k")
    ops.fail_fsync = False
    await m.ingest("acme", "ext", run.id, [console("b")], idempotency_key="k")
    held = m.held.get(run.id)
    assert held is not None
    await held.record_progress(force=True)
    assert not (await m.get_run("acme", "ext", run.id)).logging_degraded
    await m.ingest("acme", "ext", run.id, [completed()])
    row = await m.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.SUCCEEDED and not row.logging_degraded


async def test_failed_fsync_during_ingest_is_not_acknowledged(app: App, ops: FaultyOps) -> None:
    """Defect 1: a failed fsync was acknowledged with 200."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    ops.fail_fsync = True
    with pytest.raises(StorageError):
        await m.ingest("acme", "ext", run.id, [console("a")])
    ops.fail_fsync = False
    assert [e.sequence for e in await events_of(app, run)] == [1]
    assert (await m.ingest("acme", "ext", run.id, [console("a")]))["first_sequence"] == 2


async def test_completion_while_writes_fail_does_not_finish_the_row(
    app: App, ops: FaultyOps
) -> None:
    """Defect 2: close() dropped run.completed, seal sealed what was on disk, and the row
    was finished anyway; followers waited forever."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")])
    ops.error = errno.EIO
    with pytest.raises(StorageError):
        await m.ingest("acme", "ext", run.id, [console("b"), completed()], idempotency_key="end")
    row = await m.get_run("acme", "ext", run.id)
    assert not row.status.ended and row.log_state is LogState.LIVE
    ops.error = None
    answer = await m.ingest(
        "acme", "ext", run.id, [console("b"), completed()], idempotency_key="end"
    )
    assert answer == {"first_sequence": 3, "last_sequence": 4}
    row = await m.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.SUCCEEDED and row.log_state is LogState.PLAIN
    events = await events_of(app, row)
    assert [e.type for e in events][-1] == "run.completed" and len(events) == 4
    # a follower ends
    async for chunk in m.follow_events(row):
        if chunk.ends_run:
            break


async def test_retry_of_the_completing_batch_gets_its_first_answer_not_409(app: App) -> None:
    """Defect 4: a retried completing batch got 409; the contract gives its first answer."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    first = await m.ingest("acme", "ext", run.id, [console("x"), completed()], idempotency_key="z")
    again = await m.ingest("acme", "ext", run.id, [console("x"), completed()], idempotency_key="z")
    assert first == again
    with pytest.raises(RunEnded):
        await m.ingest("acme", "ext", run.id, [console("y")], idempotency_key="other")


async def test_idempotency_key_reused_with_another_body_is_422(app: App) -> None:
    """Defect 4: judging by payload equality appended a retry whose payload differed."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("x")], idempotency_key="k", body_sha256="a" * 64)
    with pytest.raises(IdempotencyKeyReused):
        await m.ingest(
            "acme", "ext", run.id, [console("y")], idempotency_key="k", body_sha256="b" * 64
        )
    assert len(await events_of(app, run)) == 2


async def test_keyed_retry_reaching_a_process_without_the_writer_never_appends_twice(
    settings: Settings,
) -> None:
    """Defect 4: a retry reaching a process that does not hold the writer judged the key,
    deleted it while the holder was mid-append, and the next retry appended again."""
    holder = await App.open(settings, worker=False)
    other = await App.open(settings, worker=False)
    try:
        run = await holder.manager.create_run("acme", "ext", external=True)
        answer = await holder.manager.ingest(
            "acme", "ext", run.id, [console("b")], idempotency_key="k"
        )
        with pytest.raises(WriterMoving):  # 503 + Retry-After: never judged there
            await other.manager.ingest("acme", "ext", run.id, [console("b")], idempotency_key="k")
        assert await holder.manager.repo.get_idempotency(run.id, "k") is not None
        again = await holder.manager.ingest(
            "acme", "ext", run.id, [console("b")], idempotency_key="k"
        )
        assert again == answer
        assert len(await events_of(holder, run)) == 2
    finally:
        await other.close()
        await holder.close()


async def _executing_past_its_lease(m: RunManager, worker_id: str) -> tuple[Run, RunSession]:
    """A run ``worker_id`` executes here, whose lease ran out (a heartbeat gap: a failover,
    a stalled loop, the whole process stopped)."""
    await m.create_run("acme", "sleepy")
    run = await m.claim_next(worker_id)
    assert run is not None
    session = await m.start_session(run, worker_id)
    assert session is not None
    await m.repo.update_run(run.id, lease_expires_at=utcnow() - timedelta(seconds=5))
    return run, session


async def _goes_on(m: RunManager, run: Run, session: RunSession, worker_id: str) -> None:
    """Nothing was reaped: the worker renews, is not cancelled, and finishes the run."""
    row = await m.repo.get_run(run.id)
    assert not row.status.ended and row.lease_owner == worker_id
    await m.heartbeat(session, worker_id)
    assert not session.cancel.is_set()
    await session.complete(status="succeeded", failure=None, execution=None)
    assert (await m.repo.get_run(run.id)).status is RunStatus.SUCCEEDED


async def test_reaper_does_not_take_a_live_workers_run_after_a_heartbeat_gap(
    settings: Settings,
) -> None:
    """Defect 5: the reaper claimed an expired lease before testing the writer and never
    gave it back; the live worker then killed its own child (recorded cancelled)."""
    worker_app = await App.open(settings, worker=False)
    reaper_app = await App.open(settings, worker=False)
    try:
        run, session = await _executing_past_its_lease(worker_app.manager, "w1")
        assert await reaper_app.manager.reap_expired_leases("other") == []
        await _goes_on(worker_app.manager, run, session, "w1")
    finally:
        await reaper_app.close()
        await worker_app.close()


async def test_worker_waking_from_a_pause_does_not_reap_its_own_run(settings: Settings) -> None:
    """CI flake of stop 24: after SIGCONT the worker's own reaper round ran before its
    heartbeat, found its own lease expired and its own writer held here, and finished
    its live run as failed (worker_lost)."""
    app = await App.open(settings, worker=False)
    try:
        run, session = await _executing_past_its_lease(app.manager, "w1")
        assert await app.manager.reap_expired_leases("w1") == []
        await _goes_on(app.manager, run, session, "w1")
    finally:
        await app.close()


async def test_crash_between_run_completed_and_seal_is_repaired(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 6: a crash after run.completed and before the end of sealing was never
    repaired, and other processes answered 410 "removed by retention"."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)

    async def store_down(self: EventLog, ref: Any, lock: Any = None, checkpoint: Any = None) -> Any:
        if lock is not None:
            lock.release()
        raise StorageError("the object store is unreachable")

    monkeypatch.setattr(EventLog, "seal", store_down)
    # the batch is in the log: its answer is 200, not 503 (found from outside; contract 6)
    answer = await m.ingest("acme", "ext", run.id, [console("a"), completed()])
    assert answer == {"first_sequence": 2, "last_sequence": 3}
    monkeypatch.undo()
    row = await m.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.SUCCEEDED and row.log_state is LogState.LIVE
    assert len(await events_of(app, row)) == 3  # readable meanwhile, never 410
    found = await repair_pass(m)
    assert found["unsealed"] == 1
    row = await m.get_run("acme", "ext", run.id)
    assert row.log_state is LogState.PLAIN and row.event_count == 3
    with pytest.raises(RunEnded):
        await m.cancel_run("acme", "ext", run.id)


async def test_a_row_behind_its_log_is_finished_by_the_repair_loop(app: App) -> None:
    """Defect 6: ``runs_with_log_states`` had no caller; a row behind its log stayed live."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")])
    held = m.held.get(run.id)
    assert held is not None
    # run.completed reaches the log, then the process dies before the row update
    _, ticket = held.commit([completed()])
    await held.writer.sync(ticket)
    await held.writer.close()
    m.held.forget(held)
    m.ownership.forget(held.lease)
    await m.repo.release_writer(run.id, m.ownership.owner, held.lease.epoch)
    found = await repair_pass(m)
    assert found["row_behind_log"] == 1
    row = await m.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.SUCCEEDED and row.log_state is LogState.PLAIN


async def test_completion_never_rereads_the_log(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 8: completion decoded the whole log on the event loop (6 s for 1 GiB)."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    for i in range(20):
        await m.ingest("acme", "ext", run.id, [console(f"{i}-{j}") for j in range(50)])
    reads = 0
    original = EventLog.read

    def counting(self: EventLog, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EventLog, "read", counting)
    await m.ingest("acme", "ext", run.id, [completed()])
    assert reads == 0
    row = await m.get_run("acme", "ext", run.id)
    assert row.summary is not None and row.summary["events"]["total"] == 1002


async def test_reindex_on_a_live_server_keeps_a_running_workers_lease(app: App) -> None:
    """Defect 9: reindex rewrote leases to nobody (running jobs got cancelled)."""
    from runevents.maintenance import reindex

    m = app.manager
    session = await started_session(app)
    report = await reindex(m)
    assert not report.errors
    row = await m.repo.get_run(session.run.id)
    assert row.lease_owner == "w1" and not row.status.ended
    await session.complete(status="succeeded", failure=None, execution=None)


async def test_default_setting_fsyncs_before_acknowledging(app: App, ops: FaultyOps) -> None:
    """Defect 10: with the default fsync="never" a power loss lost acknowledged batches
    and reused their sequence numbers."""
    assert Settings().fsync == "flush"
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    before = ops.fsyncs
    await m.ingest("acme", "ext", run.id, [console("a")])
    assert ops.fsyncs == before + 1


async def test_seal_holds_the_lock_from_completion_to_the_end(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 11: completion released the flock and re-acquired it to seal: another
    process could take the log in between."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    original = EventLog.seal
    taken: list[bool] = []

    async def seal_and_try(
        self: EventLog, ref: Any, lock: Any = None, checkpoint: Any = None
    ) -> Any:
        try:
            other = await self.open_writer(ref)
        except WriterBusy:
            taken.append(False)
        else:
            taken.append(True)
            await other.close()
        return await original(self, ref, lock, checkpoint)

    monkeypatch.setattr(EventLog, "seal", seal_and_try)
    await m.ingest("acme", "ext", run.id, [completed()])
    assert taken == [False]


async def test_watch_held_runs_isolates_a_failing_run(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 12: one held run failing aborted the watch for every other held run."""
    m = app.manager
    bad = await m.create_run("acme", "ext", external=True)
    good = await m.create_run("acme", "ext", external=True)
    await m.repo.update_run(good.id, cancel_requested=True)
    original = m.repo.get_run

    async def broken(run_id: str) -> Any:
        if run_id == bad.id:
            raise StorageError("injected")
        return await original(run_id)

    monkeypatch.setattr(m.repo, "get_run", broken)
    ended = await m.watch_held_runs()
    assert [r.id for r in ended] == [good.id]


async def test_row_created_at_is_its_run_queued_events(app: App) -> None:
    """Defect 13: the row's created_at differed from run.queued's by about 1 ms."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    [queued] = await events_of(app, run)
    row = await m.get_run("acme", "ext", run.id)
    from runevents.models import rfc3339

    assert queued.type == "run.queued" and queued.created_at == rfc3339(row.created_at)


async def test_server_damage_is_cut_and_marked_not_blamed_on_the_producer(app: App) -> None:
    """Defects 7 and 15: a zeroed block mid-file shifted every later sequence for readers,
    and the next batch got 422 "line N" for the server's own damaged bytes."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    for i in range(5):
        await m.ingest("acme", "ext", run.id, [console(f"{i}-{j}") for j in range(20)])
    held = m.held.get(run.id)
    assert held is not None
    await held.release()
    path = m.log.keys(run_ref(run)).live
    data = bytearray(path.read_bytes())
    first_line = data.index(b"\n") + 1
    # the last checkpoint the row holds is the first line: a machine crash then lost
    # a block written after it while later blocks reached the disk
    await m.repo.update_run(run.id, event_count=1, events_bytes=first_line)
    middle = len(data) // 2
    data[middle : middle + 512] = b"\0" * 512
    path.write_bytes(bytes(data))
    answer = await m.ingest("acme", "ext", run.id, [console("after")])
    events = await events_of(app, run)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    kinds = [e.type for e in events]
    assert "log.recovered" in kinds
    recovered = events[kinds.index("log.recovered")]
    assert recovered.payload["cut_bytes"] > 0
    assert events[-1].payload["message"] == "after"
    assert answer["first_sequence"] == events[-1].sequence
    quarantine = list(path.parent.glob("events.ndjson.torn-*"))
    assert quarantine and b"\0" in quarantine[0].read_bytes()


async def _damaged_before_the_checkpoint(app: App, *, release: bool = True) -> tuple[Run, int]:
    """An external run of 100 events with a zeroed block in the middle of its log, before
    the row's checkpoint (a failing disk); returns the run and the damaged offset."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    for i in range(5):
        await m.ingest("acme", "ext", run.id, [console(f"{i}-{j}") for j in range(20)])
    held = m.held.get(run.id)
    assert held is not None
    if release:
        await held.release()  # a restart: the row's checkpoint is the log's end
    path = m.log.keys(run_ref(run)).live
    size = path.stat().st_size
    middle = size // 2
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(512), middle)
    finally:
        os.close(fd)
    return run, middle


async def _gap_free(app: App, run: Run) -> list[Any]:
    events = await events_of(app, run)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    return events


async def test_a_batch_is_never_acknowledged_on_a_log_a_read_found_damaged(app: App) -> None:
    """R1: after a read answered 503 log_damaged, the next batch got 200 on the damaged
    log; the completion then cut the log, taking the acknowledged batch with it, and the
    key's retry got another answer. The owner must cut the damage first."""
    m = app.manager
    run, _ = await _damaged_before_the_checkpoint(app)
    with pytest.raises(LogDamaged):
        await events_of(app, run)
    batch = [console("after-1"), console("after-2"), console("after-3")]
    answer = await m.ingest("acme", "ext", run.id, batch, idempotency_key="k")
    events = await _gap_free(app, run)
    kinds = [e.type for e in events]
    assert kinds.count("log.recovered") == 1
    recovered = events[kinds.index("log.recovered")]
    assert recovered.sequence < 100 and recovered.payload["cut_bytes"] > 0
    assert answer == {"first_sequence": recovered.sequence + 1, "last_sequence": len(events)}
    assert [e.payload["message"] for e in events[-3:]] == ["after-1", "after-2", "after-3"]
    # the key's retry and the completion keep the answer: nothing acknowledged is cut
    again = await m.ingest("acme", "ext", run.id, batch, idempotency_key="k")
    assert again == answer
    await m.ingest("acme", "ext", run.id, [completed()], idempotency_key="end")
    events = await _gap_free(app, await m.get_run("acme", "ext", run.id))
    assert [e.type for e in events].count("log.recovered") == 1
    assert events[answer["first_sequence"] - 1].payload["message"] == "after-1"
    quarantine = list(m.log.keys(run_ref(run)).live.parent.glob("events.ndjson.torn-*"))
    assert len(quarantine) == 1 and b"\0" in quarantine[0].read_bytes()


async def test_a_batch_is_never_acknowledged_on_a_log_the_summary_fold_found_damaged(
    app: App,
) -> None:
    """R1: the background summary fold of a taken-over log met the damage, yet batches
    were acknowledged on it until the completion cut them away."""
    m = app.manager
    run, _ = await _damaged_before_the_checkpoint(app)
    async with m.held.lock(run.id):
        held = await m.held.take(await m.repo.get_run(run.id), source="producer", atomic=True)
    with contextlib.suppress(LogDamaged):
        await held.fold.ready()  # the fold of the taken-over log met the damage
    answer = await m.ingest("acme", "ext", run.id, [console("after")], idempotency_key="k")
    events = await _gap_free(app, run)
    assert events[-2].type == "log.recovered"
    assert answer["first_sequence"] == events[-1].sequence
    await m.ingest("acme", "ext", run.id, [completed()])
    row = await m.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.SUCCEEDED
    assert (await _gap_free(app, row))[answer["first_sequence"] - 1].payload["message"] == "after"


async def _readable(app: App, run: Run, seconds: float = 5.0) -> list[Any]:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            return await events_of(app, run)
        except LogDamaged:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("held_here", [True, False], ids=["held", "nobody-holds"])
async def test_damage_found_by_a_read_is_repaired_by_the_owner(app: App, held_here: bool) -> None:
    """R3: damage a read found was never repaired (a live run's reads stayed 503 past the
    repair interval). The owner -- this process, holding the run or able to take it --
    cuts it at once: quarantined, ``log.recovered``, reads whole again."""
    m = app.manager
    run, _ = await _damaged_before_the_checkpoint(app, release=not held_here)
    with pytest.raises(LogDamaged):
        await events_of(app, run)
    events = await _readable(app, run)  # no batch, no repair pass: the read's own task
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type == "log.recovered" and events[-1].payload["cut_bytes"] > 0
    assert run.id not in m.held.damaged
    assert (m.held.get(run.id) is not None) is held_here
    answer = await m.ingest("acme", "ext", run.id, [console("next")])
    assert answer["first_sequence"] == events[-1].sequence + 1


async def test_damage_in_an_ended_runs_log_is_left_as_it_is_and_said_once(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """R3, ended runs: a sealed log is final. Damage a read finds in it is not cut; reads of
    the damaged range stay 503 log_damaged, and the server says so once."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    for i in range(5):
        await m.ingest("acme", "ext", run.id, [console(f"{i}-{j}") for j in range(20)])
    await m.ingest("acme", "ext", run.id, [completed()])
    row = await m.get_run("acme", "ext", run.id)
    assert row.log_state is LogState.PLAIN
    path = m.log.keys(run_ref(row)).live
    [sealed] = [p for p in path.parent.rglob("events.ndjson*") if p.stat().st_size > 4096]
    data = sealed.read_bytes()
    fd = os.open(sealed, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(512), len(data) // 2)
    finally:
        os.close(fd)
    for _ in range(3):
        with pytest.raises(LogDamaged):
            await events_of(app, row)
        await asyncio.sleep(0.1)  # the repair task runs, finds the run ended
    assert run.id not in m.held.damaged and m.held.get(run.id) is None
    assert not list(sealed.parent.glob("*.torn-*"))
    assert sealed.stat().st_size == len(data)
    said = [r for r in caplog.records if "left as it is" in r.getMessage()]
    assert len(said) == 1


async def test_keys_are_kept_24h_then_dropped_with_the_compacted_log(app: App) -> None:
    """Defect 4: keys were never pruned (the database grew per batch). Contract 6: a
    completing batch's retry is answered for at least 24 h; keys go at compaction/expiry."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")], idempotency_key="k1")
    done = await m.ingest("acme", "ext", run.id, [completed()], idempotency_key="k2")
    assert await m.repo.count_idempotency(run.id) == 2
    row = await m.get_run("acme", "ext", run.id)
    assert await m.compact_run(row) is not None
    assert await m.repo.count_idempotency(run.id) == 2  # ended just now: kept
    again = await m.ingest("acme", "ext", run.id, [completed()], idempotency_key="k2")
    assert again == done  # answered from the compressed log
    await m.repo.update_run(run.id, completed_at=utcnow() - timedelta(hours=25))
    assert await m.repo.prune_idempotency(utcnow() - timedelta(hours=24)) == 2
    assert await m.repo.count_idempotency(run.id) == 0
    # and no lock or held run is left behind by anything above (defect 6)
    assert len(m.held) == 0 and len(m.held.lock) == 0


async def test_a_summary_larger_than_max_event_bytes_never_blocks_completion(app: App) -> None:
    """Defect 3: a summary larger than max_event_bytes (about 12k distinct source_files)
    made completion, cancel and producer_timeout fail with 413 forever."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    for start in range(0, 12_000, 2_000):
        await m.ingest(
            "acme",
            "ext",
            run.id,
            [
                EventDraft(
                    type="run.table.summary",
                    payload={
                        "table_id": f"t{i}",
                        "source_file": f"input-{i:06d}-{'x' * 60}.xlsx",
                        "source_sheet": None,
                        "table_index": 0,
                        "row_count": 1,
                        "column_count": 1,
                    },
                )
                for i in range(start, start + 2_000)
            ],
        )
    await m.ingest("acme", "ext", run.id, [completed()])
    row = await m.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.SUCCEEDED and row.summary is not None
    assert row.summary["truncated"] == {"tables.by_file": 11_000}
    assert row.summary["tables"]["input_file_count"] == 12_000
    import json

    assert len(json.dumps(row.summary, separators=(",", ":")).encode()) <= 256 * 1024


async def test_the_stored_run_completed_of_an_executed_run_counts_its_buffered_lines(
    app: App,
) -> None:
    """Found from outside: an executed run's lines still buffered (committed, not durable)
    when it completed were left out of the summary written into its run.completed, so
    the stored event said 3 events while the row, and a rebuild from the log, said 6."""
    m = app.manager
    session = await started_session(app)
    await session.emit([console(f"line {i}") for i in range(3)])
    assert session.writer.pending_events > 0  # buffered: the flush policy has not run
    await session.complete(status="succeeded", failure=None, execution=None)
    done = await m.get_run("acme", "sleepy", session.run.id)
    stored = (await events_of(app, done))[-1]
    assert stored.type == "run.completed"
    assert stored.payload["summary"] == done.summary
    assert done.summary is not None and done.summary["console"]["lines"] == 3


async def test_a_completing_batch_whose_row_update_fails_after_it_is_durable_is_answered_200(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: run.completed was durable (a follower got it, later batches got
    409) but the completing batch was answered 503 because finishing the row (the database)
    or the seal (the object store) failed. A 503 promises that none of the batch is in
    the log; it is, so the answer is 200 and the repair loop finishes the row."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")])

    async def database_down(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("the database is unreachable")

    monkeypatch.setattr(m.repo, "finish_owned", database_down)
    answer = await m.ingest(
        "acme", "ext", run.id, [console("b"), completed()], idempotency_key="end"
    )
    assert answer == {"first_sequence": 3, "last_sequence": 4}
    monkeypatch.undo()
    assert [e.type for e in await events_of(app, run)][-1] == "run.completed"
    # the keyed retry gets the same answer; the row is finished by the repair loop
    again = await m.ingest(
        "acme", "ext", run.id, [console("b"), completed()], idempotency_key="end"
    )
    assert again == answer
    await repair_pass(m)
    row = await m.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.SUCCEEDED and row.log_state is LogState.PLAIN


@pytest.mark.parametrize("down", ["database", "object store"])
async def test_a_cancel_answered_503_after_its_run_completed_was_durable(
    app: App, monkeypatch: pytest.MonkeyPatch, down: str
) -> None:
    """Found from outside: a cancel whose run.completed was durable got 503 because
    finishing the row (a full disk under SQLite) or the seal (S3 away) failed; its retry
    then got 409 ``run_ended``, so the client could not tell its cancel had worked. The
    cancel has happened: it is answered (202), and the repair loop finishes the row."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")])

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise StorageError(f"the {down} is unreachable")

    async def upload_fails(ref: Any, lock: Any = None, checkpoint: Any = None) -> Any:
        if lock is not None:
            lock.release(unlink=True)  # as the real seal does, whatever happens
        raise StorageError(f"the {down} is unreachable")

    if down == "database":
        monkeypatch.setattr(m.repo, "finish_owned", unreachable)
    else:
        monkeypatch.setattr(m.log, "seal", upload_fails)
    answered = await m.cancel_run("acme", "ext", run.id)  # (raised StorageError: 503)
    assert answered.id == run.id
    monkeypatch.undo()
    stored = await events_of(app, run)
    assert stored[-1].type == "run.completed"
    assert stored[-1].payload["status"] == "cancelled"
    with pytest.raises(RunEnded):
        await m.ingest("acme", "ext", run.id, [console("late")])
    await repair_pass(m)
    row = await m.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.CANCELLED and row.log_state is LogState.PLAIN
    assert [e.type for e in await events_of(app, run)].count("run.completed") == 1


async def test_a_hanging_object_store_held_the_completions_answer_for_its_timeout(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: with S3 blackholed, a completing batch was answered 200 only
    after the store's 30 s timeout (its keyed retries, queued behind the run's lock, as
    late or 503): past many producers' timeouts, for a run whose run.completed was
    durable and whose row was finished. The answer now waits for the seal at most
    ``SEAL_WAIT_SECONDS``; the seal goes on, and a failed one is the repair loop's."""
    monkeypatch.setattr(held_module, "SEAL_WAIT_SECONDS", 0.3, raising=False)
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")])

    async def hanging_store(ref: Any, lock: Any = None, checkpoint: Any = None) -> Any:
        try:
            await asyncio.sleep(2.0)  # the store's timeout
            raise StorageError("S3 write of the log store failed: cannot reach it")
        finally:
            if lock is not None:
                lock.release(unlink=True)  # as the real seal does, whatever happens

    monkeypatch.setattr(m.log, "seal", hanging_store)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await m.ingest(
        "acme", "ext", run.id, [console("b"), completed()], idempotency_key="end"
    )
    assert loop.time() - started < 1.5, "the answer waited for the hanging store"
    assert answer == {"first_sequence": 3, "last_sequence": 4}
    row = await m.get_run("acme", "ext", run.id)
    assert row.status is RunStatus.SUCCEEDED and row.log_state is LogState.LIVE
    started = loop.time()
    again = await m.ingest(
        "acme", "ext", run.id, [console("b"), completed()], idempotency_key="end"
    )
    assert again == answer and loop.time() - started < 1.5
    await asyncio.sleep(2.2)  # the background seal failed (said in the log)
    monkeypatch.undo()
    await repair_pass(m)
    row = await m.get_run("acme", "ext", run.id)
    assert row.log_state is LogState.PLAIN
    assert [e.type for e in await events_of(app, run)].count("run.completed") == 1
