"""The single writer of one run's log.

``prepare`` turns drafts into envelopes (sequence, event_id, created_at, ids)
without writing; ``commit`` encodes them into the append buffer and returns a
:class:`Ticket`; ``sync(ticket)`` returns once those bytes are *durable*
(written, and fsynced unless ``fsync="never"``) or raises. Bytes become
*visible* (published to the in-process tail, notified) only once durable, so
no reader ever sees an event that a crash could take back -- a client holding
``Last-Event-ID: N`` can never be handed a different event N later.

The writer is one object in three modules, one concept each: this one numbers,
encodes and buffers (``prepare`` / ``commit``, the hot path of every batch) and
owns the writer's state and lifecycle; ``group_commit.py`` makes the buffer
durable (one ``pwrite`` + one ``fsync`` per group, ``sync`` / ``flush``);
``write_failure.py`` holds the two failure policies -- ``atomic=True`` rolls
back what was not durable, ``atomic=False`` keeps it and retries (see
ARCHITECTURE.md, failure table).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runevents.eventlog.files import DEFAULT_OPS, FileOps, WriterLock
from runevents.eventlog.group_commit import Fence, GroupCommit, Ship, VisibleHook
from runevents.eventlog.index import (
    EVERY_BYTES,
    EVERY_EVENTS,
    RECORD,
    SparseIndex,
    batch_records,
)
from runevents.eventlog.types import RunRef
from runevents.eventlog.write_failure import RETRY_MIN, Ticket
from runevents.events import (
    RUN_COMPLETED,
    UNIT_END,
    Event,
    EventDraft,
    encode_batch,
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
from runevents.timestamps import normalize_created_at, utc_timestamp

# the write path's names, importable from here wherever they are defined
__all__ = [
    "FLUSH_BYTES",
    "Fence",
    "FsyncMode",
    "RunWriter",
    "Ship",
    "Ticket",
    "VisibleHook",
    "WriterConfig",
]

log = logging.getLogger(__name__)

FsyncMode = Literal["never", "flush", "batch"]
#: flush once this many bytes are buffered, whatever the event count
FLUSH_BYTES = 1024 * 1024


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


class RunWriter(GroupCommit):
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
        #: of those, the ones no lost-lines marker in the log counts yet
        self._lost = 0
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
    def completed_durably(self) -> bool:
        """run.completed is in the log and durable (whatever failed after it)."""
        return self._durable_ended

    @property
    def pending_events(self) -> int:
        """Committed events not yet durable."""
        return self.last_sequence - self._durable_sequence

    @property
    def undurable_units(self) -> tuple[list[Event], ...]:
        """The commit units not durable yet, in log order (kept only with ``on_durable``)."""
        return tuple(self._units)

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
        fail and whose buffer is full drops drafts (the result may be shorter);
        once it takes drafts again, the first event is the lost-lines marker
        (``write_failure.py``; the result may then be longer, and then also for
        no drafts).
        """
        self._check_open()
        if self.ended:
            raise RunEnded(f"run {self.ref.run_id} has already ended (run.completed is in its log)")
        if not self.atomic and (self._lost or self.buffer_full):
            drafts = self._drop_or_mark(drafts)  # (off the hot path: writes failed)
        if not drafts:
            return []
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
        # one C call for the batch; the unit's end mark (one space before the last
        # newline, ``mark_unit_end``) is put in the buffer below, in place: copying
        # a 400 KB batch twice more to add one byte was a visible share of a commit
        data = encode_batch(events)
        size = len(data) + len(UNIT_END) - 1
        limit = self._max_event_bytes
        if check_size and limit is not None and size > limit:
            lines = data.split(b"\n")[:-1]
            # every line with its newline; the last one with its end mark
            longest = max(max(map(len, lines)) + 1, len(lines[-1]) + len(UNIT_END))
            if longest > limit:
                raise PayloadTooLarge(f"an event is {longest} bytes (limit {limit})")
        buf = self._buf
        base = self._durable + len(buf)
        last = events[-1].sequence
        if base + size - self._idx_off > self._every_bytes or (
            last - self._idx_seq >= self._every_events
        ):
            # (the unmarked lines start where the marked ones do: the same records)
            records = batch_records(
                data, base, first, (self._idx_seq, self._idx_off), self._every_bytes,
                self._every_events,
            )  # fmt: skip
            if records:
                self._pending_index += records
                self._idx_seq, self._idx_off = records[-1]
        buf += data
        buf[-1:] = UNIT_END
        self.last_sequence = last
        if self._lost:
            self._marker_committed(events)
        if events[-1].type == RUN_COMPLETED:
            self.ended = True
        ticket = Ticket(base + size, self._era)
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
    def _cancel_timers(self) -> None:
        for handle in (self._timer, self._retry):
            if handle is not None:
                handle.cancel()
        self._timer = self._retry = None

    def refuse_writes(self, reason: str) -> None:
        """Never write again (this process lost the run, or must not touch it any more):
        :meth:`close` then makes nothing more durable."""
        self._break(reason)

    async def close(self, *, keep_lock: bool = False) -> WriterLock | None:
        """Make what is buffered durable if possible and release the run's file lock
        (with ``keep_lock``, hand it to the caller instead: sealing goes on under it).

        Idempotent; never raises for a failing disk: a non-atomic writer's
        unwritten lines are logged as lost (nobody was promised them); an
        atomic writer has no unacknowledged commits to lose.
        """
        if self._closed:
            return None
        # the last chance to say lines are missing (flushed below): whoever ends the run
        # (a reaper, after a worker shut down) opens a new writer, which knows nothing of them
        self._mark_lost()
        self._cancel_timers()
        if self._cut_pending is not None:
            # never leave unacknowledged bytes behind: a reopen's recovery would keep
            # them (they are whole units)
            self.retry_cut()
        try:
            if self.broken is None and self._buf:
                with contextlib.suppress(WriterFenced):
                    await self.flush()
                    if self._buf and not self._failing:
                        await self.flush()  # the lost-lines marker that write let in
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
            self._cancel_timers()  # (a marker's commit above may have set one)
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
