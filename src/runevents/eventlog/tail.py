"""Live fan-out: one shared, bounded view of the end of a live log per run.

The log is the only data path. A :class:`Tail` holds a small ring of the
most recent chunks of one live log (a few MiB): the chunks the in-process
writer just made visible (no read at all), or, for a writer in another
process, what one refill read from the file (one read for everybody).
Subscribers that are caught up therefore share the *same* :class:`Chunk`
objects -- and whatever consumers memoized in ``chunk.cache`` (SSE frames).

Each subscriber only holds a cursor (last sequence, byte offset). There are
no per-subscriber queues: a subscriber that falls behind the ring reads the
file from its own cursor until it catches up, so a slow client never grows
server memory and never loses events.

Wake-ups (close-and-replace): a subscriber notes the tail's ``generation``
before it looks at the ring and waits only if it has not changed since; each
growth bumps it and resolves every waiter's future. One watcher task per tail
waits on the run's :class:`Notifier` signal with a ``poll_interval`` timeout
and refills from the file, so a writer in another process is noticed with or
without a notifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from bisect import bisect_right
from collections.abc import AsyncIterator, Awaitable, Callable

from runevents import metrics
from runevents.eventlog.reader import Cursor, FileSource, iter_lines
from runevents.eventlog.types import Chunk, ends_with_completed
from runevents.exceptions import StorageError
from runevents.notify import Notifier

log = logging.getLogger(__name__)

#: one refill reads at most this much per chunk
REFILL_BLOCK = 1024 * 1024


class Tail:
    """The shared end of one live log (one per run per process while it has followers)."""

    def __init__(
        self,
        *,
        run_id: str,
        fd: int,
        name: str,
        start: Cursor,
        visible_end: Callable[[], int],
        max_bytes: int,
        max_chunks: int,
        notifier: Notifier | None,
        poll_interval: float,
        pull: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.run_id = run_id
        #: several machines: brings committed bytes from the shared live tier into the
        #: local file before each refill (the writer is on another machine)
        self.pull = pull
        self.fd = fd
        self.source = FileSource(fd, name)
        self.visible_end = visible_end
        self.max_bytes = max_bytes
        self.max_chunks = max_chunks
        self.notifier = notifier
        self.poll_interval = poll_interval
        #: sequence and offset just past the last line the tail holds
        self.last_sequence = start.sequence
        self.end_offset = start.offset
        #: run.completed has been seen
        self.ended = False
        #: bumped each time the ring grows or the run ends (close-and-replace: a
        #: subscriber notes it before looking and waits only if it is unchanged)
        self.generation = 0
        self._waiters: list[asyncio.Future[None]] = []
        self.subscribers = 0
        self._offsets: list[int] = []  # start offset of each ring chunk
        self._chunks: list[Chunk] = []
        self._bytes = 0
        self._watcher: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the ring
    @property
    def ring_start(self) -> int:
        """Offset of the oldest byte in the ring (``end_offset`` if the ring is empty)."""
        return self._offsets[0] if self._offsets else self.end_offset

    def publish(self, start: int, data: bytes | bytearray, first: int, last: int) -> None:
        """The in-process writer made ``data`` (whole lines) visible at ``start``."""
        if start == self.end_offset:
            self._append(start, Chunk(first, last, bytes(data), ends_with_completed(data)))
        elif start > self.end_offset:
            # the ring lags (it was created between two flushes): read the gap first
            self.refill(start + len(data))

    def refill(self, end: int | None = None) -> bool:
        """Read complete lines past ``end_offset`` from the file into the ring; True if any."""
        stop = self.visible_end() if end is None else end
        grew = False
        while self.end_offset < stop and not self.ended:
            data = os.pread(self.fd, min(REFILL_BLOCK, stop - self.end_offset), self.end_offset)
            last_nl = data.rfind(b"\n")
            if last_nl < 0:
                if len(data) < REFILL_BLOCK:
                    break  # only a partial line so far
                # a line longer than one block: read it whole
                nl = _find_newline(self.fd, self.end_offset + len(data), stop)
                if nl < 0:
                    break
                data = os.pread(self.fd, nl + 1 - self.end_offset, self.end_offset)
                last_nl = len(data) - 1
            body = data[: last_nl + 1]
            count = body.count(b"\n")
            first = self.last_sequence + 1
            self._append(
                self.end_offset, Chunk(first, first + count - 1, body, ends_with_completed(body))
            )
            grew = True
        return grew

    def _append(self, start: int, chunk: Chunk) -> None:
        self._offsets.append(start)
        self._chunks.append(chunk)
        self._bytes += len(chunk.data)
        self.end_offset = start + len(chunk.data)
        self.last_sequence = chunk.last_sequence
        if chunk.ends_run:
            self.ended = True
        # keep at least the newest chunk, however big
        drop = 0
        while len(self._chunks) - drop > 1 and (
            self._bytes > self.max_bytes or len(self._chunks) - drop > self.max_chunks
        ):
            self._bytes -= len(self._chunks[drop].data)
            drop += 1
        if drop:
            del self._offsets[:drop]
            del self._chunks[:drop]
        self.wake()

    def wake(self) -> None:
        """Wake every subscriber waiting on the current generation."""
        self.generation += 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, generation: int) -> None:
        """Return once the tail has moved past ``generation`` (at once if it has already).

        One bare future per waiter (not an ``asyncio.Event``): this runs for every
        subscriber on every flush, and a cancelled waiter only cancels its own future.
        """
        if self.generation != generation:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    @property
    def newest(self) -> tuple[int, Chunk] | None:
        """``(start offset, chunk)`` of the newest chunk in the ring."""
        if not self._chunks:
            return None
        return self._offsets[-1], self._chunks[-1]

    def since(self, offset: int) -> list[tuple[int, Chunk]]:
        """``(start offset, chunk)`` of the ring chunks holding bytes at or after ``offset``."""
        offsets = self._offsets
        if offsets and offsets[-1] == offset:
            return [(offset, self._chunks[-1])]  # the common case: just the newest chunk
        i = max(bisect_right(offsets, offset) - 1, 0)
        return list(zip(offsets[i:], self._chunks[i:], strict=True))

    # ------------------------------------------------------------------ the watcher
    def start(self) -> None:
        """Start the watcher task (refill on notify or every ``poll_interval``)."""
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name=f"tail-{self.run_id}"
            )

    async def stop(self) -> None:
        """Stop the watcher and close the file."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        with contextlib.suppress(OSError):
            os.close(self.fd)

    async def _watch(self) -> None:
        while True:
            signal = self.notifier.signal(self.run_id) if self.notifier is not None else None
            if self.pull is not None:
                try:
                    await self.pull()
                except StorageError:
                    # the shared tier is away: followers wait, the next wake-up retries
                    log.warning("run %s: pulling the live tier failed", self.run_id, exc_info=True)
            self.refill()
            if self.ended:
                return
            if signal is None:
                await asyncio.sleep(self.poll_interval)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await signal.wait()
            if not signal.is_set() and self.pull is None and self.refill():
                metrics.poll_fallback()  # metrics hook: the poll timer, not a notify, found data


def _find_newline(fd: int, start: int, end: int) -> int:
    position = start
    while position < end:
        data = os.pread(fd, min(REFILL_BLOCK, end - position), position)
        if not data:
            return -1
        i = data.find(b"\n")
        if i >= 0:
            return position + i
        position += len(data)
    return -1


def _skip_to(chunk: Chunk, start: int, cursor: Cursor, want: int) -> Chunk | None:
    """The part of ``chunk`` (at ``start``) after both the cursor and ``want``; None if none."""
    data = chunk.data
    pos = cursor.offset - start if cursor.offset > start else 0
    sequence = cursor.sequence + 1 if pos else chunk.first_sequence
    while sequence <= want and pos < len(data):
        pos = data.index(b"\n", pos) + 1
        sequence += 1
    if pos >= len(data):
        return None
    if pos == 0:
        return chunk  # the shared object: its cache is shared too
    return Chunk(sequence, chunk.last_sequence, data[pos:], chunk.ends_run)


def take(tail: Tail, cursor: Cursor, want: int) -> list[Chunk]:
    """The ring's chunks past ``cursor`` and past sequence ``want``; moves the cursor to
    the end of the ring. The caller checks first that the cursor is not behind the ring."""
    offset = cursor.offset
    if offset >= tail.end_offset:
        return []
    newest = tail.newest
    if newest is not None and newest[0] == offset and newest[1].first_sequence > want:
        # the common case, on every flush for every caught-up subscriber: exactly the
        # newest chunk, shared as it is
        chunk = newest[1]
        cursor.sequence, cursor.offset = chunk.last_sequence, offset + len(chunk.data)
        return [chunk]
    parts: list[Chunk] = []
    for start, chunk in tail.since(offset):
        end = start + len(chunk.data)
        if end <= cursor.offset:
            continue
        part = _skip_to(chunk, start, cursor, want)
        cursor.sequence, cursor.offset = chunk.last_sequence, end
        if part is not None:
            parts.append(part)
    return parts


def read_behind(tail: Tail, cursor: Cursor, want: int) -> AsyncIterator[Chunk]:
    """The lines between a cursor that fell behind the ring and the ring, from the file."""
    metrics.follower_behind_ring()  # metrics hook
    return iter_lines(
        tail.source,
        start_sequence=cursor.sequence + 1,
        start_offset=cursor.offset,
        end_offset=tail.ring_start,
        after_sequence=max(want, cursor.sequence),
        cursor=cursor,
    )
