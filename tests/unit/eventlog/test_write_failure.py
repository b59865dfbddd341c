"""Write failures (disk full, permission lost): the run goes on, nothing is torn or re-numbered."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from runevents.eventlog import EventLog, RunRef, RunWriter
from runevents.eventlog.files import FileOps
from runevents.events import decode_event
from runevents.exceptions import StorageError
from runevents.logstore import LogStore
from tests.unit.eventlog.conftest import MakeLog
from tests.unit.eventlog.helpers import completed, drafts, read_sequences


class FaultyOps(FileOps):
    """Fails writes on demand: whole (ENOSPC/EACCES) or after writing part of the data."""

    def __init__(self) -> None:
        self.error: int | None = None
        #: bytes to write (once) before the error strikes
        self.partial = 0
        self.fail_truncate = False
        self.fail_fsync = False

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        if self.error is not None:
            if self.partial:
                written = super().pwrite(fd, memoryview(data)[: self.partial], offset)
                self.partial = 0
                return written
            raise OSError(self.error, "injected failure")
        return super().pwrite(fd, data, offset)

    def ftruncate(self, fd: int, length: int) -> None:
        if self.fail_truncate:
            raise OSError(errno.EIO, "injected truncate failure")
        super().ftruncate(fd, length)

    def fsync(self, fd: int) -> None:
        if self.fail_fsync:
            raise OSError(errno.EIO, "injected fsync failure")
        super().fsync(fd)


@pytest.fixture
def ops() -> FaultyOps:
    return FaultyOps()


@pytest.fixture
def faulty_log(local_store: LogStore, make_log: MakeLog, ops: FaultyOps) -> EventLog:
    return make_log(local_store, file_ops=ops, flush_events=5, flush_interval_ms=60_000)


def assert_whole_lines(path: Path) -> int:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert [decode_event(line).sequence for line in lines] == list(range(1, len(lines) + 1))
    return len(lines)


async def test_disk_full_degrades_the_writer_and_a_retry_writes_everything(
    faulty_log: EventLog, ops: FaultyOps, ref: RunRef
) -> None:
    writer = await faulty_log.open_writer(ref)
    flagged: list[RunWriter] = []
    writer.on_degraded = flagged.append
    await writer.append(drafts(5))  # flushed
    ops.error = errno.ENOSPC
    await writer.append(drafts(5))  # the flush fails
    await writer.append(drafts(3))  # the run goes on
    assert writer.degraded and writer.write_errors == 1 and flagged == [writer]
    assert writer.pending_events == 8 and writer.last_sequence == 13
    assert await read_sequences(faulty_log, ref) == [1, 2, 3, 4, 5]
    ops.error = None
    for _ in range(100):  # the retry timer (50 ms) writes the buffer
        await asyncio.sleep(0.01)
        if writer.pending_events == 0:
            break
    assert writer.pending_events == 0
    assert await read_sequences(faulty_log, ref) == list(range(1, 14))
    assert writer.degraded and flagged == [writer]  # stays flagged; called once
    await writer.close()


async def test_a_partial_write_is_cut_back_so_the_log_is_never_torn(
    faulty_log: EventLog, ops: FaultyOps, ref: RunRef
) -> None:
    writer = await faulty_log.open_writer(ref)
    await writer.append(drafts(5))
    path = faulty_log.keys(ref).live
    good = path.stat().st_size
    ops.error, ops.partial = errno.ENOSPC, 150
    await writer.append(drafts(5))
    assert path.stat().st_size == good  # the 150 bytes were cut off again
    assert assert_whole_lines(path) == 5
    ops.error = None
    await writer.flush()
    assert assert_whole_lines(path) == 10
    await writer.close()


async def test_when_the_cut_fails_too_the_writer_stops_and_recovery_cuts(
    faulty_log: EventLog, ops: FaultyOps, ref: RunRef
) -> None:
    """A torn write that cannot be cut back leaves bytes nobody acknowledged: the writer
    refuses to go on until they are cut (on retry, or when it closes): a reopen's
    recovery would keep them, they are whole units. (An atomic writer: a producer's.)"""
    writer = await faulty_log.open_writer(ref, atomic=True)
    await writer.append(drafts(5))
    ops.error, ops.partial, ops.fail_truncate = errno.ENOSPC, 100, True
    with pytest.raises(StorageError):  # atomic: refused (503), rolled back
        await writer.append(drafts(5))
    ops.error, ops.fail_truncate = None, False
    assert writer.broken is not None
    with pytest.raises(StorageError):
        await writer.append(drafts(1))
    await writer.close()
    reopened = await faulty_log.open_writer(ref)
    assert reopened.last_sequence == 5
    assert assert_whole_lines(faulty_log.keys(ref).live) == 5
    await reopened.close()


async def test_a_full_buffer_drops_new_events_before_they_get_a_sequence(
    local_store: LogStore, make_log: MakeLog, ops: FaultyOps, ref: RunRef
) -> None:
    log = make_log(
        local_store, file_ops=ops, flush_events=1, max_buffer_bytes=3000, flush_interval_ms=60_000
    )
    writer = await log.open_writer(ref)
    ops.error = errno.EACCES
    accepted = []
    for i in range(40):
        accepted += await writer.append(drafts(1, start=i, size=100))
    assert writer.dropped_events > 0 and writer.buffer_full
    assert len(accepted) + writer.dropped_events == 40
    assert [e.sequence for e in accepted] == list(range(1, len(accepted) + 1))
    # the final event is never dropped, even with the buffer full (the lost-lines
    # marker goes just before it)
    marker, final = await writer.append([completed()])
    assert marker.payload["lost_lines"] == writer.dropped_events
    assert final.sequence == len(accepted) + 2
    ops.error = None
    await writer.close()
    assert await read_sequences(log, ref) == list(range(1, len(accepted) + 3))


async def test_closing_while_the_disk_fails_releases_the_lock(
    faulty_log: EventLog, ops: FaultyOps, ref: RunRef
) -> None:
    writer = await faulty_log.open_writer(ref)
    await writer.append(drafts(5))
    ops.error = errno.ENOSPC
    await writer.append(drafts(2))
    await writer.flush()
    await writer.close()  # does not raise
    assert writer.pending_events == 2
    ops.error = None
    reopened = await faulty_log.open_writer(ref)
    assert reopened.last_sequence == 5  # continues from what reached the disk
    await reopened.close()


async def test_a_failed_fsync_is_retried_and_nothing_shows_before_it_succeeds(
    local_store: LogStore, make_log: MakeLog, ops: FaultyOps, ref: RunRef
) -> None:
    """Regression (durability issue, defect 1): a failed fsync was acknowledged and its
    events shown. Bytes are visible only once durable; the buffered writer retries."""
    log = make_log(local_store, file_ops=ops, fsync="flush", flush_events=2)
    writer = await log.open_writer(ref)
    ops.fail_fsync = True
    await writer.append(drafts(2))
    assert writer.degraded and writer.write_errors == 1
    assert await read_sequences(log, ref) == []
    assert faulty_size(log, ref) == 0  # cut back: no unsynced bytes left in the file
    ops.fail_fsync = False
    await writer.sync()
    assert await read_sequences(log, ref) == [1, 2]
    await writer.close()


def faulty_size(log: EventLog, ref: RunRef) -> int:
    return log.keys(ref).live.stat().st_size


async def test_regression_buffer_error_after_a_failed_write_kept_its_traceback(
    faulty_log: EventLog, ops: FaultyOps, ref: RunRef
) -> None:
    """``last_error`` keeps the traceback of a failed write alive; a memoryview of the
    append buffer in one of its frames made every later commit raise BufferError."""
    writer = await faulty_log.open_writer(ref)
    ops.error, ops.partial = errno.ENOSPC, 10
    await writer.append(drafts(5))
    assert writer.last_error is not None and writer.last_error.__traceback__ is not None
    await writer.append(drafts(5))  # grows the same buffer
    ops.error = None
    await writer.close()
    assert await read_sequences(faulty_log, ref) == list(range(1, 11))


async def test_a_lease_that_cannot_be_proven_is_a_failed_attempt_not_an_exception(
    faulty_log: EventLog, ref: RunRef
) -> None:
    """With the database away, the writer cannot prove its lease: an executor's lines
    stay buffered and are retried (the run goes on); an atomic writer refuses (503)."""
    from runevents.exceptions import DatabaseError

    away = True

    async def fence() -> None:
        if away:
            raise DatabaseError("the database failed (injected)")

    writer = await faulty_log.open_writer(ref)  # buffered: an executor's
    writer.fence = fence
    await writer.append(drafts(5))  # a policy flush: refused quietly, kept
    assert writer.degraded and writer.pending_events == 5
    assert await read_sequences(faulty_log, ref) == []
    away = False
    await writer.sync()
    assert await read_sequences(faulty_log, ref) == [1, 2, 3, 4, 5]
    await writer.close()

    atomic = await faulty_log.open_writer(ref, atomic=True)
    atomic.fence = fence
    away = True
    with pytest.raises(StorageError):
        await atomic.append(drafts(1))
    assert atomic.last_sequence == 5  # rolled back
    await atomic.close()
