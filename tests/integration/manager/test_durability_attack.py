"""A 200 means durable, attacked: defects found after the durability issue's first fix.

Each test is named after the defect it reproduces (see the report of branch
``i13-attack``). Faults go through the OS-call seam (``FileOps``) and the
repository seam; the real-process versions are in
``tests/acceptance/test_durability_attack.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
from typing import Any

import pytest

from runevents.app import App
from runevents.events import ENVELOPE_ALLOWANCE, EventDraft, decode_event
from runevents.exceptions import DatabaseError, InvalidInput, PayloadTooLarge, StorageError
from runevents.held import run_ref
from tests.fixtures.faults import FaultyOps
from tests.integration.manager.conftest import started_session


def console(message: str) -> EventDraft:
    return EventDraft(
        type="console.line",
        payload={"scope": "run", "stream": "stdout", "level": "info", "message": message},
    )


async def messages_of(app: App, run: Any) -> list[Any]:
    found = []
    async for chunk in app.manager.read_events(run):
        found += [
            decode_event(line).payload.get("message") for line in chunk.data.split(b"\n")[:-1]
        ]
    return found


@pytest.fixture
def ops(app: App) -> FaultyOps:
    """Faults for every writer the app opens from now on."""
    faulty = FaultyOps()
    app.manager.log.file_ops = faulty
    return faulty


async def test_keyed_retry_after_a_rolled_back_batch_is_not_answered_from_another_batch(
    app: App, ops: FaultyOps
) -> None:
    """Batch X (key k) fails on a full disk (503, rolled back); batch Y of another producer
    then gets X's sequence -- and, from the same writer, X's event_id. X's keyed retry is
    judged by "the log holds the recorded event_id at the recorded sequence", finds Y's
    line, and is answered 200 with X's first answer: X is acknowledged and never stored."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    ops.error = errno.ENOSPC
    with pytest.raises(StorageError):
        await m.ingest("acme", "ext", run.id, [console("x")], idempotency_key="k", body_sha256="X")
    ops.error = None
    await m.ingest("acme", "ext", run.id, [console("y")])
    answer = await m.ingest(
        "acme", "ext", run.id, [console("x")], idempotency_key="k", body_sha256="X"
    )
    messages = await messages_of(app, run)
    assert "x" in messages, (answer, messages)
    assert messages[answer["first_sequence"] - 1] == "x", (answer, messages)


async def test_keyed_retry_of_a_413_batch_is_not_answered_200_from_another_batch(
    app: App,
) -> None:
    """The key's record is stored before ``commit`` checks the event size: a batch refused
    with 413 leaves a record naming a sequence and event_id that the next batch of the
    same writer then gets. Re-sending the refused batch with its key gets 200 and the
    other batch's sequences instead of 413; nothing of it is in the log."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    # (past what a stored line may take: the writer's own check, after the key is stored)
    limit = m.settings.max_event_bytes + ENVELOPE_ALLOWANCE
    big = [console("z" * (limit + 10))]
    with pytest.raises(PayloadTooLarge):
        await m.ingest("acme", "ext", run.id, big, idempotency_key="big", body_sha256="B")
    await m.ingest("acme", "ext", run.id, [console("y")])
    try:
        answer = await m.ingest("acme", "ext", run.id, big, idempotency_key="big", body_sha256="B")
    except PayloadTooLarge:
        return
    pytest.fail(f"a 413 batch re-sent with its key was answered {answer}")


async def test_a_batch_refused_because_the_lease_cannot_be_renewed_is_never_written(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer proves its lease before each write (``fence``); with the database away
    past the lease's local trust, ``Lease.ensure`` raises DatabaseError, the batch gets
    503 -- but it stays in the writer's buffer (no rollback: only WriterFenced and
    OSError are handled), and the next batch's write puts it into the log."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    held = m.held.get(run.id)
    assert held is not None
    real = m.repo.renew_writer

    async def database_down(*args: Any, **kwargs: Any) -> bool:
        raise DatabaseError("the database failed (connection refused)")

    monkeypatch.setattr(m.repo, "renew_writer", database_down)
    held.lease.trusted_until = 0.0  # the local trust ran out while the database is away
    with pytest.raises(StorageError):
        await m.ingest("acme", "ext", run.id, [console("refused")])
    monkeypatch.setattr(m.repo, "renew_writer", real)
    await m.ingest("acme", "ext", run.id, [console("next")])
    assert "refused" not in await messages_of(app, run)


async def test_a_batch_answered_503_after_its_fsync_is_not_in_the_log(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the batch is durable, ``_after_batch`` updates the row (progress, or queued ->
    running on the first batch); a database error there answers 503 for a batch that is
    already in the log (contract 6: a 503'd batch never appears unless sent again)."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)

    async def database_down(*args: Any, **kwargs: Any) -> Any:
        raise DatabaseError("the database failed (connection refused)")

    monkeypatch.setattr(m.repo, "update_run", database_down)
    try:
        answer = await m.ingest("acme", "ext", run.id, [console("first")])
    except StorageError:
        assert "first" not in await messages_of(app, run), "503, yet the batch is in the log"
    else:
        assert answer == {"first_sequence": 2, "last_sequence": 2}


class GatedFsync(FaultyOps):
    """An fsync that waits for ``gate`` (in the writer's thread), then fails."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def fsync(self, fd: int) -> None:
        self.entered.set()
        if not self.gate.wait(30):
            raise AssertionError("the test never opened the gate")
        raise OSError(errno.EIO, "injected fsync failure")


async def test_a_keyed_batch_is_not_refused_422_when_an_earlier_batch_rolls_back(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch A syncs outside the run's lock; batch B (keyed) is prepared under it and then
    awaits ``put_idempotency``. A's fsync fails meanwhile and the rollback hands A's
    sequences out again, so B's ``commit`` finds ``first != last_sequence + 1`` and raises
    InvalidInput: a valid batch gets 422 ("commit() takes exactly the events of the last
    prepare()") for a disk error, and its key record names a sequence/event_id that the
    next batch of this writer gets (so its retry is then answered from that batch)."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    faulty = GatedFsync()
    held = m.held.get(run.id)
    assert held is not None
    held.writer._ops = faulty  # this writer's OS calls from now on
    real_put = m.repo.put_idempotency

    async def put_while_a_fails(*args: Any, **kwargs: Any) -> None:
        faulty.gate.set()  # A's fsync fails now ...
        for _ in range(500):  # ... and is rolled back before B goes on
            if held.writer.last_sequence == 1:
                break
            await asyncio.sleep(0.01)
        await real_put(*args, **kwargs)

    monkeypatch.setattr(m.repo, "put_idempotency", put_while_a_fails)
    first = asyncio.create_task(m.ingest("acme", "ext", run.id, [console("a")]))
    await asyncio.to_thread(faulty.entered.wait, 30)
    refused: InvalidInput | None = None
    try:
        await m.ingest("acme", "ext", run.id, [console("b")], idempotency_key="kb", body_sha256="B")
    except StorageError:
        pass  # 503: honest, the producer retries
    except InvalidInput as exc:
        refused = exc
    finally:
        faulty.gate.set()
        with pytest.raises(StorageError):
            await first
    assert refused is None, f"a valid keyed batch was refused 422: {refused}"


@pytest.mark.parametrize("trigger", ["log_recovered_write_fails", "lease_unavailable"])
async def test_a_cut_is_marked_by_log_recovered_even_when_the_first_take_fails(
    app: App, monkeypatch: pytest.MonkeyPatch, trigger: str
) -> None:
    """Recovery cuts (and quarantines) a torn tail inside ``open_writer`` -- before the
    writer lease is taken and before ``log.recovered`` is durable. If the first take then
    fails (the ``log.recovered`` write hits a full disk, or the database cannot grant the
    lease), the cut stays made but unmarked, and the next take finds nothing to cut:
    the log never gets its ``log.recovered`` (contract 2.2)."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")])
    held = m.held.get(run.id)
    assert held is not None
    await held.release()
    path = m.log.keys(held.ref).live
    with path.open("ab") as f:  # a kill -9 mid-write: a torn last line
        f.write(b'{"type":"console.line","event_id":"evt_x","seq')
    if trigger == "log_recovered_write_fails":
        ops = FaultyOps()
        ops.error = errno.ENOSPC
        m.log.file_ops = ops
    else:
        real = m.repo.acquire_writer

        async def database_down(*args: Any, **kwargs: Any) -> int | None:
            raise DatabaseError("the database failed (connection refused)")

        monkeypatch.setattr(m.repo, "acquire_writer", database_down)
    with pytest.raises(StorageError):
        await m.ingest("acme", "ext", run.id, [console("b")])
    if trigger == "log_recovered_write_fails":
        ops.error = None  # the disk has room again (for every writer that uses it)
    else:
        monkeypatch.setattr(m.repo, "acquire_writer", real)
    await m.ingest("acme", "ext", run.id, [console("b")])
    quarantined = sorted(path.parent.glob("events.ndjson.torn-*"))
    events = []
    async for chunk in m.read_events(run):
        events += [decode_event(line) for line in chunk.data.split(b"\n")[:-1]]
    assert quarantined, "nothing was cut"
    assert [e.type for e in events].count("log.recovered") == len(quarantined), [
        e.type for e in events
    ]


async def test_a_503_batch_the_writer_could_not_cut_back_is_not_kept_by_recovery(
    app: App, ops: FaultyOps
) -> None:
    """A batch's write succeeds, its fsync fails (503), and cutting the file back fails
    too: the writer is broken with the unacknowledged batch whole in the file. The
    failure table says the next take's recovery cuts it -- but recovery only cuts
    incomplete units and damage, so the 503'd batch (a whole unit) is kept in the log."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")])
    ops.fail_fsync = True
    ops.fail_truncate = True
    with pytest.raises(StorageError):
        await m.ingest("acme", "ext", run.id, [console("refused")])
    ops.fail_fsync = False
    ops.fail_truncate = False
    held = m.held.get(run.id)
    assert held is not None and held.writer.broken is not None
    await held.release()  # what watch_held_runs does after the release delay
    await m.ingest("acme", "ext", run.id, [console("b")])
    assert "refused" not in await messages_of(app, run)


class FsyncSpy:
    """Records the path of every fd passed to ``os.fsync``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import os

        self.paths: list[str] = []
        real = os.fsync

        def spy(fd: int) -> None:
            with contextlib.suppress(OSError):
                self.paths.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)

        monkeypatch.setattr(os, "fsync", spy)


async def test_a_new_logs_directory_is_fsynced_before_its_first_event_is_acknowledged(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 defect 10 (not fixed): a new log file's directory entry (and the run's
    directories, made by mkdir) are fsynced only at seal. After a power loss the whole log
    of a live run -- run.queued and every acknowledged batch, each fsynced as a file --
    can be gone with its directory entry."""
    spy = FsyncSpy(monkeypatch)
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest("acme", "ext", run.id, [console("a")])
    logs_dir = str(m.log.keys(run_ref(run)).live.parent)
    assert logs_dir in spy.paths, spy.paths


async def test_dropping_the_plain_log_after_compaction_fsyncs_its_directory(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 defect 10 (not fixed): ``drop_plain``'s unlink is not followed by a
    directory fsync, so a power loss can bring the plain log back after the row says
    ``compressed`` (and the compaction journal entry is gone)."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    await m.ingest(
        "acme",
        "ext",
        run.id,
        [console("a"), EventDraft(type="run.completed", payload={"status": "succeeded"})],
    )
    run = await m.get_run("acme", "ext", run.id)
    spy = FsyncSpy(monkeypatch)
    real_drop = m.log.drop_plain
    dropped_at: list[int] = []

    async def drop_plain(ref: Any) -> None:
        dropped_at.append(len(spy.paths))
        await real_drop(ref)

    monkeypatch.setattr(m.log, "drop_plain", drop_plain)
    assert await m.compact_run(run) is not None
    assert not m.log.keys(run_ref(run)).live.exists() and dropped_at
    logs_dir = str(m.log.keys(run_ref(run)).live.parent)
    assert logs_dir in spy.paths[dropped_at[0] :], spy.paths[dropped_at[0] :]


async def test_settle_after_a_completion_that_failed_before_run_completed_writes_it(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's ``_complete`` retries a failed ``session.complete`` with
    ``session.settle()``, which assumes run.completed is already in the log (COMPLETING).
    But ``complete_held`` can fail *before* run.completed is committed -- its
    ``repo.get_run`` with the database away. ``settle`` then steps OWNED -> COMPLETING,
    finishes the row (status "failed" from an empty summary) and seals a log that has no
    run.completed: the row says ended/plain, followers wait forever (issue 13 defect 2)."""
    m = app.manager
    session = await started_session(app, "hello")
    await session.emit([console("working")])
    real = m.repo.get_run

    async def database_down(*args: Any, **kwargs: Any) -> Any:
        raise DatabaseError("the database failed (connection refused)")

    monkeypatch.setattr(m.repo, "get_run", database_down)
    with pytest.raises(StorageError):
        await session.complete(status="succeeded", failure=None, execution=None)
    monkeypatch.setattr(m.repo, "get_run", real)
    finished = await session.settle()  # what Worker._complete does next
    events = []
    async for chunk in m.read_events(finished):
        events += [decode_event(line) for line in chunk.data.split(b"\n")[:-1]]
    assert events[-1].type == "run.completed", (finished.status, [e.type for e in events])
    assert finished.status.value == events[-1].payload["status"] == "succeeded"


class SlowFsync(FaultyOps):
    """An fsync that waits for ``gate`` (in the writer's thread), then succeeds."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def fsync(self, fd: int) -> None:
        self.entered.set()
        self.gate.wait(30)
        super().fsync(fd)


async def test_the_summary_in_run_completed_counts_batches_still_syncing_before_it(
    app: App,
) -> None:
    """Batch A is committed and syncing (outside the run's lock) when the completing
    batch C takes the lock; C's summary is the fold (durable events only) plus C, so A's
    events -- which are in the log before run.completed -- are missing from the
    run.completed summary, while the row's summary (folded at settle) has them: the
    stored summary is not the summary of the log (contract 2.1)."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    held = m.held.get(run.id)
    assert held is not None
    slow = SlowFsync()
    held.writer._ops = slow
    first = asyncio.create_task(m.ingest("acme", "ext", run.id, [console("a"), console("a2")]))
    await asyncio.to_thread(slow.entered.wait, 30)
    end = [console("c"), EventDraft(type="run.completed", payload={"status": "succeeded"})]
    last = asyncio.create_task(m.ingest("acme", "ext", run.id, end))
    await asyncio.sleep(0.2)  # C is prepared and committed, waiting for A's fsync
    slow.gate.set()
    await first
    await last
    events = []
    async for chunk in m.read_events(run):
        events += [decode_event(line) for line in chunk.data.split(b"\n")[:-1]]
    assert [e.type for e in events][-1] == "run.completed"
    stored = events[-1].payload["summary"]
    row = await m.get_run("acme", "ext", run.id)
    assert stored["events"]["total"] == len(events), stored["events"]
    assert row.summary == stored


async def test_a_database_error_while_starting_a_claimed_run_gives_the_run_back(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker claims a run (execution lease set), then ``start_session`` fails on a
    database blip (taking the writer lease). ``Worker._execute`` lets the error escape the
    task: the claim is neither released nor heart-beaten, so the run sits queued under a
    live worker's lease until the reaper finishes it failed / ``worker_lost`` -- a run
    that never started, failed although its worker is alive. Expected: the run is given
    back to the queue (or retried), not left claimed."""
    from runevents.worker import Worker

    m = app.manager
    await m.create_run("acme", "hello")
    worker = Worker(m, concurrency=1, worker_id="w1")
    run = await m.claim_next("w1")
    assert run is not None
    real = m.repo.acquire_writer

    async def database_down(*args: Any, **kwargs: Any) -> int | None:
        raise DatabaseError("the database failed (connection refused)")

    monkeypatch.setattr(m.repo, "acquire_writer", database_down)
    with contextlib.suppress(Exception):
        await worker._execute(run)
    monkeypatch.setattr(m.repo, "acquire_writer", real)
    row = await m.repo.get_run(run.id)
    # given back (no lease) or retried by this worker (no longer queued); not left claimed
    assert row.lease_owner is None or row.status.value != "queued", (
        row.status,
        row.lease_owner,
    )


async def test_damage_before_the_checkpoint_is_cut_and_marked_not_a_503_forever(
    app: App,
) -> None:
    """A failing disk zeroes a block *before* the row's checkpoint (not a crash: the
    checkpoint is right). Recovery starts at the checkpoint and does not see it; readers
    raise LogDamaged (503). ARCHITECTURE.md says "the owner then recovers with
    checkpoint=None to cut and mark it", but nothing catches LogDamaged: reads stay 503
    and the run can never complete (the summary fold of a taken-over run reads the
    damaged log: 503 for every completing batch). Contract 2.2: damage from a failing disk
    is cut and marked the same way (quarantine, log.recovered, gap-free)."""
    m = app.manager
    run = await m.create_run("acme", "ext", external=True)
    for i in range(5):
        await m.ingest("acme", "ext", run.id, [console(f"{i}-{j}") for j in range(20)])
    held = m.held.get(run.id)
    assert held is not None
    await held.release()  # the row's checkpoint is the durable end now
    path = m.log.keys(run_ref(run)).live
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 512] = b"\0" * 512
    path.write_bytes(bytes(data))
    end = [console("last"), EventDraft(type="run.completed", payload={"status": "succeeded"})]
    outcomes = []
    for _ in range(3):  # a producer retrying its completing batch
        try:
            outcomes.append(await m.ingest("acme", "ext", run.id, end, idempotency_key="end"))
            break
        except StorageError as exc:
            outcomes.append(exc.code)
    assert isinstance(outcomes[-1], dict), outcomes
    events = []
    async for chunk in m.read_events(await m.get_run("acme", "ext", run.id)):
        events += [decode_event(line) for line in chunk.data.split(b"\n")[:-1]]
    kinds = [e.type for e in events]
    assert "log.recovered" in kinds and kinds[-1] == "run.completed", kinds
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
