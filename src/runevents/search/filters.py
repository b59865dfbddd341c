"""The search index as the engine reads it: loading and caching n-gram filters.

Filters are immutable once stored (a rebuild by ``reindex`` writes the same
filters for the same log), so a parsed index is cached in memory by run,
least recently used dropped first, up to :data:`CACHE_BYTES`. A cached index
is checked against the log's frame index (event count and SHA-256) when a
frame it points at is read, so an index of another compaction is never
trusted. A missing or damaged index is remembered for :data:`MISSING_TTL`
seconds (then looked for again: ``reindex`` may have rebuilt it).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from runevents.eventlog import EventLog
from runevents.eventlog.locate import read_object
from runevents.eventlog.ngrams import NgramIndex
from runevents.exceptions import StorageError
from runevents.logstore import paths
from runevents.logstore.base import LogStore
from runevents.models import RunHead

#: bytes of parsed filters kept in memory
CACHE_BYTES = 64 * 1024 * 1024
#: seconds a missing or damaged index is not looked for again
MISSING_TTL = 30.0
#: concurrent reads of remote indexes
REMOTE_READS = 16
#: bytes per read of a local index file (a 1 MiB frame's filter is a few KiB)
READ_SIZE = 256 * 1024


class FilterCache:
    """Parsed search indexes by run id (thread-safe; bounded in bytes)."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, NgramIndex | float] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, run_id: str) -> NgramIndex | bool | None:
        """The index; None if known missing; False if unknown (to be loaded)."""
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is None:
                return False
            if isinstance(entry, float):
                if time.monotonic() - entry > MISSING_TTL:
                    del self._entries[run_id]
                    return False
                return None
            self._entries.move_to_end(run_id)
            return entry

    def get_many(self, run_ids: Sequence[str]) -> list[NgramIndex | bool | None]:
        """:meth:`get` of each (one lock for the batch; thousands per search)."""
        now = time.monotonic()
        out: list[NgramIndex | bool | None] = []
        append = out.append
        with self._lock:
            entries = self._entries
            get = entries.get
            touch = entries.move_to_end
            for run_id in run_ids:
                entry = get(run_id)
                if entry is None:
                    append(False)
                elif isinstance(entry, NgramIndex):
                    touch(run_id)
                    append(entry)
                elif now - entry > MISSING_TTL:
                    del entries[run_id]
                    append(False)
                else:
                    append(None)
        return out

    def put(self, run_id: str, index: NgramIndex | None) -> None:
        """Remember ``index`` (None: missing or damaged)."""
        with self._lock:
            self._drop(run_id)
            self._entries[run_id] = index if index is not None else time.monotonic()
            if index is not None:
                self._bytes += index.size
            while self._bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))

    def forget(self, run_id: str) -> None:
        """Drop what is known of ``run_id`` (its index did not match its log)."""
        with self._lock:
            self._drop(run_id)

    def _drop(self, run_id: str) -> None:
        old = self._entries.pop(run_id, None)
        if isinstance(old, NgramIndex):
            self._bytes -= old.size


CACHE = FilterCache()


def read_local(
    store: LogStore, runs: Sequence[RunHead], cache: FilterCache = CACHE
) -> list[NgramIndex | None]:
    """:func:`load_filters` for a local store, synchronously (call it in a worker thread).

    The cache first; then the files of the others, read and parsed here and
    cached. (Two threads reading halves were measured slower: each system call
    hands the GIL over and waits for it back.)
    """
    found = cache.get_many([run.id for run in runs])
    out: list[NgramIndex | None] = [e if isinstance(e, NgramIndex) else None for e in found]
    todo = [i for i, entry in enumerate(found) if entry is False]
    if not todo:
        return out
    root = _local_root(store)
    for i in todo:
        run = runs[i]
        index = _read_index(root + paths.ngram_index_key(run.workspace_id, run.id))
        cache.put(run.id, index)
        out[i] = index
    return out


def _read_index(path: str) -> NgramIndex | None:
    # Paths by string concatenation: pathlib costs more than the read for
    # thousands of small files (the keys are built and checked by paths).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        parts = []
        while part := os.read(fd, READ_SIZE):  # one read for any real index
            parts.append(part)
        return NgramIndex.from_bytes(parts[0] if len(parts) == 1 else b"".join(parts))
    except OSError:
        return None
    finally:
        os.close(fd)


def _local_root(store: LogStore) -> str:
    """The directory of a local store's keys, ending with a slash."""
    probe = store.local_path(paths.LOG_NAME)
    assert probe is not None
    return str(probe)[: -len(paths.LOG_NAME)]


async def load_filters(
    log: EventLog, runs: Sequence[RunHead], cache: FilterCache = CACHE
) -> list[NgramIndex | None]:
    """The search index of each run (None: missing or damaged), from the cache or the store.

    Local files are read and parsed in one worker thread for the whole batch;
    remote objects are fetched concurrently, a few at a time, then parsed in
    one worker thread.
    """
    if log.store.local_path(paths.LOG_NAME) is not None:
        return await asyncio.to_thread(read_local, log.store, runs, cache)
    found = await asyncio.to_thread(cache.get_many, [run.id for run in runs])
    todo = [i for i, entry in enumerate(found) if entry is False]
    out: list[NgramIndex | None] = [e if isinstance(e, NgramIndex) else None for e in found]
    if not todo:
        return out
    missing = [runs[i] for i in todo]
    limit = asyncio.Semaphore(REMOTE_READS)

    async def one(run: RunHead) -> bytes | None:
        key = paths.ngram_index_key(run.workspace_id, run.id)
        async with limit:
            try:
                return await read_object(log.store, key)
            except StorageError:
                return None

    blobs = await asyncio.gather(*(one(run) for run in missing))

    def parse() -> None:  # thousands of CRCs and parses: off the event loop
        for i, data in zip(todo, blobs, strict=True):
            index = NgramIndex.from_bytes(data) if data else None
            cache.put(runs[i].id, index)
            out[i] = index

    await asyncio.to_thread(parse)
    return out
