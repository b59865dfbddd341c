"""Sealing an ended log, and the stats of a log in whatever form it is."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING

from runevents.eventlog.files import WriterLock, last_line
from runevents.eventlog.locate import (
    CompressedLog,
    Keys,
    PlainLog,
    object_url,
    open_compressed,
    open_stored_plain,
)
from runevents.eventlog.recovery import Recovered, recover_index, recover_log
from runevents.eventlog.types import LogStats, RunRef, SealInfo
from runevents.events import RUN_COMPLETED_PREFIX, decode_event
from runevents.exceptions import InvalidEvent, LogNotFound, StorageError, WriterBusy
from runevents.logstore.local import fsync_dir

if TYPE_CHECKING:
    from runevents.eventlog import EventLog


async def seal(
    log: EventLog,
    ref: RunRef,
    lock: WriterLock | None = None,
    checkpoint: tuple[int, int] | None = None,
) -> SealInfo:
    """fsync the log, make its index complete, and for a remote store upload both
    (index first: a reader that finds the log finds its index) and remove the spool files.

    Runs under the run's writer lock (WriterBusy while a writer holds it). A torn
    tail left by a crashed writer is recovered first. Idempotent: a log already
    sealed away (uploaded or compacted) just reports where it is.
    """
    keys = log.keys(ref)
    if lock is None:
        if log.writer_open(ref):
            raise WriterBusy(f"the writer of run {ref.run_id} is still open: close it first")
        lock = WriterLock.acquire(keys.lock, f"run {ref.run_id}")
    try:
        if not keys.live.exists():
            stats = await stored_stats(log, keys)
            if stats is None:
                raise LogNotFound(f"no event log at {keys.log}")
            return SealInfo(stored_path(log, keys, stats), stats.event_count, stats.bytes)
        recovered, has_index = await asyncio.to_thread(
            _finish_files, keys, ref.run_id, log.config.index_every_bytes, checkpoint
        )
        if keys.spooled:
            if has_index:
                await log.store.write(keys.index, keys.live_index)
            else:
                await log.store.delete(keys.index)  # (a stale one from an earlier seal)
            await log.store.write(keys.log, keys.live)
            for path in (keys.live, keys.live_index):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return SealInfo(log.events_path(ref), recovered.last_sequence, recovered.end)
    except OSError as exc:
        raise StorageError(f"cannot seal the log of run {ref.run_id}: {exc}") from exc
    finally:
        lock.release(unlink=True)  # the run's files are final: no more writers


def _finish_files(
    keys: Keys, run_id: str, every_bytes: int, checkpoint: tuple[int, int] | None
) -> tuple[Recovered, bool]:
    """Recover a torn tail (a crashed writer), complete the index, fsync the log and its
    directory. The index is not fsynced: it is a cache, checked when used and rebuilt.
    Returns the recovered state and whether an index sidecar exists."""
    fd = os.open(keys.live, os.O_RDWR)
    try:
        # from its closing writer, the durable end is known: only what follows is checked
        recovered = recover_log(fd, keys.live, run_id, checkpoint)
        _, index_fd = recover_index(fd, keys.live_index, recovered.end, every_bytes)
        if index_fd is not None:
            os.close(index_fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(keys.live.parent)
    return recovered, index_fd is not None


def stored_path(log: EventLog, keys: Keys, stats: LogStats) -> str:
    """Local path or URL of the stored form ``stats`` describes."""
    key = keys.compressed if stats.form == "compressed" else keys.log
    local = log.store.local_path(key)
    return str(local) if local is not None else object_url(log.store, key)


async def stored_stats(log: EventLog, keys: Keys) -> LogStats | None:
    """Stats of a sealed form in the store (stored plain or compressed), or None."""
    if keys.spooled:
        plain = await open_stored_plain(log.store, keys)
        if plain is not None:
            return LogStats(await _stored_count(plain), plain.end, "plain")
    compressed = await open_compressed(log.store, keys)
    if compressed is not None:
        compressed.close()
        return LogStats(compressed.index.event_count, compressed.size, "compressed")
    return None


async def stats(log: EventLog, ref: RunRef) -> LogStats:
    """Event count, bytes and form of the run's log (form None: no log at all).

    Reads only the end of a plain log (its last line holds the count).
    """
    try:
        opened = await log.open_log(ref)
    except LogNotFound:
        return LogStats(0, 0, None)
    try:
        if isinstance(opened, CompressedLog):
            return LogStats(opened.index.event_count, opened.size, "compressed")
        if opened.fd is None:
            return LogStats(await _stored_count(opened), opened.end, "plain")
        line = last_line(opened.fd, opened.end)
        count = _line_count(line[1]) if line else 0
        ended = line is not None and line[1].startswith(RUN_COMPLETED_PREFIX)
        size = line[0] + len(line[1]) if line else 0
        live = opened.spooled or not ended or log.writer_open(ref)
        return LogStats(count, size, "live" if live else "plain")
    finally:
        opened.close()


def _line_count(line: bytes) -> int:
    try:
        return decode_event(line).sequence
    except InvalidEvent as exc:
        raise StorageError(f"the last line of the log is not an event: {exc}") from exc


async def _stored_count(log: PlainLog) -> int:
    """Sequence of the last line of a stored plain log (reads its end only)."""
    if log.end == 0:
        return 0
    window = 64 * 1024
    while True:
        start = max(0, log.end - window)
        data = b"".join([b async for b in log.source.blocks(start, log.end)])
        end = data.rfind(b"\n")
        begin = data.rfind(b"\n", 0, end) + 1 if end >= 0 else -1
        if end >= 0 and (begin > 0 or start == 0):
            return _line_count(data[begin : end + 1])
        if start == 0:
            return 0
        window *= 4
