"""The event log engine: one append-only NDJSON log per run on top of a :class:`LogStore`.

:class:`EventLog` is the facade the manager and the API use. Its parts, one
concept per module: ``opening`` (a writer's directories, lock and recovery),
``writer`` (the single writer; ``group_commit`` makes its buffer durable,
``write_failure`` says what happens when that fails), ``recovery`` (torn tails
after a crash), ``index`` (the sparse sequence -> offset sidecar), ``reader``
(streaming chunks of whole lines), ``tail`` (live fan-out), ``compressed`` /
``compaction`` (zstd frames), ``locate`` (which form of a log to read).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from runevents.eventlog import compaction, opening, sealing
from runevents.eventlog.compressed import FRAME_BYTES, LEVEL, StepHook, read_compressed
from runevents.eventlog.files import DEFAULT_OPS, FileOps, WriterLock, last_line
from runevents.eventlog.index import EVERY_BYTES, EVERY_EVENTS, build_index
from runevents.eventlog.locate import (
    CompressedLog,
    Keys,
    PlainLog,
    keys_for,
    object_url,
    open_any,
    whole_units_end,
)
from runevents.eventlog.reader import Cursor, StaleIndex, iter_lines
from runevents.eventlog.tail import Tail, read_behind, take
from runevents.eventlog.types import (
    Chunk,
    CompactInfo,
    LogStats,
    RunRef,
    SealInfo,
)
from runevents.eventlog.writer import RunWriter, WriterConfig
from runevents.events import RUN_COMPLETED_PREFIX
from runevents.exceptions import StorageError, WriterBusy
from runevents.logstore.base import LogStore
from runevents.notify import Notifier

__all__ = [
    "Chunk",
    "CompactInfo",
    "EventLog",
    "LogStats",
    "RunRef",
    "RunWriter",
    "SealInfo",
    "WriterConfig",
    "object_url",
]

#: bytes of recent chunks a live tail keeps for caught-up subscribers
TAIL_BYTES = 4 * 1024 * 1024
TAIL_CHUNKS = 4096


class EventLog:
    """Every run's event log: writers, readers, live tails, sealing, compaction, retention."""

    def __init__(
        self,
        store: LogStore,
        *,
        spool_dir: Path,
        flush_events: int = 512,
        flush_interval_ms: int = 50,
        live_flush_interval_ms: int = 20,
        fsync: Literal["never", "flush", "batch"] = "never",
        poll_interval_ms: int = 250,
        notifier: Notifier | None = None,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        max_event_bytes: int | None = None,
        tail_bytes: int = TAIL_BYTES,
        index_every_bytes: int = EVERY_BYTES,
        index_every_events: int = EVERY_EVENTS,
        frame_bytes: int = FRAME_BYTES,
        compression_level: int = LEVEL,
        file_ops: FileOps = DEFAULT_OPS,
    ) -> None:
        self.store = store
        self.spool_dir = Path(spool_dir)
        self.notifier = notifier
        self.poll_interval = poll_interval_ms / 1000
        self.config = WriterConfig(
            flush_events=flush_events,
            flush_interval_ms=flush_interval_ms,
            live_flush_interval_ms=live_flush_interval_ms,
            fsync=fsync,
            max_buffer_bytes=max_buffer_bytes,
            max_event_bytes=max_event_bytes,
            index_every_bytes=index_every_bytes,
            index_every_events=index_every_events,
        )
        self.tail_bytes = tail_bytes
        self.frame_bytes = frame_bytes
        self.compression_level = compression_level
        self.file_ops = file_ops
        #: test seam for crash tests of compaction (called with each step's name)
        self.step_hook: StepHook | None = None
        #: build the search index (n-gram filters per frame) when compacting
        self.search_index = True
        #: several machines (``livetier.LiveTier.pull``): brings a run's committed bytes
        #: from the shared live tier into the local file before it is read here
        self.mirror: Callable[[RunRef], Awaitable[None]] | None = None
        self._writers: dict[str, RunWriter] = {}
        self._tails: dict[str, Tail] = {}
        self._keys: dict[RunRef, Keys] = {}

    def keys(self, ref: RunRef) -> Keys:
        """Storage keys and local paths of ``ref``'s log."""
        keys = self._keys.get(ref)
        if keys is None:
            # building them validates ids and makes paths: worth remembering, boundedly
            if len(self._keys) >= 4096:
                self._keys.clear()
            keys = self._keys[ref] = keys_for(self.store, self.spool_dir, ref)
        return keys

    def events_path(self, ref: RunRef) -> str:
        """Where the log lives: a local absolute path (file://) or the object's URL."""
        keys = self.keys(ref)
        return str(keys.live) if not keys.spooled else object_url(self.store, keys.log)

    # ------------------------------------------------------------------ writing
    async def open_writer(
        self,
        ref: RunRef,
        *,
        source: str = "worker",
        atomic: bool = False,
        checkpoint: tuple[int, int] | None = None,
        before_recovery: Callable[[], Awaitable[None]] | None = None,
        mark_cuts: bool = False,
    ) -> RunWriter:
        """The run's single writer. WriterBusy if this or another process holds it.

        Recovers the log first (contract 2.2: everything after ``checkpoint``,
        a ``(sequence, offset)`` known durable, is checked; what is cut is in
        ``writer.recovered``; with ``mark_cuts`` -- the manager always asks -- the
        cut is marked by a ``log.recovered`` line written in the same step).
        ``before_recovery`` is awaited once the file lock is held and before the
        log is touched: the manager takes the writer lease
        there, so recovery only ever runs for the owner. ``atomic`` picks the
        failure policy (see ``writer``). For a log that already ended
        (run.completed, or sealed/compacted away from the live file) the writer
        opens but ``prepare`` raises RunEnded. The steps are in ``opening.py``.
        """
        keys = self.keys(ref)
        if keys.log in self._writers:
            raise WriterBusy(f"this process already holds the writer of run {ref.run_id}")
        # the writer's ties to this facade: publish to the tails, forget it when closed
        options: dict[str, Any] = {
            "source": source,
            "atomic": atomic,
            "path": keys.live,
            "index_path": keys.live_index,
            "config": self.config,
            "ops": self.file_ops,
            "on_visible": self._on_visible,
            "on_close": self._on_writer_closed,
            "watched": self._watched,
        }
        writer = await opening.open_writer(
            self, ref, keys, options, checkpoint, before_recovery, mark_cuts
        )
        self._writers[keys.log] = writer
        return writer

    def _on_visible(
        self, writer: RunWriter, start: int, data: bytearray, first: int, last: int
    ) -> None:
        tail = self._tails.get(self.keys(writer.ref).log)
        if tail is not None:
            tail.publish(start, data, first, last)
        if self.notifier is not None:
            self.notifier.notify(writer.ref.run_id)

    def _watched(self, writer: RunWriter) -> bool:
        return self.keys(writer.ref).log in self._tails

    def _on_writer_closed(self, writer: RunWriter) -> None:
        key = self.keys(writer.ref).log
        if self._writers.get(key) is writer:
            del self._writers[key]

    # ------------------------------------------------------------------ reading
    async def read(
        self, ref: RunRef, after_sequence: int = 0, limit: int | None = None
    ) -> AsyncIterator[Chunk]:
        """The events after ``after_sequence`` that the log holds now, in chunks.

        Constant memory; plain, live or compressed. LogNotFound if there is no log.
        """
        log = await self.open_log(ref)
        try:
            if isinstance(log, CompressedLog):
                async for chunk in read_compressed(log.source, log.index, after_sequence, limit):
                    yield chunk
            else:
                async for chunk in self._read_plain(ref, log, after_sequence, limit):
                    yield chunk
        finally:
            log.close()

    async def open_log(self, ref: RunRef) -> PlainLog | CompressedLog:
        """The log in the form readers use now (LogNotFound); the caller closes it."""
        keys = self.keys(ref)
        if self.mirror is not None and keys.log not in self._writers:
            await self.mirror(ref)
        log = await open_any(self.store, keys)
        writer = self._writers.get(keys.log)
        if isinstance(log, PlainLog) and log.fd is not None:
            if writer is not None:
                # this process writes it: read only what is visible (fsynced if the mode says so)
                log.end = min(log.end, writer.visible_offset)
            else:
                # nobody here writes it: never the lines of a torn unit (a crash), which
                # recovery cuts and numbers again
                log.end = whole_units_end(log.fd, log.end)
        return log

    async def _read_plain(
        self,
        ref: RunRef,
        log: PlainLog,
        after_sequence: int,
        limit: int | None,
        cursor: Cursor | None = None,
    ) -> AsyncIterator[Chunk]:
        if log.index is None and log.end > 4 * self.config.index_every_bytes:
            await self._repair_index(ref, log)  # a large ended log lost its index
        # With the index (checked where it is used); if it is stale, once more with a
        # rebuilt one; failing that, a plain scan from the start.
        for attempt in range(3):
            start_sequence, start_offset = 1, 0
            if log.index is not None and attempt < 2:
                start_sequence, start_offset = log.index.lookup(after_sequence + 1, log.end)
            try:
                async for chunk in iter_lines(
                    log.source,
                    start_sequence=start_sequence,
                    start_offset=start_offset,
                    end_offset=log.end,
                    after_sequence=after_sequence,
                    limit=limit,
                    verify=start_offset > 0,
                    cursor=cursor,
                ):
                    yield chunk
                return
            except StaleIndex:
                # raised before anything was yielded (the first line is checked)
                log.index = None
                await self._repair_index(ref, log)

    async def _repair_index(self, ref: RunRef, log: PlainLog) -> None:
        """Rebuild the sidecar of an ended local log whose index is missing or stale."""
        keys = self.keys(ref)
        if keys.log in self._writers or log.fd is None:
            return  # a writer here maintains it
        fd, end = log.fd, log.end
        tail = last_line(fd, end)
        if tail is None or not tail[1].startswith(RUN_COMPLETED_PREFIX):
            return  # live in another process: its writer rebuilt the index when it opened

        def blocks() -> Iterator[bytes]:
            position = 0
            while position < end:
                data = os.pread(fd, min(1 << 20, end - position), position)
                if not data:
                    return
                position += len(data)
                yield data

        index, _ = await asyncio.to_thread(build_index, blocks(), self.config.index_every_bytes)
        log.index = index
        if keys.spooled:
            return  # a sealed spool file is about to be uploaded with a fresh index
        with contextlib.suppress(StorageError):
            await self.store.write(keys.index, index.to_bytes())

    async def follow(self, ref: RunRef, after_sequence: int = 0) -> AsyncIterator[Chunk]:
        """Replay after ``after_sequence``, then live; ends after the chunk holding run.completed.

        Seamless: the replay and the live part are one cursor over one log,
        so nothing is missed or repeated however the appends interleave.
        """
        log = await self.open_log(ref)
        try:
            if isinstance(log, CompressedLog) or log.fd is None:
                # sealed elsewhere (compressed or uploaded): the run has ended
                async for chunk in self.read(ref, after_sequence):
                    yield chunk
                return
            cursor = Cursor(0, 0)
            async for chunk in self._read_plain(ref, log, after_sequence, None, cursor):
                yield chunk
                if chunk.ends_run:
                    return
            if cursor.offset:
                line = last_line(log.fd, cursor.offset)
                if line is not None and line[1].startswith(RUN_COMPLETED_PREFIX):
                    return  # the position is already past run.completed
            tail = self._acquire_tail(ref, log, cursor)
            try:
                # The live loop is inline (not a nested generator): it runs for every
                # subscriber on every flush, and each generator layer costs.
                while True:
                    generation = tail.generation  # noted before looking (close-and-replace)
                    if cursor.offset < tail.ring_start:
                        # fell behind the ring: read the file from our own cursor
                        before = cursor.offset
                        async for chunk in read_behind(tail, cursor, after_sequence):
                            yield chunk
                            if chunk.ends_run:
                                return
                        if cursor.offset == before:
                            raise StorageError(f"the log of run {ref.run_id} shrank under a reader")
                        continue
                    parts = take(tail, cursor, after_sequence)
                    for part in parts:
                        yield part
                        if part.ends_run:
                            return
                    if cursor.offset < tail.end_offset:
                        continue  # more arrived while the consumer took those
                    if tail.ended:
                        return
                    if cursor.offset > tail.end_offset and tail.refill():
                        continue  # we replayed further than the tail had read
                    # nothing awaited since ``generation`` was noted: no growth is missed
                    await tail.wait(generation)
            finally:
                await self._release_tail(tail)
        finally:
            log.close()

    def _acquire_tail(self, ref: RunRef, log: PlainLog, cursor: Cursor) -> Tail:
        keys = self.keys(ref)
        tail = self._tails.get(keys.log)
        if tail is None:
            assert log.fd is not None
            writers = self._writers

            def visible_end() -> int:
                writer = writers.get(keys.log)
                if writer is not None:
                    return writer.visible_offset
                return whole_units_end(tail_fd, os.fstat(tail_fd).st_size)

            # its own descriptor (a dup): valid as long as the tail lives
            tail_fd = os.dup(log.fd)
            tail = Tail(
                run_id=ref.run_id,
                fd=tail_fd,
                name=str(log.path),
                start=Cursor(cursor.sequence, cursor.offset),
                visible_end=visible_end,
                max_bytes=self.tail_bytes,
                max_chunks=TAIL_CHUNKS,
                notifier=self.notifier,
                poll_interval=self.poll_interval,
                pull=functools.partial(self.mirror, ref) if self.mirror is not None else None,
            )
            self._tails[keys.log] = tail
            tail.start()
        tail.subscribers += 1
        return tail

    async def _release_tail(self, tail: Tail) -> None:
        tail.subscribers -= 1
        if tail.subscribers == 0:
            for key, value in list(self._tails.items()):
                if value is tail:
                    del self._tails[key]
            await tail.stop()

    # ------------------------------------------------------------------ sealing, stats
    async def seal(
        self,
        ref: RunRef,
        lock: WriterLock | None = None,
        checkpoint: tuple[int, int] | None = None,
    ) -> SealInfo:
        """Make an ended log final: fsync, full index, and for a remote store upload it
        (index, then log) and remove the spool files. Idempotent.

        ``lock``: the run's file lock, handed over by its closing writer
        (``close(keep_lock=True)``), so nobody can take the log in between.
        """
        return await sealing.seal(self, ref, lock, checkpoint)

    async def stats(self, ref: RunRef) -> LogStats:
        """Event count, bytes and form of the run's log (form None: no log)."""
        return await sealing.stats(self, ref)

    # ------------------------------------------------------------------ maintenance
    async def compact(self, ref: RunRef) -> CompactInfo:
        """Write and verify the compressed form of an ended log; the plain log stays."""
        return await compaction.compact(self, ref)

    async def drop_plain(self, ref: RunRef) -> None:
        """Delete the plain log and its index once a complete compressed form exists."""
        await compaction.drop_plain(self, ref)

    async def delete(self, ref: RunRef) -> None:
        """Remove every object of the run's log, in every form (retention). Idempotent."""
        await compaction.delete(self, ref)

    async def index_for_search(self, ref: RunRef) -> bool:
        """(Re)build the search index of a compressed log (reindex); False if not compressed."""
        return await compaction.index_for_search(self, ref)

    def scan(self) -> AsyncIterator[RunRef]:
        """Every run log in storage and spool; configuration_id comes from the first line."""
        return compaction.scan(self)

    def writer_open(self, ref: RunRef) -> bool:
        """Whether this process holds the run's writer."""
        return self.keys(ref).log in self._writers
