"""Log maintenance: compaction into zstd frames, dropping the plain form, deletion, scanning.

Compaction is crash-safe by ordering (a kill -9 at any step leaves a readable
log, and readers prefer the plain form while it exists):

1. ``written``: frames go to a temp file (beside the target for a local store,
   in the spool for a remote one), cut at line ends, hashed and counted;
2. ``synced``: the temp file is fsynced;
3. ``verified``: every frame is decompressed again and checked against the
   event count and SHA-256 of the plain log;
4. ``index_stored``: the frame index is stored (renamed into place / uploaded);
5. ``stored``: the frames are stored -- from here the compressed form exists;
6. the search index (n-gram filters per frame, built from the same frames as
   they were compressed) is stored, best effort: a log without it is scanned.

The caller (the manager) then points the run row at it, and only then calls
:func:`drop_plain`, which deletes the plain log (``plain_deleted``) and then
its index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from runevents.eventlog.compressed import (
    FrameIndex,
    FrameWriter,
    decompress_frame,
    fsync_path,
    verify,
)
from runevents.eventlog.files import WriterLock
from runevents.eventlog.locate import (
    CompressedLog,
    Keys,
    PlainLog,
    object_url,
    open_any,
    open_compressed,
)
from runevents.eventlog.reader import FileSource
from runevents.eventlog.types import CompactInfo, RunRef, ends_with_completed
from runevents.events import decode_event
from runevents.exceptions import Conflict, InvalidEvent, LogNotFound, StorageError, WriterBusy
from runevents.logstore import paths
from runevents.logstore.local import TEMP_PREFIX, fsync_dir

if TYPE_CHECKING:
    from runevents.eventlog import EventLog
    from runevents.eventlog.ngrams import IndexBuilder

_log = logging.getLogger(__name__)


def _step(log: EventLog, name: str) -> None:
    if log.step_hook is not None:
        log.step_hook(name)


@contextlib.contextmanager
def _run_lock(keys: Keys, ref: RunRef) -> Iterator[None]:
    """Hold the run's writer lock (so no writer, compaction or deletion runs meanwhile).

    For a remote store the lock lives in the spool, whose directory a sealed run
    no longer has: it is made for the lock and removed again.
    """
    directory = keys.lock.parent
    if not directory.exists():
        if not keys.spooled:
            yield  # no directory, no log: the caller finds nothing to do
            return
        directory.mkdir(parents=True, exist_ok=True)
    lock = WriterLock.acquire(keys.lock, f"run {ref.run_id}")
    try:
        yield
    finally:
        lock.release(unlink=True)
        if keys.spooled:
            for empty in (directory, directory.parent):
                with contextlib.suppress(OSError):
                    empty.rmdir()


async def compact(log: EventLog, ref: RunRef) -> CompactInfo:
    """Write and verify the compressed form of an ended plain log (see the module doc)."""
    keys = log.keys(ref)
    if log.writer_open(ref):
        raise WriterBusy(f"the writer of run {ref.run_id} is open: only ended logs are compacted")
    if log.mirror is not None:
        # several machines: a local copy of the live log is dropped once the run is sealed
        await log.mirror(ref)
    with _run_lock(keys, ref):
        existing = await open_compressed(log.store, keys)
        if existing is not None:
            existing.close()
            if log.search_index and not await _has_object(log, keys.ngram_index):
                await index_for_search(log, ref)  # compacted before the index existed, or lost
            return await _existing_info(log, keys, existing)
        plain = await open_any(log.store, keys)
        if not isinstance(plain, PlainLog):
            plain.close()
            raise LogNotFound(f"run {ref.run_id} has no plain log to compact")
        try:
            if plain.spooled:
                raise Conflict(f"the log of run {ref.run_id} is live (not sealed yet)")
            return await _compact_plain(log, keys, plain)
        finally:
            plain.close()


async def _existing_info(log: EventLog, keys: Keys, existing: CompressedLog) -> CompactInfo:
    source_bytes = 0
    with contextlib.suppress(LogNotFound):
        source_bytes = (await log.store.stat(keys.log)).size
    local = log.store.local_path(keys.compressed)
    return CompactInfo(
        events_path=str(local) if local is not None else object_url(log.store, keys.compressed),
        event_count=existing.index.event_count,
        bytes=existing.size,
        source_bytes=source_bytes or existing.index.raw_bytes,
        frames=existing.index.frames,
    )


async def _compact_plain(log: EventLog, keys: Keys, plain: PlainLog) -> CompactInfo:
    local_target = log.store.local_path(keys.compressed)
    work_dir = _work_dir(log, keys)
    await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    # temp files of a compaction killed earlier (we hold the run's lock: none is in use)
    for stale in await asyncio.to_thread(_temp_files, log, keys):
        with contextlib.suppress(OSError):
            stale.unlink()
    token = secrets.token_hex(6)
    temp = work_dir / f"{TEMP_PREFIX}{paths.COMPRESSED_NAME}.{token}"
    temp_index = work_dir / f"{TEMP_PREFIX}{paths.COMPRESSED_INDEX_NAME}.{token}"
    try:
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            ngrams = _ngram_builder() if log.search_index else None
            frames = FrameWriter(
                fd,
                frame_bytes=log.frame_bytes,
                level=log.compression_level,
                frame_hook=ngrams.add_frame if ngrams is not None else None,
            )
            tail = b""
            async for block in plain.source.blocks(0, plain.end):
                await frames.feed(block)
                # the last line may have begun in an earlier block: keep it whole
                tail = block if b"\n" in block[:-1] else tail + block
            if plain.end and not ends_with_completed(tail):
                raise Conflict("the log has not ended (no run.completed): it cannot be compacted")
            index = await frames.finish()
            _step(log, "written")
            await asyncio.to_thread(os.fsync, fd)
            _step(log, "synced")
            await verify(FileSource(fd, str(temp)), index, index)
            # (the expected values were taken from the plain bytes as they were fed)
            _step(log, "verified")
        finally:
            os.close(fd)
        await asyncio.to_thread(temp_index.write_bytes, index.to_bytes())
        await asyncio.to_thread(fsync_path, temp_index)
        if local_target is not None:
            index_target = log.store.local_path(keys.compressed_index)
            assert index_target is not None
            os.replace(temp_index, index_target)
            _step(log, "index_stored")
            os.replace(temp, local_target)
            await asyncio.to_thread(fsync_dir, local_target.parent)
            _step(log, "stored")
            events_path = str(local_target)
        else:
            await log.store.write(keys.compressed_index, temp_index)
            _step(log, "index_stored")
            await log.store.write(keys.compressed, temp)
            _step(log, "stored")
            events_path = object_url(log.store, keys.compressed)
    except OSError as exc:
        raise StorageError(f"cannot compact {keys.log}: {exc}") from exc
    finally:
        for path in (temp, temp_index):
            with contextlib.suppress(OSError):
                path.unlink()
        if local_target is None:
            with contextlib.suppress(OSError):
                work_dir.rmdir()
    if ngrams is not None:
        await _store_ngram_index(log, keys, ngrams.to_bytes(index.event_count, index.digest))
    return CompactInfo(
        events_path=events_path,
        event_count=index.event_count,
        bytes=index.compressed_bytes,
        source_bytes=plain.end,
        frames=index.frames,
    )


async def drop_plain(log: EventLog, ref: RunRef) -> None:
    """Delete the plain log (then its index) if a complete compressed form exists. Idempotent."""
    keys = log.keys(ref)
    compressed = await open_compressed(log.store, keys)
    if compressed is None:
        raise StorageError(
            f"run {ref.run_id} has no complete compressed log: the plain log is kept"
        )
    compressed.close()
    if log.writer_open(ref):
        raise WriterBusy(f"the writer of run {ref.run_id} is open")
    await log.store.delete(keys.log)
    _step(log, "plain_deleted")
    await log.store.delete(keys.index)


async def delete(log: EventLog, ref: RunRef) -> None:
    """Remove every object of the run's log (all forms, sidecars, spool files)."""
    keys = log.keys(ref)
    if log.writer_open(ref):
        raise WriterBusy(f"the writer of run {ref.run_id} is open: a live log is never deleted")
    with _run_lock(keys, ref):
        # temp files of a killed compaction first (listings do not show them)
        for path in await asyncio.to_thread(_temp_files, log, keys):
            with contextlib.suppress(OSError):
                path.unlink()
        prefix = paths.run_prefix(ref.workspace_id, ref.run_id)
        stored = [info.key async for info in log.store.list(prefix)]
        for key in (
            keys.log,
            keys.index,
            keys.compressed,
            keys.compressed_index,
            keys.ngram_index,
            *stored,
        ):
            await log.store.delete(key)
        if keys.spooled:
            for path in await asyncio.to_thread(list, keys.live.parent.glob("events.ndjson*")):
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                _work_dir(log, keys).rmdir()


# ---------------------------------------------------------------------------
# the search index (eventlog/ngrams.py)


def _ngram_builder() -> IndexBuilder:
    # imported here: numpy is only needed where logs are compacted or searched
    from runevents.eventlog.ngrams import IndexBuilder

    return IndexBuilder()


async def _has_object(log: EventLog, key: str) -> bool:
    try:
        await log.store.stat(key)
    except LogNotFound:
        return False
    return True


async def _store_ngram_index(log: EventLog, keys: Keys, data: bytes) -> None:
    """Store the search index; a failure is logged, never fatal (searches then scan)."""
    try:
        await log.store.write(keys.ngram_index, data)
    except (OSError, StorageError) as exc:
        _log.warning("search index of %s not stored (searches scan it): %s", keys.log, exc)
    else:
        _step(log, "ngram_index_stored")


async def index_for_search(log: EventLog, ref: RunRef) -> bool:
    """(Re)build the search index of a compressed log from its frames (reindex).

    False if the run has no compressed log. One frame in memory at a time;
    decompressing and indexing run in a worker thread.
    """
    keys = log.keys(ref)
    compressed = await open_compressed(log.store, keys)
    if compressed is None:
        return False
    try:
        builder = _ngram_builder()
        frames = compressed.index
        for i in range(frames.frames):
            raw = await decompress_frame(compressed.source, frames, i)
            await asyncio.to_thread(builder.add_frame, frames.first_sequences[i], raw)
    finally:
        compressed.close()
    await _store_ngram_index(log, keys, builder.to_bytes(frames.event_count, frames.digest))
    return True


def _work_dir(log: EventLog, keys: Keys) -> Path:
    """Where compaction writes its temp files: beside the log, or in the spool."""
    local_target = log.store.local_path(keys.compressed)
    if local_target is not None:
        return local_target.parent
    return log.spool_dir / "tmp" / keys.log.rsplit("/", 3)[0].replace("/", "+")


def _temp_files(log: EventLog, keys: Keys) -> list[Path]:
    """Temp files a killed compaction left (only ever ours: the run's lock is held)."""
    directory = _work_dir(log, keys)
    if not directory.is_dir():
        return []
    return list(directory.glob(f"{TEMP_PREFIX}{paths.LOG_NAME}*"))


async def scan(log: EventLog) -> AsyncIterator[RunRef]:
    """Every run with a log in storage or in the spool (reindex).

    ``configuration_id`` is read from the log's first line; an empty log is skipped.
    """
    seen: set[tuple[str, str]] = set()
    names = {paths.LOG_NAME, paths.COMPRESSED_NAME}
    found: list[tuple[str, str]] = []
    async for info in log.store.list("workspaces/"):
        parsed = paths.parse_log_key(info.key)
        if parsed is not None and parsed[2] in names and parsed[:2] not in seen:
            seen.add(parsed[:2])
            found.append(parsed[:2])
    spool_root = log.spool_dir / "workspaces"
    if log.store.local_path(paths.LOG_NAME) is None:  # remote store: live logs are spooled
        for path in await asyncio.to_thread(_spooled_logs, spool_root):
            parsed = paths.parse_log_key(path.relative_to(log.spool_dir).as_posix())
            if parsed is not None and parsed[:2] not in seen:
                seen.add(parsed[:2])
                found.append(parsed[:2])
    for workspace_id, run_id in sorted(found):
        probe = RunRef(workspace_id, "_", run_id)
        try:
            first = [chunk async for chunk in log.read(probe, limit=1)]
        except LogNotFound:
            continue  # deleted meanwhile
        except StorageError:
            # retention (maybe on another machine) deleted it between the listing and
            # the read, halfway through its objects ("compressed log has no index")
            if not await _any_form_left(log, probe):
                continue
            raise
        if not first:
            continue
        try:
            event = decode_event(first[0].data)
        except InvalidEvent:
            continue
        yield RunRef(workspace_id, event.configuration_id, run_id)


async def _any_form_left(log: EventLog, ref: RunRef) -> bool:
    """Whether the plain or the compressed log of ``ref`` is still in storage."""
    keys = log.keys(ref)
    for key in (keys.log, keys.compressed):
        if await _has_object(log, key):
            return True
    return False


def _spooled_logs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(root.glob(f"*/runs/*/logs/{paths.LOG_NAME}"))


__all__ = ["FrameIndex", "compact", "delete", "drop_plain", "index_for_search", "scan"]
