"""Where a run's log is, in which form, and opening it for reading.

Forms, in the order readers prefer them:

1. **live file** -- the file a writer appends to: in the local store itself
   (``file://``: the stored object *is* the live file, and stays there once
   sealed), or in the spool directory for a remote store;
2. **plain object** in a remote store (a sealed, uploaded log);
3. **compressed** (``events.ndjson.zst`` + frame index), local or remote.

A reader opens one form and keeps its descriptor: a file that is unlinked
while it is read (upload then spool removal, compaction then ``drop_plain``)
stays readable to the end.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from runevents.eventlog.compressed import FrameIndex
from runevents.eventlog.index import SparseIndex
from runevents.eventlog.reader import ByteSource, FileSource, StoreSource
from runevents.eventlog.types import RunRef
from runevents.events import UNIT_END
from runevents.exceptions import LogNotFound, StorageError
from runevents.logstore import paths
from runevents.logstore.base import LogStore

LOCK_SUFFIX = ".lock"


def object_url(store: LogStore, key: str) -> str:
    """``store.url`` joined with ``key`` (``s3://bucket/prefix/key``, ``memory://name/key``)."""
    base = store.url
    return base + key if base.endswith("/") else f"{base}/{key}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Storage keys and local paths of one run's log."""

    log: str
    index: str
    compressed: str
    compressed_index: str
    #: search index of the compressed log (never needed for a correct read)
    ngram_index: str
    #: the file a writer appends to (local store or spool)
    live: Path
    live_index: Path
    lock: Path
    #: whether ``live`` is in the spool (remote store) rather than the store itself
    spooled: bool


def keys_for(store: LogStore, spool_dir: Path, ref: RunRef) -> Keys:
    """The keys and paths of ``ref``'s log (validates the ids)."""
    ws, run = ref.workspace_id, ref.run_id
    log_key = paths.log_key(ws, run)
    index_key = paths.index_key(ws, run)
    local = store.local_path(log_key)
    live = local if local is not None else spool_dir / log_key
    return Keys(
        log=log_key,
        index=index_key,
        compressed=paths.compressed_key(ws, run),
        compressed_index=paths.compressed_index_key(ws, run),
        ngram_index=paths.ngram_index_key(ws, run),
        live=live,
        live_index=live.with_name(paths.INDEX_NAME),
        lock=live.with_name(paths.LOG_NAME + LOCK_SUFFIX),
        spooled=local is None,
    )


@dataclass(slots=True)
class PlainLog:
    """An open plain log (live file or stored object)."""

    source: ByteSource
    #: snapshot end (bytes readers may see now)
    end: int
    index: SparseIndex | None
    #: local descriptor (live file), None for a stored object
    fd: int | None = None
    path: Path | None = None
    #: a live file in the spool: the run has not been sealed
    spooled: bool = False

    def close(self) -> None:
        """Close the descriptor, if any."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


@dataclass(slots=True)
class CompressedLog:
    """An open compressed log."""

    source: ByteSource
    index: FrameIndex
    size: int
    fd: int | None = None

    def close(self) -> None:
        """Close the descriptor, if any."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


#: how far back from a live file's end a unit end is looked for (a torn write unit is
#: at most one flush: an ingest batch, or an executor's buffer retried after failures)
UNIT_SCAN_BYTES = 256 * 1024 * 1024
_UNIT_SCAN_BLOCK = 1024 * 1024


def whole_units_end(fd: int, size: int) -> int:
    """The end of the last whole write unit of a live file of ``size`` bytes.

    A crash can leave a write unit torn: some of its lines, whole or not, without
    the unit's end mark (``UNIT_END``). Recovery cuts them before the log is
    written again (contract 2.2), but until the run is taken -- the start-up
    repair, or the next batch -- a reader of the file must not serve them: their
    sequences are handed out again after the cut. Files that end at a unit end
    (nearly all) cost one 2-byte read; a legacy log (no marks: its first line
    has none) is read to its end, as it always was.
    """
    if size < len(UNIT_END) or os.pread(fd, len(UNIT_END), size - len(UNIT_END)) == UNIT_END:
        return size
    head = os.pread(fd, _UNIT_SCAN_BLOCK, 0)
    first_end = head.find(b"\n")
    if first_end < 0 or not head[: first_end + 1].endswith(UNIT_END):
        return size  # legacy (or an unmarked first line too long to judge): lines only
    # back from the end, a block at a time (overlapping by one byte: a mark may
    # straddle two blocks)
    stop = max(0, size - UNIT_SCAN_BYTES)
    high = size
    while high > stop:
        low = max(stop, high - _UNIT_SCAN_BLOCK)
        block = os.pread(fd, high - low, low)
        found = block.rfind(UNIT_END)
        if found >= 0:
            return low + found + len(UNIT_END)
        if low == stop:
            break
        high = low + len(UNIT_END) - 1
    return size


def open_live(keys: Keys) -> PlainLog | None:
    """The live file, opened, or None if it does not exist. The end is its current size."""
    try:
        fd = os.open(keys.live, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot open {keys.live}: {exc}") from exc
    index = read_index_file(keys.live_index)
    return PlainLog(
        source=FileSource(fd, str(keys.live)),
        end=os.fstat(fd).st_size,
        index=index,
        fd=fd,
        path=keys.live,
        spooled=keys.spooled,
    )


class IndexCache:
    """Parsed index sidecars, least recently used dropped first.

    Keyed by what identifies the bytes (a local file's size and mtime; a sealed,
    immutable remote log's size), so a changed sidecar is simply a new entry.
    Pagination and reconnects seek the same log again and again: they skip the
    read and the parse. Entries are shared: readers never mutate an index.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[object, ...], SparseIndex] = OrderedDict()
        # event loops in several threads (tests, benchmarks) may share the module
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> SparseIndex | None:
        """The cached index for ``key`` (None if absent)."""
        with self._lock:
            index = self._entries.get(key)
            if index is not None:
                self._entries.move_to_end(key)
            return index

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()

    def put(self, key: tuple[object, ...], index: SparseIndex) -> None:
        """Remember ``index`` under ``key``."""
        with self._lock:
            self._entries[key] = index
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


INDEX_CACHE = IndexCache()


def read_index_file(path: Path) -> SparseIndex | None:
    """A sparse index sidecar from a local file (None if missing or unreadable)."""
    try:
        st = path.stat()
        key: tuple[object, ...] = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        index = INDEX_CACHE.get(key)
        if index is None:
            index = SparseIndex.from_bytes(path.read_bytes())
            if index is not None:
                INDEX_CACHE.put(key, index)
        return index
    except OSError:
        return None


async def read_object(store: LogStore, key: str) -> bytes | None:
    """A whole (small) stored object, or None if it does not exist."""
    try:
        return b"".join([block async for block in store.read(key)])
    except LogNotFound:
        return None


async def open_stored_plain(store: LogStore, keys: Keys) -> PlainLog | None:
    """A sealed plain log in a remote store, or None."""
    try:
        info = await store.stat(keys.log)
    except LogNotFound:
        return None
    # a sealed remote log never changes: its index is cached by the log's size
    cache_key: tuple[object, ...] = (store.url, keys.log, info.size)
    index = INDEX_CACHE.get(cache_key)
    if index is None:
        data = await read_object(store, keys.index)
        index = SparseIndex.from_bytes(data) if data else None
        if index is not None:
            INDEX_CACHE.put(cache_key, index)
    return PlainLog(source=StoreSource(store, keys.log), end=info.size, index=index)


async def open_compressed(store: LogStore, keys: Keys) -> CompressedLog | None:
    """The compressed form, or None if it is not (completely) there."""
    local = store.local_path(keys.compressed)
    if local is not None:
        try:
            fd = os.open(local, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot open {local}: {exc}") from exc
        try:
            index_path = store.local_path(keys.compressed_index)
            assert index_path is not None
            index = FrameIndex.from_bytes(index_path.read_bytes())
        except (OSError, StorageError):
            os.close(fd)
            raise StorageError(f"the compressed log {local} has no usable index") from None
        size = os.fstat(fd).st_size
        if size != index.compressed_bytes:
            os.close(fd)
            raise StorageError(f"the compressed log {local} does not match its index")
        return CompressedLog(FileSource(fd, str(local)), index, size, fd)
    try:
        info = await store.stat(keys.compressed)
    except LogNotFound:
        return None
    data = await read_object(store, keys.compressed_index)
    if data is None:
        raise StorageError(f"the compressed log {keys.compressed} has no index")
    index = FrameIndex.from_bytes(data)
    if info.size != index.compressed_bytes:
        raise StorageError(f"the compressed log {keys.compressed} does not match its index")
    return CompressedLog(StoreSource(store, keys.compressed), index, info.size)


async def open_any(store: LogStore, keys: Keys) -> PlainLog | CompressedLog:
    """The log in the first form found (live file, stored plain, compressed); LogNotFound."""
    # Twice: a form can disappear between two looks (sealed and uploaded, then
    # the spool removed; compacted, then the plain removed), never all at once.
    for _ in range(2):
        live = open_live(keys)
        if live is not None:
            return live
        if keys.spooled:
            plain = await open_stored_plain(store, keys)
            if plain is not None:
                return plain
        compressed = await open_compressed(store, keys)
        if compressed is not None:
            return compressed
    raise LogNotFound(f"no event log at {keys.log}")
