"""Snapshot reads: seeking with the index, limits, partial lines, stale indexes, remote logs."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runevents.eventlog import EventLog, LogStats, RunRef
from runevents.eventlog.index import SparseIndex
from runevents.exceptions import LogDamaged, LogNotFound, StorageError
from runevents.ids import new_run_id
from runevents.logstore import LogStore
from runevents.logstore.memory import MemoryLogStore
from tests.unit.eventlog.conftest import MakeLog, collect
from tests.unit.eventlog.helpers import check_chunks, completed, drafts, read_sequences


async def write_run(
    log: EventLog, ref: RunRef, n: int, *, size: int = 100, end: bool = True
) -> None:
    writer = await log.open_writer(ref)
    for start in range(0, n, 7):
        await writer.append(drafts(min(7, n - start), start=start, size=size))
    if end:
        await writer.append([completed()])
    await writer.close()


async def test_read_after_every_position_and_with_limits(log: EventLog, ref: RunRef) -> None:
    await write_run(log, ref, 80)
    everything = list(range(1, 82))
    for after in range(0, 84):
        assert await read_sequences(log, ref, after) == everything[after:]
    for after, limit in [(0, 1), (5, 10), (79, 5), (0, 81), (3, 0)]:
        chunks = await collect(log.read(ref, after_sequence=after, limit=limit))
        assert check_chunks(chunks, after + 1) == everything[after : after + limit]


async def test_a_sealed_log_reads_the_same_and_from_the_store(log: EventLog, ref: RunRef) -> None:
    await write_run(log, ref, 50)
    before = await read_sequences(log, ref)
    info = await log.seal(ref)
    assert info.event_count == 51
    assert await read_sequences(log, ref) == before
    assert await read_sequences(log, ref, 30) == before[30:]
    keys = log.keys(ref)
    if keys.spooled:
        assert not keys.live.exists() and not keys.live_index.exists()
        assert info.events_path == f"memory://{keys.log}"
        assert (await log.store.stat(keys.log)).size == info.bytes
    else:
        assert info.events_path == str(keys.live)
    assert await log.seal(ref) == info  # idempotent


class RecordingStore(MemoryLogStore):
    """A remote store that records the ranges read from it."""

    def __init__(self) -> None:
        super().__init__()
        self.ranges: list[tuple[str, int, int | None]] = []

    def read(
        self, key: str, start: int = 0, end: int | None = None, **kw: Any
    ) -> AsyncIterator[bytes]:
        self.ranges.append((key, start, end))
        return super().read(key, start, end, **kw)


async def test_a_remote_read_seeks_with_a_ranged_read(make_log: MakeLog, ref: RunRef) -> None:
    store = RecordingStore()
    log = make_log(store)
    await write_run(log, ref, 300, size=200)
    await log.seal(ref)
    keys = log.keys(ref)
    data = b"".join(await collect(store.read(keys.log)))
    line_251 = sum(len(line) + 1 for line in data.split(b"\n")[:250])
    store.ranges.clear()
    assert await read_sequences(log, ref, 250) == list(range(251, 302))
    [(_, start, _)] = [r for r in store.ranges if r[0] == keys.log]
    # started within one index step (2 KiB here, plus a line) before the line, not at 0
    assert line_251 - 2048 - 600 < start <= line_251


async def test_a_trailing_partial_line_is_never_yielded(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(local_store)
    await write_run(log, ref, 5, end=False)
    with log.keys(ref).live.open("ab") as f:
        f.write(b'{"type":"console.line","event_id":"half')  # a writer elsewhere, mid-write
    assert await read_sequences(log, ref) == [1, 2, 3, 4, 5]
    assert (await log.stats(ref)).event_count == 5


async def test_a_zeroed_block_is_never_served_as_events(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    """Defect 7 of issue 13: after a machine crash a block reads back as zeros; a read
    raises StorageError instead of serving NUL bytes as an event and shifting every
    later sequence (recovery cuts the block before the log is written again)."""
    log = make_log(local_store)
    await write_run(log, ref, 40, end=False)
    path = log.keys(ref).live
    data = bytearray(path.read_bytes())
    starts = [0, *[i + 1 for i, byte in enumerate(data) if byte == 10][:-1]]
    hole = starts[20] + 10
    data[hole : hole + 300] = bytes(300)  # spans the end of line 21 into line 22
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="NUL"):
        await read_sequences(log, ref)
    with pytest.raises(LogDamaged, match=f"offset {hole}") as caught:
        await collect(log.read(ref, after_sequence=15))
    assert caught.value.offset == hole and caught.value.code == "log_damaged"
    # the lines before the damage are still served, exactly
    chunks = await collect(log.read(ref, limit=20))
    assert check_chunks(chunks) == list(range(1, 21))


async def test_lines_longer_than_a_read_block(log: EventLog, ref: RunRef) -> None:
    await write_run(log, ref, 6, size=700_000)
    assert await read_sequences(log, ref) == list(range(1, 8))
    assert await read_sequences(log, ref, 3) == [4, 5, 6, 7]


async def test_a_stale_index_falls_back_to_a_scan_and_is_rebuilt(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(local_store)
    await write_run(log, ref, 200)
    await log.seal(ref)
    keys = log.keys(ref)
    good = SparseIndex.from_bytes(keys.live_index.read_bytes())
    assert good is not None and len(good) > 10
    shifted = SparseIndex()
    for sequence, offset in zip(good.sequences, good.offsets, strict=True):
        shifted.add(sequence + 1, offset)  # every record names the wrong line
    keys.live_index.write_bytes(shifted.to_bytes())
    assert await read_sequences(log, ref, 150) == list(range(151, 202))
    repaired = SparseIndex.from_bytes(keys.live_index.read_bytes())
    assert repaired is not None
    assert list(repaired.sequences) == list(good.sequences)


async def test_a_missing_index_of_a_large_ended_log_is_rebuilt(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(local_store)
    await write_run(log, ref, 200)
    keys = log.keys(ref)
    keys.live_index.unlink()
    assert await read_sequences(log, ref, 120) == list(range(121, 202))
    rebuilt = SparseIndex.from_bytes(keys.live_index.read_bytes())
    assert rebuilt is not None and len(rebuilt) > 10


async def test_an_index_past_the_end_is_ignored(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(local_store)
    await write_run(log, ref, 40)
    keys = log.keys(ref)
    index = SparseIndex.from_bytes(keys.live_index.read_bytes())
    assert index is not None
    index.add(10_000, 10_000_000)
    keys.live_index.write_bytes(index.to_bytes())
    assert await read_sequences(log, ref, 35) == [36, 37, 38, 39, 40, 41]


async def test_reading_a_run_without_a_log_is_log_not_found(log: EventLog, ref: RunRef) -> None:
    reader = log.read(ref)
    with pytest.raises(LogNotFound):
        await reader.__anext__()
    assert await log.stats(ref) == LogStats(0, 0, None)


async def test_stats_follow_the_life_of_a_log(log: EventLog, ref: RunRef) -> None:
    writer = await log.open_writer(ref)
    await writer.append(drafts(3))
    await writer.flush()
    live = await log.stats(ref)
    assert (live.event_count, live.form) == (3, "live")
    await writer.append([completed()])
    await writer.close()
    sealed = await log.seal(ref)
    assert await log.stats(ref) == LogStats(4, sealed.bytes, "plain")
    info = await log.compact(ref)
    await log.drop_plain(ref)
    assert await log.stats(ref) == LogStats(4, info.bytes, "compressed")


async def test_scan_finds_stored_and_spooled_logs(log: EventLog, ref: RunRef) -> None:
    other = RunRef("beta", "load", new_run_id())
    await write_run(log, ref, 3)
    await log.seal(ref)
    writer = await log.open_writer(other)  # live: in the spool for a remote store
    await writer.append(drafts(1))
    await writer.flush()
    found = sorted(await collect(log.scan()), key=lambda r: r.workspace_id)
    assert found == [ref, other]
    await writer.close()


async def test_scan_skips_empty_logs(log: EventLog, ref: RunRef) -> None:
    writer = await log.open_writer(ref)
    await writer.close()
    assert await collect(log.scan()) == []


async def test_events_path_is_local_or_an_object_url(
    store: LogStore, make_log: MakeLog, ref: RunRef, tmp_path: Path
) -> None:
    log = make_log(store)
    path = log.events_path(ref)
    key = f"workspaces/acme/runs/{ref.run_id}/logs/events.ndjson"
    if store.local_path(key) is None:
        assert path == f"memory://{key}"
    else:
        assert path == str(tmp_path / "store" / key) and os.path.isabs(path)


async def test_a_reader_without_io_of_its_own_yields_to_the_loop(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    """Durability issue, defect 8: ``FileSource.blocks`` never yielded, so a consumer
    that only computes (the summary fold at completion, search) held the event loop
    for the whole log: 0.48 s per 200k events."""
    import asyncio

    log = make_log(local_store)
    writer = await log.open_writer(ref)
    for _ in range(20):
        await writer.append(drafts(1000, size=400))
    await writer.close()
    turns = 0
    stop = False

    async def ticker() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = turns
    chunks = 0
    async for _chunk in log.read(ref):
        chunks += 1  # no await of its own: only the reader can give the loop a turn
    stop = True
    await task
    assert chunks > 10
    assert turns - before >= chunks // 2


async def test_scan_skips_a_log_retention_deletes_while_it_is_opened(
    make_log: MakeLog, ref: RunRef
) -> None:
    """Reindex beside retention on another machine: the compressed log is listed and
    found, then deleted before its index is read; scan skips it instead of failing
    ("the compressed log ... has no index")."""
    store = MemoryLogStore()
    log = make_log(store)
    await write_run(log, ref, 3)
    await log.seal(ref)
    await log.compact(ref)
    await log.drop_plain(ref)
    keys = log.keys(ref)
    real_stat = store.stat

    async def stat_then_deleted(key: str) -> Any:
        info = await real_stat(key)
        if key == keys.compressed:
            await log.delete(ref)  # retention lands right after the look
        return info

    store.stat = stat_then_deleted  # type: ignore[method-assign]
    assert await collect(log.scan()) == []
