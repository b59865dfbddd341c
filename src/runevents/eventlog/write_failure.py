"""What a run's writer does when a write or fsync fails: its two failure policies.

Part of :class:`runevents.eventlog.writer.RunWriter` (a mixin, like the
repository's in ``db/``). Kept apart from the write path because it is a
different question -- not how bytes become durable (``group_commit.py``) but
what is promised when they cannot -- and it is off the hot path: nothing here
runs while writes succeed.

The policy is fixed per writer (see ARCHITECTURE.md, failure table):

- ``atomic=True`` (producer ingest, server events): a failed write or fsync
  cuts the file back to the last durable offset and *rolls back* every commit
  that was not durable yet -- their sequences are handed out again and every
  waiting ``sync`` raises ``StorageError`` (the API answers 503). Nothing that
  was not acknowledged is ever in the log unless it is sent again. Each
  rollback starts a new *era*; a :class:`Ticket` carries its era, so ``sync``
  can tell a commit that became durable before the rollback from one that
  was rolled back.
- ``atomic=False`` (an executor's console lines, which nobody was promised):
  the bytes stay buffered (up to ``max_buffer_bytes``) and are retried with
  backoff; ``degraded`` says so. When the buffer is full, new drafts are
  dropped in ``prepare`` -- before they get a sequence -- and counted (a final
  ``run.completed`` is never dropped). ``sync`` still raises on a failed
  attempt, so a completion knows it is not durable yet.

Dropped drafts leave a trace where they are missing: a *lost-lines marker*
(:func:`lost_lines_marker`), a ``console.line`` of the server's saying how
many were lost and why, with the count in ``payload.lost_lines``. Readers of
the log (SSE, downloads, the UI) see it in place of the gap, and ``reindex``
reads it to keep the row's ``logging_degraded`` (the row is rebuilt from the
log alone). It is committed as soon as writes work again
(:meth:`WriteFailures._mark_lost`), else as the first event of the next unit
``prepare`` numbers -- so at the latest just before ``run.completed``. Only a
buffered writer drops, so an atomic writer (a producer's) never writes one.

A file that cannot even be cut back holds bytes nobody acknowledged: the
writer is *broken* (nothing more is written) until :meth:`retry_cut` works.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runevents.eventlog.files import FileOps
from runevents.eventlog.types import RunRef
from runevents.events import CONSOLE_LINE, RUN_COMPLETED, Event, EventDraft

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from runevents.eventlog.writer import RunWriter, WriterConfig

#: the writer's logger: the write path logs under one name, however it is split into modules
log = logging.getLogger("runevents.eventlog.writer")

#: retry backoff after a failed write (seconds)
RETRY_MIN, RETRY_MAX = 0.05, 2.0

#: the lost-lines marker's count field: not a contract console field (scope, stream, level,
#: message, phase, logger) nor the server's other counts there (``truncated``,
#: ``truncated_bytes``, ``masked``), so the summary counts the marker as one plain line
LOST_LINES_KEY = "lost_lines"
#: the marker's ``source``: the server's own (an executed run's lines say ``worker``, and a
#: job cannot set ``source`` -- ``capture.ConsoleTranslator`` does not pass it on)
MARKER_SOURCE = "server"
#: the ``logger`` of the server's own console lines (``capture.NOTICE_LOGGER``)
MARKER_LOGGER = "runevents"


def lost_lines_marker(count: int, error: OSError | None) -> EventDraft:
    """The console line that stands where ``count`` dropped lines are missing."""
    reason = (error.strerror or str(error)) if error is not None else None
    lines = f"{count:,} line of output was" if count == 1 else f"{count:,} lines of output were"
    return EventDraft(
        type=CONSOLE_LINE,
        source=MARKER_SOURCE,
        payload={
            "scope": "run",
            "stream": "stderr",
            "level": "warning",
            "message": f"runevents: {lines} lost: the log could not be written"
            + (f" ({reason})" if reason else ""),
            "logger": MARKER_LOGGER,
            LOST_LINES_KEY: count,
        },
    )


def lost_lines(type: str, source: str | None, payload: object) -> int:
    """How many lines the event says were lost if it is the server's lost-lines marker,
    else 0 (a job's look-alike has another ``source``; a producer's is told apart by the
    caller: only an executed run's writer drops lines)."""
    if type != CONSOLE_LINE or source != MARKER_SOURCE or not isinstance(payload, dict):
        return 0
    count = payload.get(LOST_LINES_KEY)
    if count.__class__ is not int or payload.get("logger") != MARKER_LOGGER:
        return 0
    return max(count, 0)


@dataclass(frozen=True, slots=True)
class Ticket:
    """What ``sync`` needs to know a commit became durable: its end and the rollback era."""

    end: int
    era: int


class WriteFailures:
    """Roll back (atomic) or keep and retry (buffered) after a failed write; the cut-back."""

    # The writer's state this part reads and resets; RunWriter.__init__ assigns it
    # (and says what each is).
    ref: RunRef
    config: WriterConfig
    atomic: bool
    last_sequence: int
    ended: bool
    bytes_written: int
    degraded: bool
    write_errors: int
    last_error: OSError | None
    on_degraded: Callable[[RunWriter], None] | None
    broken: str | None
    dropped_events: int
    _lost: int
    _numbered: int
    _cut_pending: int | None
    _fd: int | None
    _ops: FileOps
    _loop: asyncio.AbstractEventLoop
    _closed: bool
    _durable: int
    _durable_sequence: int
    _durable_ended: bool
    _buf: bytearray
    _pending_index: list[tuple[int, int]]
    _idx_seq: int
    _idx_off: int
    _idx_durable: tuple[int, int]
    _era: int
    _rollbacks: list[int]
    _units: deque[list[Event]]
    _retry: asyncio.TimerHandle | None
    _retry_delay: float
    _failing: bool
    _due: bool

    if TYPE_CHECKING:
        # provided by RunWriter (writer.py) and GroupCommit (group_commit.py)

        @property
        def pending_events(self) -> int: ...

        def _background_flush(self) -> None: ...

        def prepare(self, drafts: Sequence[EventDraft]) -> list[Event]: ...

        def commit(self, events: list[Event], *, check_size: bool = True) -> Ticket: ...

    @property
    def buffer_full(self) -> bool:
        """Writes are failing and the buffer is full: :meth:`prepare` would drop drafts now."""
        return self._failing and len(self._buf) >= self.config.max_buffer_bytes

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
                self.on_degraded(self)  # type: ignore[arg-type]  # self is the RunWriter
            except Exception:
                log.exception("run %s: on_degraded callback failed", self.ref.run_id)

    def _drop_or_mark(self, drafts: Sequence[EventDraft]) -> Sequence[EventDraft]:
        """A buffered writer's ``prepare`` while writes fail or lines were lost: drop the
        drafts a full buffer cannot take (counted; a final run.completed is kept), and
        put the lost-lines marker first once there is a unit to put it in."""
        if self.buffer_full:
            kept = [drafts[-1]] if drafts and drafts[-1].type == RUN_COMPLETED else []
            self.dropped_events += len(drafts) - len(kept)
            self._lost += len(drafts) - len(kept)
            drafts = kept
            if not drafts:
                return drafts  # the gap goes on: the marker waits for its end
        if self._lost:
            # counted off in commit, when the unit that carries it is committed
            return [lost_lines_marker(self._lost, self.last_error), *drafts]
        return drafts

    def _marker_committed(self, events: list[Event]) -> None:
        """``commit`` of a unit while lines are lost: the marker (always its first event,
        ``_drop_or_mark``) is in the log's order now; lines dropped after it was
        numbered wait for the next one."""
        first = events[0]
        self._lost = max(self._lost - lost_lines(first.type, first.source, first.payload), 0)

    def _mark_lost(self) -> None:
        """Writes work again after lines were dropped: commit the marker now, where they
        are missing (everything before it is written, nothing after it was taken).

        Not when a caller holds a prepared unit it has not committed yet (a completion
        awaiting its summary): that unit begins with the marker already, and committing
        another unit first would take its sequences."""
        if (
            not self._lost
            or self.ended
            or self._closed
            or self.broken is not None
            or self._numbered != self.last_sequence
        ):
            return
        events = self.prepare([])
        if events:
            self.commit(events)
            if self._due:  # (no caller awaits flush_if_due for the server's own unit)
                self._due = False
                self._background_flush()

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

    def _on_retry(self) -> None:
        self._retry = None
        self._background_flush()
