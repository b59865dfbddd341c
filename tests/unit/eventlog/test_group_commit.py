"""The group commit (eventlog/group_commit.py): when buffered commits are written, and how."""

from __future__ import annotations

import asyncio

import pytest

from runevents.eventlog import EventLog, RunRef
from runevents.eventlog.files import FileOps
from runevents.ids import new_run_id
from runevents.logstore import LogStore
from tests.unit.eventlog.conftest import MakeLog
from tests.unit.eventlog.helpers import completed, drafts, read_sequences

# -- flush policy -----------------------------------------------------------------------


async def visible(log: EventLog, ref: RunRef) -> int:
    return len(await read_sequences(log, ref))


async def test_events_are_buffered_until_flush_events(
    store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(store, flush_events=3, flush_interval_ms=60_000)
    writer = await log.open_writer(ref)
    await writer.append(drafts(1))
    await writer.append(drafts(1))
    assert await visible(log, ref) == 0
    await writer.append(drafts(1))
    assert await visible(log, ref) == 3
    await writer.append(drafts(1))
    await writer.flush()
    assert await visible(log, ref) == 4
    await writer.close()


async def test_the_interval_flushes_a_quiet_buffer(
    store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(store, flush_events=1000, flush_interval_ms=20)
    writer = await log.open_writer(ref)
    await writer.append(drafts(2))
    assert await visible(log, ref) == 0
    for _ in range(100):
        await asyncio.sleep(0.01)
        if await visible(log, ref) == 2:
            break
    assert await visible(log, ref) == 2
    await writer.close()


async def test_run_completed_and_close_flush_at_once(
    store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(store, flush_events=1000, flush_interval_ms=60_000)
    writer = await log.open_writer(ref)
    await writer.append(drafts(2))
    await writer.append([completed()])
    assert await visible(log, ref) == 3
    await writer.close()

    other = RunRef(ref.workspace_id, ref.configuration_id, new_run_id())
    writer = await log.open_writer(other)
    await writer.append(drafts(2))
    await writer.close()
    assert await visible(log, other) == 2


class CountingOps(FileOps):
    """Counts the system calls of the write path."""

    def __init__(self) -> None:
        self.writes = 0
        self.fsyncs = 0

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        self.writes += 1
        return super().pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fsync(fd)


@pytest.mark.parametrize(
    ("mode", "writes", "fsyncs"), [("never", 2, 0), ("flush", 2, 2), ("batch", 2, 2)]
)
async def test_fsync_modes(
    local_store: LogStore, make_log: MakeLog, ref: RunRef, mode: str, writes: int, fsyncs: int
) -> None:
    ops = CountingOps()
    log = make_log(local_store, flush_events=3, flush_interval_ms=60_000, fsync=mode, file_ops=ops)
    writer = await log.open_writer(ref)
    for _ in range(5):
        await writer.append(drafts(1))  # 5 appends: one policy flush at 3, one at close
    await writer.close()
    assert (ops.writes, ops.fsyncs) == (writes, fsyncs)
    assert await read_sequences(log, ref) == [1, 2, 3, 4, 5]


async def test_a_whole_batch_is_one_write(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    ops = CountingOps()
    log = make_log(local_store, file_ops=ops)
    writer = await log.open_writer(ref)
    await writer.append(drafts(400))
    await writer.flush()
    assert ops.writes == 1
    await writer.close()


async def test_background_flushes_interleave_safely_with_commits(
    store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    """fsync=flush: the timer's flush awaits an fsync while commits keep coming."""
    log = make_log(store, flush_events=7, flush_interval_ms=1, fsync="flush")
    writer = await log.open_writer(ref)

    async def producer(n: int) -> None:
        for _ in range(n):
            await writer.append(drafts(1))
            await asyncio.sleep(0)

    await asyncio.gather(*(producer(40) for _ in range(5)))
    await writer.close()
    assert await read_sequences(log, ref) == list(range(1, 201))
