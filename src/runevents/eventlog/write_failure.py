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
from runevents.events import Event

if TYPE_CHECKING:
    from collections.abc import Callable

    from runevents.eventlog.writer import RunWriter, WriterConfig

#: the writer's logger: the write path logs under one name, however it is split into modules
log = logging.getLogger("runevents.eventlog.writer")

#: retry backoff after a failed write (seconds)
RETRY_MIN, RETRY_MAX = 0.05, 2.0


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

    if TYPE_CHECKING:
        # provided by RunWriter (writer.py) and GroupCommit (group_commit.py)

        @property
        def pending_events(self) -> int: ...

        def _background_flush(self) -> None: ...

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
