"""The single writer of one run's log.

``prepare`` turns drafts into envelopes (sequence, event_id, created_at, ids)
without writing; ``commit`` encodes them into the append buffer and returns a
:class:`Ticket`; ``sync(ticket)`` returns once those bytes are *durable*
(written, and fsynced unless ``fsync="never"``) or raises. Bytes become
*visible* (published to the in-process tail, notified) only once durable, so
no reader ever sees an event that a crash could take back -- a client holding
``Last-Event-ID: N`` can never be handed a different event N later.

Durability is a group commit: one ``pwrite`` + one ``fsync`` covers every
commit buffered when it starts; syncs that arrive while an fsync is in flight
wait for it and share the next one.

Two failure policies, fixed per writer (see ARCHITECTURE.md, failure table):

- ``atomic=True`` (producer ingest, server events): a failed write or fsync
  cuts the file back to the last durable offset and *rolls back* every commit
  that was not durable yet -- their sequences are handed out again and every
  waiting ``sync`` raises ``StorageError`` (the API answers 503). Nothing that
  was not acknowledged is ever in the log unless it is sent again.
- ``atomic=False`` (an executor's console lines, which nobody was promised):
  the bytes stay buffered (up to ``max_buffer_bytes``) and are retried with
  backoff; ``degraded`` says so. When the buffer is full, new drafts are
  dropped in ``prepare`` -- before they get a sequence -- and counted (a final
  ``run.completed`` is never dropped). ``sync`` still raises on a failed
  attempt, so a completion knows it is not durable yet.

Every commit unit ends its last line with ``b" \\n"`` (``events.UNIT_END``):
recovery cuts the whole lines of a unit that was not written whole.

Ownership: ``fence`` (from the manager's lease) is awaited before every write;
a writer whose lease was taken over raises ``WriterFenced`` and never writes
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
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
    mark_unit_end,
    normalize_created_at,
    utc_timestamp,
)
from runevents.exceptions import (
    InvalidEvent,
    InvalidInput,
    PayloadTooLarge,
    RunEnded,
    StorageError,
    WriterFenced,
)
from runevents.ids import new_ulid

log = logging.getLogger(__name__)

FsyncMode = Literal["never", "flush", "batch"]
#: flush once this many bytes are buffered, whatever the event count
FLUSH_BYTES = 1024 * 1024
#: retry backoff after a failed write (seconds)
RETRY_MIN, RETRY_MAX = 0.05, 2.0

#: called with (writer, start offset, bytes, first sequence, last sequence) when bytes become
#: visible; the data object must not be kept
VisibleHook = Callable[["RunWriter", int, bytes, int, int], None]
#: awaited before every write: raises WriterFenced when this process no longer owns the run
Fence = Callable[[], Awaitable[None]]
#: awaited with (start offset, bytes, first sequence, last sequence) of each write before it
#: counts as durable; raises WriterFenced (lost the run) or StorageError (not stored)
Ship = Callable[[int, bytes, int, int], Awaitable[None]]


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
    #: never: page cache only (relaxed); flush: fsync before bytes are visible/acknowledged
    fsync: FsyncMode = "flush"
    #: events not yet written are kept up to this many bytes while writes fail
    max_buffer_bytes: int = 64 * 1024 * 1024
    #: one encoded producer event at most (None: no limit)
    max_event_bytes: int | None = None
    index_every_bytes: int = EVERY_BYTES
    index_every_events: int = EVERY_EVENTS


@dataclass(frozen=True, slots=True)
class Ticket:
    """What ``sync`` needs to know a commit became durable: its end and the rollback era."""

    end: int
    era: int


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
        atomic: bool = True,
    ) -> None:
        self.ref = ref
        self.source = source
        self.path = path
        self.config = config
        #: failure policy (module doc): roll back non-durable commits on a failed write
        self.atomic = atomic
        #: sequence of the last committed event (buffered or written)
        self.last_sequence = last_sequence
        #: size of the log on disk including bytes written but not yet durable
        self.bytes_written = offset
        #: set once a write failed (stays set)
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
        #: called with each commit unit's events once they are durable, in log order
        #: (the manager folds its run summary); rolled-back units are never passed
        self.on_durable: Callable[[list[Event]], None] | None = None
        #: proves ownership before every write (None: unfenced, tests and tools)
        self.fence: Fence | None = None
        #: several machines: commits each durable write to the shared live tier, fenced by
        #: the writer epoch; that commit, not a local fsync, makes it durable (livetier.py)
        self.ship: Ship | None = None
        #: the writer can no longer be trusted (fenced, or the file could not be cut back)
        self.broken: str | None = None
        #: the durable end a failed write could not be cut back to (see retry_cut)
        self._cut_pending: int | None = None
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
        self._flush_events = config.flush_events
        self._fsync = config.fsync != "never"
        self._max_event_bytes = config.max_event_bytes
        self._every_bytes = config.index_every_bytes
        self._every_events = config.index_every_events
        self._id_prefix = f"evt_{new_ulid()}"
        #: the highest sequence this writer gave an event_id (see prepare)
        self._numbered = last_sequence
        # Durable state: bytes [0, _durable) are on stable storage (visible to readers);
        # _buf holds every committed byte after it (written or not), so a failed
        # write can always be redone or cut back.
        self._durable = offset
        self._durable_sequence = last_sequence
        self._durable_ended = ended
        self._buf = bytearray()
        #: (sequence, offset) index records of the bytes in _buf
        self._pending_index: list[tuple[int, int]] = []
        self._idx_seq, self._idx_off = index.last
        self._idx_durable = (self._idx_seq, self._idx_off)
        #: bumped by every rollback; _rollbacks[e] is the durable end when era e ended,
        #: so a ticket of era e is durable iff its end is within it
        self._era = 0
        self._rollbacks: list[int] = []
        #: committed units not yet durable, for on_durable
        self._units: deque[list[Event]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_MIN
        self._failing = False
        self._due = False
        self._flush_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        #: what recovery cut when this writer opened the log (None: nothing)
        self.recovered: dict[str, object] | None = None

    # ------------------------------------------------------------------ state
    @property
    def visible_offset(self) -> int:
        """End of the bytes readers may see (durable)."""
        return self._durable

    @property
    def durable_sequence(self) -> int:
        """Sequence of the last durable event (a recovery checkpoint with ``visible_offset``)."""
        return self._durable_sequence

    @property
    def pending_events(self) -> int:
        """Committed events not yet durable."""
        return self.last_sequence - self._durable_sequence

    @property
    def buffer_full(self) -> bool:
        """Writes are failing and the buffer is full: :meth:`prepare` would drop drafts now."""
        return self._failing and len(self._buf) >= self.config.max_buffer_bytes

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"the writer of run {self.ref.run_id} is closed")
        if self.broken is not None:
            raise StorageError(self.broken)

    # ------------------------------------------------------------------ prepare / commit
    def prepare(self, drafts: Sequence[EventDraft]) -> list[Event]:
        """Envelopes for ``drafts`` with the next sequences; writes nothing.

        Raises RunEnded after run.completed, InvalidEvent for a bad draft
        (``line`` is its 1-based position). A non-atomic writer whose writes
        fail and whose buffer is full drops drafts (the result may be shorter).
        """
        self._check_open()
        if self.ended:
            raise RunEnded(f"run {self.ref.run_id} has already ended (run.completed is in its log)")
        if not drafts:
            return []
        if not self.atomic and self.buffer_full:
            kept = [drafts[-1]] if drafts[-1].type == RUN_COMPLETED else []
            self.dropped_events += len(drafts) - len(kept)
            drafts = kept
        ref = self.ref
        ws, cfg, run_id = ref.workspace_id, ref.configuration_id, ref.run_id
        sequence = first = self.last_sequence + 1
        last = first + len(drafts) - 1
        if first <= self._numbered:
            # these sequences were handed out before (a rollback, a refused commit, a
            # prepare nobody committed): an event_id is never given twice, so a stored
            # idempotency proof can never match another batch's event
            self._id_prefix = f"evt_{new_ulid()}"
        self._numbered = max(self._numbered, last)
        prefix, source = self._id_prefix, self.source
        now: str | None = None
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

    def commit(self, events: list[Event], *, check_size: bool = True) -> Ticket:
        """Encode the events of the last :meth:`prepare` into the buffer as one unit.

        Nothing is buffered if any event fails to encode (InvalidEvent) or, with
        ``check_size``, is larger than ``max_event_bytes`` (PayloadTooLarge; the
        server's own events -- a completion with its summary -- are not held to
        the producer's limit). A non-atomic writer flushes by policy in the
        background; an atomic one waits for :meth:`sync`.
        """
        self._check_open()
        if self.ended:
            raise RunEnded(f"run {self.ref.run_id} has already ended (run.completed is in its log)")
        if not events:
            return Ticket(self._durable + len(self._buf), self._era)
        first = events[0].sequence
        if first != self.last_sequence + 1 or events[-1].sequence != first + len(events) - 1:
            raise InvalidInput("commit() takes exactly the events of the last prepare()")
        data = mark_unit_end(encode_batch(events))  # one C call for the batch
        limit = self._max_event_bytes
        if check_size and limit is not None and len(data) > limit:
            longest = max(len(line) + 1 for line in data.split(b"\n")[:-1])
            if longest > limit:
                raise PayloadTooLarge(f"an event is {longest} bytes (limit {limit})")
        buf = self._buf
        base = self._durable + len(buf)
        last = events[-1].sequence
        if base + len(data) - self._idx_off > self._every_bytes or (
            last - self._idx_seq >= self._every_events
        ):
            records = batch_records(
                data, base, first, (self._idx_seq, self._idx_off), self._every_bytes,
                self._every_events,
            )  # fmt: skip
            if records:
                self._pending_index += records
                self._idx_seq, self._idx_off = records[-1]
        buf += data
        self.last_sequence = last
        if events[-1].type == RUN_COMPLETED:
            self.ended = True
        ticket = Ticket(base + len(data), self._era)
        if self.on_durable is not None:
            self._units.append(events)
        if not self.atomic and not self._failing:
            pending = self.last_sequence - self._durable_sequence
            if pending >= self._flush_events or self.ended or len(buf) >= FLUSH_BYTES:
                self._due = True  # the caller awaits flush_if_due()
            elif self._timer is None:
                # Someone follows this run live: wait less, so they see events sooner.
                watched = self._watched is not None and self._watched(self)
                delay = self._live_interval if watched else self._interval
                self._timer = self._loop.call_later(delay, self._on_timer)
        return ticket

    async def append(self, drafts: Sequence[EventDraft]) -> list[Event]:
        """``commit(prepare(drafts))``; durable at once for an atomic writer, flushed by
        policy for a buffered one."""
        events = self.prepare(drafts)
        if events:
            ticket = self.commit(events)
            if self.atomic:
                await self.sync(ticket)
            else:
                await self.flush_if_due()
        return events

    async def flush_if_due(self) -> None:
        """Flush now if the policy says so (count, bytes, run.completed) after a commit."""
        if self._due:
            self._due = False
            await self.flush()

    # ------------------------------------------------------------------ durability
    async def sync(self, ticket: Ticket | None = None) -> None:
        """Return once the commit of ``ticket`` (default: everything committed) is durable.

        Raises StorageError if the write or fsync failed (atomic: the commit was
        rolled back and will never appear) or WriterFenced if this process lost
        the run. Concurrent calls share one write + fsync (group commit).
        """
        if ticket is None:
            ticket = Ticket(self._durable + len(self._buf), self._era)
        while True:
            if ticket.era != self._era:
                if ticket.end <= self._rollbacks[ticket.era]:
                    return  # it was durable before a later commit failed
                raise StorageError(
                    f"the log of run {self.ref.run_id} could not be written "
                    f"({self.last_error}); the batch was not stored"
                )
            if self._durable >= ticket.end:
                return
            self._check_open()
            async with self._flush_lock:
                if ticket.era != self._era or self._durable >= ticket.end:
                    continue
                error = await self._flush_locked()
                if error is not None:
                    raise StorageError(
                        f"the log of run {self.ref.run_id} could not be written: {error}"
                    )

    async def flush(self) -> None:
        """Try to make everything committed durable now; a failure is kept for retry
        (non-atomic) or rolled back (atomic), never raised (see :meth:`sync`)."""
        if self._closed or self.broken is not None or not self._buf:
            return
        async with self._flush_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> OSError | None:
        """One group commit of the whole buffer. Caller holds ``_flush_lock``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        buf = self._buf
        if not buf or self._fd is None:
            return None
        if self.fence is not None:
            try:
                await self.fence()
            except WriterFenced as exc:
                self._break(str(exc))
                raise
            except StorageError as exc:
                # the database is away: ownership cannot be proven, so nothing is
                # written now -- a failed attempt like any other (rolled back, or
                # kept and retried), never an exception into the executor
                error = OSError(5, f"cannot prove the writer lease: {exc.message}")
                self._on_failure(error, None)
                return error
        n = len(buf)
        start = self._durable
        last = self.last_sequence
        ended = self.ended
        ship = self.ship
        try:
            self._write_all(buf, n, start)
            self.bytes_written = max(self.bytes_written, start + n)
            if ship is None and self._fsync:
                await asyncio.to_thread(self._ops.fsync, self._fd)
        except OSError as exc:
            self._on_failure(exc, start)
            return exc
        data = bytes(buf[:n])
        if ship is not None:
            # the local file is a cache; the shared tier's commit is the durable step
            try:
                await ship(start, data, self._durable_sequence + 1, last)
            except WriterFenced as exc:
                self._on_failure(OSError(5, str(exc)), start)
                self._break(str(exc))
                raise
            except Exception as exc:  # the database is away, or refused the chunk
                reason = exc.message if isinstance(exc, StorageError) else repr(exc)
                error = OSError(5, f"the shared live tier did not store the write: {reason}")
                self._on_failure(error, start)
                return error
        # durable: advance, publish, and keep what was committed during the fsync
        # (``n`` and ``last`` were taken together, at a unit boundary)
        del buf[:n]
        end = start + n
        first = self._durable_sequence + 1
        last_durable, ended_durable = last, ended
        entries = [r for r in self._pending_index if r[1] < end]
        self._pending_index = self._pending_index[len(entries) :]
        self._write_index(entries)
        if entries:
            self._idx_durable = entries[-1]
        self._durable = end
        self._durable_sequence = last_durable
        self._durable_ended = ended_durable
        if self._failing:
            self._failing = False
            self._retry_delay = RETRY_MIN
            log.warning("run %s: log writes work again", self.ref.run_id)
        metrics.events_appended(last_durable - first + 1)  # metrics hook (per flush)
        units, fold = self._units, self.on_durable
        while units and units[0][-1].sequence <= last_durable:
            unit = units.popleft()
            if fold is not None:
                fold(unit)
        if self._on_visible is not None:
            self._on_visible(self, start, data, first, last_durable)
        return None

    def _write_all(self, buf: bytearray, n: int, start: int) -> None:
        assert self._fd is not None
        done = 0
        while done < n:
            # No memoryview: an export kept alive by a traceback would make the
            # buffer impossible to grow, and the remainder copy is the rare path.
            data = buf if (done == 0 and n == len(buf)) else buf[done:n]
            written = self._ops.pwrite(self._fd, data, start + done)
            if written <= 0:
                raise OSError(5, "the write made no progress")
            done += written

    def _on_failure(self, exc: OSError, start: int | None) -> None:
        """A write or fsync failed: cut the file back to the durable end (``start``; None:
        nothing was written), then roll back (atomic) or keep the buffer for a retry."""
        self.write_errors += 1
        self.last_error = exc
        first_failure = not self.degraded
        self.degraded = True
        if start is not None:
            try:
                self._ops.ftruncate(self._fd, start)  # type: ignore[arg-type]
                self.bytes_written = start
            except OSError as cut:
                # the file holds bytes nobody acknowledged: nothing more is written until
                # they are cut (retry_cut), and a reopen's recovery must not keep them
                self._cut_pending = start
                self._break(
                    f"the log of run {self.ref.run_id} cannot be cut back after a failed "
                    f"write: {cut}"
                )
        if self.atomic:
            dropped = self.last_sequence - self._durable_sequence
            self._buf = bytearray()
            self._units.clear()
            self._pending_index = []
            self._idx_seq, self._idx_off = self._idx_durable
            self.last_sequence = self._durable_sequence
            self.ended = self._durable_ended
            self._rollbacks.append(self._durable)
            self._era += 1
            log.warning(
                "run %s: log write failed (%s); %d events not stored (their producers get 503)",
                self.ref.run_id, exc, dropped,
            )  # fmt: skip
        else:
            self._failing = True
            if self._retry is None and not self._closed:
                self._retry = self._loop.call_later(self._retry_delay, self._on_retry)
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
            log.warning(
                "run %s: log write failed (%s); %d events (%d bytes) kept for retry",
                self.ref.run_id, exc, self.pending_events, len(self._buf),
            )  # fmt: skip
        if first_failure and self.on_degraded is not None:
            try:
                self.on_degraded(self)
            except Exception:
                log.exception("run %s: on_degraded callback failed", self.ref.run_id)

    def retry_cut(self) -> bool:
        """A writer broken because a failed write could not be cut back: try the cut again
        (the bytes after the durable end were never acknowledged). True if it works now."""
        if self.broken is None or self._cut_pending is None or self._fd is None:
            return self.broken is None
        try:
            self._ops.ftruncate(self._fd, self._cut_pending)
            self._ops.fsync(self._fd)
        except OSError:
            return False
        self.bytes_written = self._cut_pending
        self._cut_pending = None
        self.broken = None
        log.warning("run %s: the failed write is cut back now", self.ref.run_id)
        return True

    def _break(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
            log.error("run %s: %s", self.ref.run_id, reason)

    def _on_timer(self) -> None:
        self._timer = None
        self._background_flush()

    def _on_retry(self) -> None:
        self._retry = None
        self._background_flush()

    def _background_flush(self) -> None:
        task = self._loop.create_task(self._flush_quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(WriterFenced):
            await self.flush()

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

    # ------------------------------------------------------------------ closing
    async def close(self, *, keep_lock: bool = False) -> WriterLock | None:
        """Make what is buffered durable if possible and release the run's file lock
        (with ``keep_lock``, hand it to the caller instead: sealing goes on under it).

        Idempotent; never raises for a failing disk: a non-atomic writer's
        unwritten lines are logged as lost (nobody was promised them); an
        atomic writer has no unacknowledged commits to lose.
        """
        if self._closed:
            return None
        for handle in (self._timer, self._retry):
            if handle is not None:
                handle.cancel()
        self._timer = self._retry = None
        if self._cut_pending is not None:
            # never leave unacknowledged bytes behind: a reopen's recovery would keep
            # them (they are whole units)
            self.retry_cut()
        try:
            if self.broken is None and self._buf:
                with contextlib.suppress(WriterFenced):
                    await self.flush()
            for task in list(self._tasks):
                with contextlib.suppress(Exception):
                    await task
            if self._buf and not self.atomic:
                log.error(
                    "run %s: closing with %d events that could not be written: %s",
                    self.ref.run_id,
                    self.pending_events,
                    self.last_error,
                )
        finally:
            self._closed = True
            for fd in (self._fd, self._index_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._fd = self._index_fd = None
            if not keep_lock:
                self._lock.release()
            if self._on_close is not None:
                self._on_close(self)
        return self._lock if keep_lock else None
