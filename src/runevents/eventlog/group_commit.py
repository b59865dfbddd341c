"""How a run's committed bytes become durable and visible: the group commit.

Part of :class:`runevents.eventlog.writer.RunWriter` (a mixin, like the
repository's in ``db/``). ``writer.py`` numbers and encodes events into the
append buffer (``prepare`` / ``commit``); this part empties that buffer:
one ``pwrite`` + one ``fsync`` covers every commit buffered when it starts,
and syncs that arrive while an fsync is in flight wait for it and share the
next one. Kept apart because it is the other half of the write path, with its
own lock, timers and background tasks; what happens when it fails is
``write_failure.py``.

Bytes become *visible* (published to the in-process tail, notified) only once
durable, so no reader ever sees an event that a crash could take back.
Ownership: ``fence`` (from the manager's lease) is awaited before every write;
with ``ship`` (several machines), the shared live tier's commit, not a local
fsync, is the durable step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from runevents import metrics
from runevents.eventlog.write_failure import RETRY_MIN, Ticket, WriteFailures
from runevents.exceptions import StorageError, WriterFenced

if TYPE_CHECKING:
    from runevents.eventlog.writer import RunWriter
    from runevents.events import Event

#: the writer's logger: the write path logs under one name, however it is split into modules
log = logging.getLogger("runevents.eventlog.writer")

#: called with (writer, start offset, bytes, first sequence, last sequence) when bytes become
#: visible; the data object must not be kept
VisibleHook = Callable[["RunWriter", int, bytes, int, int], None]
#: awaited before every write: raises WriterFenced when this process no longer owns the run
Fence = Callable[[], Awaitable[None]]
#: awaited with (start offset, bytes, first sequence, last sequence) of each write before it
#: counts as durable; raises WriterFenced (lost the run) or StorageError (not stored)
Ship = Callable[[int, bytes, int, int], Awaitable[None]]


class GroupCommit(WriteFailures):
    """``sync`` / ``flush``: one write + fsync for every commit buffered, then publish."""

    # The writer's state this part reads and advances; RunWriter.__init__ assigns it
    # (and says what each is).
    fence: Fence | None
    ship: Ship | None
    on_durable: Callable[[list[Event]], None] | None
    _on_visible: VisibleHook | None
    _fsync: bool
    _timer: asyncio.TimerHandle | None
    _due: bool
    _flush_lock: asyncio.Lock
    _tasks: set[asyncio.Task[None]]

    if TYPE_CHECKING:
        # provided by RunWriter (writer.py)

        def _check_open(self) -> None: ...

        def _write_index(self, entries: list[tuple[int, int]]) -> None: ...

    async def flush_if_due(self) -> None:
        """Flush now if the policy says so (count, bytes, run.completed) after a commit."""
        if self._due:
            self._due = False
            await self.flush()

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
        # one copy (``bytes(buf[:n])`` made two of a whole batch)
        data = bytes(buf) if n == len(buf) else bytes(buf[:n])
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
        # (after the units' fold and publication below: the marker is a unit of its own)
        mark_lost = self._lost > 0
        metrics.events_appended(last_durable - first + 1)  # metrics hook (per flush)
        units, fold = self._units, self.on_durable
        while units and units[0][-1].sequence <= last_durable:
            unit = units.popleft()
            if fold is not None:
                fold(unit)
        if self._on_visible is not None:
            self._on_visible(self, start, data, first, last_durable)  # type: ignore[arg-type]
        if mark_lost:
            self._mark_lost()  # lines were dropped, and this write worked: say so now
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

    # ------------------------------------------------------------------ background flushes
    def _on_timer(self) -> None:
        self._timer = None
        self._background_flush()

    def _background_flush(self) -> None:
        task = self._loop.create_task(self._flush_quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(WriterFenced):
            await self.flush()
