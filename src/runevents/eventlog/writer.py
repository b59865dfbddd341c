"""The single writer of one run's log.

``prepare`` turns drafts into envelopes (sequence, event_id, created_at, ids)
without writing; ``commit`` encodes them into the append buffer; the buffer is
written with one ``pwrite`` when the flush policy says so (``flush_events``
events, ``flush_interval_ms`` after the first buffered event, 1 MiB of
bytes, a ``run.completed``, or every commit in ``fsync="batch"`` mode). Only
then are the bytes *visible*: published to the in-process tail and notified.
With ``fsync="flush"``/``"batch"`` they are fsynced before they are visible.

Write failures never tear the file and never stop the run: a partial write
is cut back to the last good offset, the bytes stay buffered (up to
``max_buffer_bytes``) and are retried with backoff; ``degraded`` and
``write_errors`` say so. When the buffer is full, new drafts are dropped in
``prepare`` -- before they get a sequence, so sequences stay gap-free -- and
counted in ``dropped_events`` (a final ``run.completed`` is never dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runevents import metrics
from runevents.eventlog.files import DEFAULT_OPS, FileOps, WriterLock
from runevents.eventlog.index import (
    EVERY_BYTES,
    EVERY_EVENTS,
    RECORD,
    SparseIndex,
    batch_records,
)
from runevents.eventlog.types import RunRef
from runevents.events import (
    RUN_COMPLETED,
    Event,
    EventDraft,
    encode_batch,
    normalize_created_at,
    utc_timestamp,
)
from runevents.exceptions import (
    InvalidEvent,
    InvalidInput,
    PayloadTooLarge,
    RunEnded,
    StorageError,
)
from runevents.ids import new_ulid

log = logging.getLogger(__name__)

FsyncMode = Literal["never", "flush", "batch"]
#: flush once this many bytes are buffered, whatever the event count
FLUSH_BYTES = 1024 * 1024
#: retry backoff after a failed write (seconds)
RETRY_MIN, RETRY_MAX = 0.05, 2.0

#: called with (writer, start offset, bytes, first sequence, last sequence) when bytes become
#: visible; the data object must not be kept (it is the writer's buffer)
VisibleHook = Callable[["RunWriter", int, bytearray, int, int], None]


def _refuse(draft: EventDraft, line: int, is_last: bool) -> None:
    """Raise the InvalidEvent that explains why ``draft`` cannot be appended."""
    if not isinstance(draft.type, str) or not draft.type:
        raise InvalidEvent("type must be a non-empty string", line=line)
    if not isinstance(draft.payload, dict):
        raise InvalidEvent("payload must be an object", line=line)
    raise InvalidEvent("run.completed must be the last event", line=line)


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """The write-path knobs (see ``Settings``)."""

    flush_events: int = 512
    flush_interval_ms: int = 50
    #: the interval while this process has live subscribers on the run (latency)
    live_flush_interval_ms: int = 20
    fsync: FsyncMode = "never"
    #: events not yet written are kept up to this many bytes while writes fail
    max_buffer_bytes: int = 64 * 1024 * 1024
    #: one encoded event at most (None: no limit)
    max_event_bytes: int | None = None
    index_every_bytes: int = EVERY_BYTES
    index_every_events: int = EVERY_EVENTS


class RunWriter:
    """Appends events to one run's log. Obtain one from ``EventLog.open_writer``."""

    def __init__(
        self,
        ref: RunRef,
        *,
        source: str,
        path: Path,
        index_path: Path,
        fd: int | None,
        index_fd: int | None,
        index: SparseIndex,
        lock: WriterLock,
        offset: int,
        last_sequence: int,
        ended: bool,
        config: WriterConfig,
        ops: FileOps = DEFAULT_OPS,
        on_visible: VisibleHook | None = None,
        on_close: Callable[[RunWriter], None] | None = None,
        watched: Callable[[RunWriter], bool] | None = None,
    ) -> None:
        self.ref = ref
        self.source = source
        self.path = path
        self.config = config
        #: sequence of the last committed event (buffered or written)
        self.last_sequence = last_sequence
        #: size of the log on disk (bytes written so far)
        self.bytes_written = offset
        #: set once a write failed (stays set: events may have been lost or delayed)
        self.degraded = False
        #: writes that failed (each retry counts)
        self.write_errors = 0
        #: drafts dropped by prepare because the buffer was full
        self.dropped_events = 0
        #: run.completed has been committed: nothing more may be appended
        self.ended = ended
        #: the last write error, for messages
        self.last_error: OSError | None = None
        #: called once, the first time a write fails (the manager flags logging_degraded)
        self.on_degraded: Callable[[RunWriter], None] | None = None
        self.index = index
        self.index_path = index_path
        self._fd = fd
        self._index_fd = index_fd
        self._index_size = len(index) * RECORD.size + 16
        self._index_broken = False
        self._lock = lock
        self._ops = ops
        self._on_visible = on_visible
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self._interval = config.flush_interval_ms / 1000
        self._live_interval = min(config.live_flush_interval_ms, config.flush_interval_ms) / 1000
        self._watched = watched
        # the config, flattened: commit reads these on every call
        self._flush_events = config.flush_events
        self._flush_every_commit = config.fsync == "batch"
        self._max_event_bytes = config.max_event_bytes
        self._every_bytes = config.index_every_bytes
        self._every_events = config.index_every_events
        self._id_prefix = f"evt_{new_ulid()}"
        self._offset = offset  # end of the written bytes
        self._visible = offset  # end of the bytes readers may see
        self._buf = bytearray()
        self._pending_events = 0
        self._pending_index: list[tuple[int, int]] = []
        self._idx_seq, self._idx_off = index.last
        self._timer: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_MIN
        self._failing = False
        self._needs_truncate = False
        self._flush_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # ------------------------------------------------------------------ state
    @property
    def visible_offset(self) -> int:
        """End of the bytes readers may see (written, and fsynced if the mode asks)."""
        return self._visible

    @property
    def pending_events(self) -> int:
        """Committed events not yet written to the log."""
        return self._pending_events

    @property
    def buffer_full(self) -> bool:
        """Writes are failing and the buffer is full: :meth:`prepare` would drop drafts now.

        An all-or-nothing producer batch (HTTP ingest) should answer 503 instead.
        """
        return self._failing and len(self._buf) >= self.config.max_buffer_bytes

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # ------------------------------------------------------------------ prepare / commit
    def prepare(self, drafts: Sequence[EventDraft]) -> list[Event]:
        """Envelopes for ``drafts`` with the next sequences; writes nothing.

        Raises RunEnded after run.completed, InvalidEvent for a bad draft
        (``line`` is its 1-based position). While writes fail and the buffer is
        full, drafts are dropped (not numbered): the result may be shorter.
        """
        if self._closed:
            raise StorageError(f"the writer of run {self.ref.run_id} is closed")
        if self.ended:
            raise RunEnded(f"run {self.ref.run_id} has already ended (run.completed is in its log)")
        if not drafts:
            return []
        if self._failing and len(self._buf) >= self.config.max_buffer_bytes:
            kept = [drafts[-1]] if drafts[-1].type == RUN_COMPLETED else []
            self.dropped_events += len(drafts) - len(kept)
            drafts = kept
        ref = self.ref
        ws, cfg, run_id = ref.workspace_id, ref.configuration_id, ref.run_id
        prefix, source = self._id_prefix, self.source
        now: str | None = None
        sequence = first = self.last_sequence + 1
        last = first + len(drafts) - 1
        events: list[Event] = []
        add = events.append
        # This loop runs once per event: keep it to what must happen per event.
        for draft in drafts:
            kind = draft.type
            if not (kind and isinstance(kind, str) and isinstance(draft.payload, dict)) or (
                kind == RUN_COMPLETED and sequence != last
            ):
                _refuse(draft, sequence - first + 1, sequence == last)
            created = draft.created_at
            if created is None:
                # one instant for the whole batch: they were handed over together
                created = now if now is not None else (now := utc_timestamp())
            else:
                try:
                    created = normalize_created_at(created)
                except InvalidInput as exc:
                    raise InvalidEvent(exc.message, line=sequence - first + 1) from exc
            add(
                Event(
                    type=kind,
                    event_id=f"{prefix}{sequence}",
                    created_at=created,
                    sequence=sequence,
                    source=draft.source or source,
                    workspace_id=ws,
                    configuration_id=cfg,
                    run_id=run_id,
                    build_id=draft.build_id,
                    payload=draft.payload,
                )
            )
            sequence += 1
        return events

    async def commit(self, events: list[Event]) -> None:
        """Encode the events of the last :meth:`prepare` into the buffer; flush by policy.

        Nothing is buffered if any event fails to encode (InvalidEvent) or is
        larger than ``max_event_bytes`` (PayloadTooLarge).
        """
        if not events:
            return
        if self._closed:
            raise StorageError(f"the writer of run {self.ref.run_id} is closed")
        if self.ended:
            raise RunEnded(f"run {self.ref.run_id} has already ended (run.completed is in its log)")
        first = events[0].sequence
        if first != self.last_sequence + 1 or events[-1].sequence != first + len(events) - 1:
            raise InvalidInput("commit() takes exactly the events of the last prepare()")
        await self._commit(events, first)

    async def _commit(self, events: list[Event], first: int) -> None:
        """:meth:`commit` once the checks passed (``append`` comes here straight from prepare)."""
        data = encode_batch(events)  # one C call for the batch
        limit = self._max_event_bytes
        if limit is not None and len(data) > limit:
            longest = max(len(line) + 1 for line in data.split(b"\n")[:-1])
            if longest > limit:
                raise PayloadTooLarge(f"an event is {longest} bytes (limit {limit})")
        buf = self._buf
        base = self._offset + len(buf)
        last = events[-1].sequence
        if base + len(data) - self._idx_off > self._every_bytes or (
            last - self._idx_seq >= self._every_events
        ):
            # a record is due in this batch
            records = batch_records(
                data, base, first, (self._idx_seq, self._idx_off), self._every_bytes,
                self._every_events,
            )  # fmt: skip
            if records:
                self._pending_index += records
                self._idx_seq, self._idx_off = records[-1]
        buf += data
        self.last_sequence = last
        metrics.events_appended(len(events))  # metrics hook (per batch)
        pending = self._pending_events = self._pending_events + len(events)
        if events[-1].type == RUN_COMPLETED:
            self.ended = True
        if self._failing:
            return  # the retry timer writes the buffer; do not hammer a failing disk
        if (
            pending >= self._flush_events
            or self._flush_every_commit
            or self.ended
            or len(buf) >= FLUSH_BYTES
        ):
            await self.flush()
        elif self._timer is None:
            # Someone follows this run live: wait less, so they see events sooner.
            # Unwatched runs batch more (fewer, larger writes).
            watched = self._watched is not None and self._watched(self)
            delay = self._live_interval if watched else self._interval
            self._timer = self._loop.call_later(delay, self._on_timer)

    async def append(self, drafts: Sequence[EventDraft]) -> list[Event]:
        """``commit(prepare(drafts))``; returns the events as written."""
        events = self.prepare(drafts)
        if events:
            await self._commit(events, events[0].sequence)
        return events

    # ------------------------------------------------------------------ flushing
    async def flush(self) -> None:
        """Write the buffer now (and fsync unless ``fsync="never"``); then it is visible.

        A failing write does not raise: it is counted and retried (see ``degraded``).
        """
        if self.config.fsync == "never":
            self._write_pending(publish=True)
            return
        async with self._flush_lock:
            written = self._write_pending(publish=False)
            if written is None or self._fd is None:
                return
            try:
                await asyncio.to_thread(self._ops.fsync, self._fd)
            except OSError as exc:
                # the bytes are written; only their durability is in doubt
                self._record_error(exc, "fsync")
            self._make_visible(*written)

    def _on_timer(self) -> None:
        self._timer = None
        self._background_flush()

    def _on_retry(self) -> None:
        self._retry = None
        self._background_flush()

    def _background_flush(self) -> None:
        if self.config.fsync == "never":
            self._write_pending(publish=True)  # no await needed: do it in the callback
            return
        task = self._loop.create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _write_pending(self, *, publish: bool) -> tuple[int, bytearray, int, int] | None:
        """Write the whole buffer with one ``pwrite``; on success returns what was written."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        buf = self._buf
        if not buf or self._fd is None:
            return None
        start = self._offset
        try:
            self._write_all(buf, start)
        except OSError as exc:
            self._record_error(exc, "write")
            self._failing = True
            if self._retry is None and not self._closed:
                self._retry = self._loop.call_later(self._retry_delay, self._on_retry)
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
            return None
        end = start + len(buf)
        if self._needs_truncate:
            with contextlib.suppress(OSError):
                self._ops.ftruncate(self._fd, end)
                self._needs_truncate = False
        count = self._pending_events
        first = self.last_sequence - count + 1
        self._buf = bytearray()
        self._pending_events = 0
        self._offset = self.bytes_written = end
        entries, self._pending_index = self._pending_index, []
        self._write_index(entries)
        if self._failing:
            self._failing = False
            self._retry_delay = RETRY_MIN
            log.warning("run %s: log writes work again", self.ref.run_id)
        if publish:
            self._make_visible(start, buf, first, self.last_sequence)
        return start, buf, first, self.last_sequence

    def _write_all(self, buf: bytearray, start: int) -> None:
        assert self._fd is not None
        done = 0
        try:
            while done < len(buf):
                # No memoryview: an export kept alive by a traceback would make the
                # buffer impossible to grow, and the remainder copy is the rare path.
                n = self._ops.pwrite(self._fd, buf if not done else buf[done:], start + done)
                if n <= 0:
                    raise OSError(5, "the write made no progress")
                done += n
        except OSError:
            if done:
                # never leave a torn line behind: cut back to the last good offset
                try:
                    self._ops.ftruncate(self._fd, start)
                except OSError:
                    self._needs_truncate = True  # the retry overwrites, then cuts
            raise

    def _make_visible(self, start: int, data: bytearray, first: int, last: int) -> None:
        self._visible = start + len(data)
        if self._on_visible is not None:
            self._on_visible(self, start, data, first, last)

    def _write_index(self, entries: list[tuple[int, int]]) -> None:
        for sequence, offset in entries:
            self.index.add(sequence, offset)
        if not entries or self._index_broken or self._fd is None:
            return
        data = b"".join(RECORD.pack(s, o) for s, o in entries)
        try:
            if self._index_fd is None:
                # created with the first record: short logs never need one
                self._index_fd = os.open(self.index_path, os.O_RDWR | os.O_CREAT, 0o644)
                data = self.index.to_bytes()
                self._index_size = 0
            os.pwrite(self._index_fd, data, self._index_size)
            self._index_size += len(data)
        except OSError as exc:
            # the index is a cache: seal (or the next open) rebuilds it
            self._index_broken = True
            log.warning("run %s: cannot append to the index: %s", self.ref.run_id, exc)

    def _record_error(self, exc: OSError, what: str) -> None:
        self.write_errors += 1
        self.last_error = exc
        first = not self.degraded
        self.degraded = True
        log.warning(
            "run %s: log %s failed (%s); %d events (%d bytes) kept for retry",
            self.ref.run_id,
            what,
            exc,
            self._pending_events,
            len(self._buf),
        )
        if first and self.on_degraded is not None:
            try:
                self.on_degraded(self)
            except Exception:
                log.exception("run %s: on_degraded callback failed", self.ref.run_id)

    # ------------------------------------------------------------------ closing
    async def close(self) -> None:
        """Flush what is buffered and release the run's lock (idempotent; never raises
        for a failing disk: unwritten events are reported in ``pending_events``)."""
        if self._closed:
            return
        self._closed = True
        for handle in (self._timer, self._retry):
            if handle is not None:
                handle.cancel()
        self._timer = self._retry = None
        try:
            await self.flush()
            if self._buf:
                # one last attempt, right away (the retry timer is gone)
                await self.flush()
            for task in list(self._tasks):
                with contextlib.suppress(Exception):
                    await task
            if self._buf:
                log.error(
                    "run %s: closing with %d events that could not be written: %s",
                    self.ref.run_id,
                    self._pending_events,
                    self.last_error,
                )
        finally:
            for fd in (self._fd, self._index_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._fd = self._index_fd = None
            self._lock.release()
            if self._on_close is not None:
                self._on_close(self)
