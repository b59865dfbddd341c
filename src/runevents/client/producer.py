"""Batching producers: emit events one by one, they reach the run's log in batches.

``emit`` encodes an event and appends it to a buffer; one sender task posts
the buffer in order, a batch at a time (``POST {run}/events``), when a batch is
full (``max_events`` / ``max_bytes``), after ``linger`` seconds, or on
``flush``. Each batch carries its own ``Idempotency-Key`` on every try, so a
retry after a lost answer, a 503 with ``Retry-After`` (contract section 6) or a
replica moving the run's writer (section 10) appends it exactly once.

The buffer is bounded (``max_buffered_bytes``): past it ``emit`` waits for the
sender (backpressure), so a producer faster than the server never grows
without bound. A batch that cannot be delivered (a 4xx, or retries exhausted)
stops the producer: its events are not in the log, and the next ``emit``,
``flush`` or ``close`` raises :class:`ProducerError`.

:class:`AsyncProducer` runs in the caller's event loop. The sync ``Producer``
(``sync_producer.py``) runs the same sender in the sync client's loop thread.

A producer registers with its client, whose close flushes it first: closing
the client under an open producer would otherwise cut its sender off with
events still buffered. An async producer that nobody closes (neither it nor
its client before the event loop ends) cannot flush; it warns instead of
losing events silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import orjson

from runevents.client.aio import AsyncClient, RunRef, new_key
from runevents.client.errors import ClientError, ProducerError

_dumps = orjson.dumps

#: defaults: a batch is sent at 1,000 events or 1 MiB, or 50 ms after its first event
MAX_EVENTS = 1000
MAX_BYTES = 1024 * 1024
LINGER = 0.05
MAX_BUFFERED_BYTES = 64 * 1024 * 1024

log = logging.getLogger("runevents.client")


def encode_event(
    type: str,
    payload: Mapping[str, Any] | None,
    created_at: str | None,
    source: str | None,
) -> bytes:
    """One NDJSON line of a producer's event (section 6: type, payload, created_at, source)."""
    body = payload if payload.__class__ is dict else dict(payload or {})
    event: dict[str, Any] = {"type": type, "payload": body}
    if created_at is None and source is None:
        return _dumps(event) + b"\n"
    if created_at is not None:
        event["created_at"] = created_at
    if source is not None:
        event["source"] = source
    return _dumps(event) + b"\n"


def console_payload(
    message: str,
    *,
    stream: str = "stdout",
    level: str = "info",
    logger: str | None = None,
    phase: str | None = None,
) -> dict[str, Any]:
    """The payload of a ``console.line`` (section 2)."""
    payload: dict[str, Any] = {"scope": "run", "stream": stream, "level": level}
    payload["message"] = message
    if logger is not None:
        payload["logger"] = logger
    if phase is not None:
        payload["phase"] = phase
    return payload


def completed_payload(status: str, failure: Mapping[str, Any] | None) -> dict[str, Any]:
    """The payload of ``run.completed``."""
    return {"status": status, "failure": dict(failure) if failure else None}


class QueueState(enum.Enum):
    """What queueing one event left behind."""

    QUEUED = 0
    #: at least a full batch is waiting
    FULL = 1
    #: the buffer is over ``max_buffered_bytes``: wait for the sender
    OVER = 2


class AsyncProducer:
    """Batches events of one run. ``async with client.producer(run) as producer:``.

    ``finish_run=True``: leaving the ``async with`` block also ends the run
    (``run.completed``: succeeded, or failed with the exception's type and text).
    """

    def __init__(
        self,
        client: AsyncClient,
        run: RunRef,
        *,
        max_events: int = MAX_EVENTS,
        max_bytes: int = MAX_BYTES,
        linger: float = LINGER,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        finish_run: bool = False,
    ) -> None:
        if max_events < 1 or max_bytes < 1 or linger < 0:
            raise ValueError("max_events and max_bytes must be positive, linger not negative")
        self.client = client
        self.run = run
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.linger = linger
        self.max_buffered_bytes = max_buffered_bytes
        self.finish_run = finish_run
        #: events delivered so far (acknowledged by the server)
        self.delivered = 0
        # the buffer may be filled from another thread (the sync Producer): a lock
        self._lock = threading.Lock()
        self._space_changed = threading.Condition(self._lock)
        self._lines: list[bytes] = []
        self._size = 0
        #: events and bytes of the batch being posted: the head of ``_lines``
        self._sending_count = self._sending_bytes = 0
        self._flushing = 0
        self._closing = False
        self._error: ProducerError | None = None
        #: ``_error`` was raised to the caller once: the client's close need not repeat it
        self.error_reported = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._url: str | None = None
        #: aclose() ran (or is running): the client's close leaves it alone
        self.closed = False
        self._warned = False
        client._producers.add(self)

    # ------------------------------------------------------------------ emitting
    async def emit(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        created_at: str | None = None,
        source: str | None = None,
    ) -> None:
        """Queue one event (waits only while the buffer is over its bound)."""
        if self._task is None:
            self._start()
        if created_at is None and source is None and payload.__class__ is dict:
            line = _dumps({"type": type, "payload": payload}) + b"\n"  # the common case
        else:
            line = encode_event(type, payload, created_at, source)
        state = self._add(line)
        if state is QueueState.QUEUED:
            return
        if state is QueueState.FULL:
            # A full batch waits: yield until the sender has taken it. The caller
            # then fills the next one while the server works on this one (a tight
            # loop of emits would otherwise never let the sender run, and buffer
            # everything until the bound).
            while True:
                with self._lock:
                    if not self._pending_full() or self._error is not None or self._closing:
                        break
                await self._wait_changed()
        elif state is QueueState.OVER:
            while True:
                with self._lock:
                    if self._size <= self.max_buffered_bytes or self._error is not None:
                        break
                await self._wait_changed()

    async def console(self, message: str, **fields: Any) -> None:
        """Queue a ``console.line`` (``stream``, ``level``, ``logger``, ``phase``)."""
        await self.emit("console.line", console_payload(message, **fields))

    async def flush(self) -> None:
        """Send everything queued so far and wait until the server has it."""
        self._start()
        self._check()
        self._flushing += 1
        try:
            self._signal()
            while True:
                with self._lock:
                    if self._error is not None or not self._lines:
                        break
                await self._wait_changed()
        finally:
            self._flushing -= 1
        self._check()

    async def complete(
        self, status: str = "succeeded", failure: Mapping[str, Any] | None = None
    ) -> None:
        """End the run: queue ``run.completed`` and flush."""
        await self.emit("run.completed", completed_payload(status, failure))
        await self.flush()

    async def aclose(self) -> None:
        """Flush and stop the sender. Raises ProducerError if events could not be delivered."""
        self.closed = True
        if self._task is None:
            self._check()
            return
        try:
            await self.flush()
        finally:
            self._closing = True
            self._signal()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self.finish_run and self._error is None:
            if exc is None:
                await self.emit("run.completed", completed_payload("succeeded", None))
            else:
                failure = {"stage": "run", "code": type(exc).__name__, "message": str(exc)}
                await self.emit("run.completed", completed_payload("failed", failure))
        await self.aclose()

    def runs_here(self) -> bool:
        """Its sender (if started) runs in the running event loop: it can be closed from here."""
        return self._loop is None or _in_loop(self._loop)

    def _warn_lost(self, why: str) -> None:
        """Say that buffered events will never be sent (once; no exception: it may run in GC)."""
        lost = len(self._lines)  # no lock: this may run in GC, on any thread
        if self._warned or self.closed or self._error is not None or not lost:
            return
        self._warned = True
        message = (
            f"a runevents producer {why} with {lost} events not delivered: they are lost; "
            "close it (or its client) before the event loop ends"
        )
        with contextlib.suppress(Exception):  # at interpreter exit logging may be gone
            log.warning(message)  # seen by default, unlike a ResourceWarning
            warnings.warn(message, ResourceWarning, source=self, stacklevel=2)

    def __del__(self) -> None:
        self._warn_lost("was garbage-collected")

    # ------------------------------------------------------------------ the buffer
    def _add(self, line: bytes) -> QueueState:
        """Append a line (any thread); whether a batch just filled or the buffer is over.

        The hot path of every emit: kept to a few attribute reads.
        """
        with self._lock:
            if self._error is not None:
                self.error_reported = True
                raise self._error
            if self._closing:
                raise ProducerError("the producer is closed")
            lines = self._lines
            lines.append(line)
            size = self._size = self._size + len(line)
            # what waits behind the batch being posted, if one is
            pending = len(lines) - self._sending_count
            pending_size = size - self._sending_bytes
            if (
                pending > 1
                and pending < self.max_events
                and pending_size < self.max_bytes
                and size <= self.max_buffered_bytes
            ):
                return QueueState.QUEUED
            filled = (pending == self.max_events) or (
                pending_size >= self.max_bytes > pending_size - len(line)
            )
            over = size > self.max_buffered_bytes
        if pending == 1 or filled:
            # the sender sleeps until there is work; a full batch goes at once
            self._signal()
        if over:
            return QueueState.OVER
        return QueueState.FULL if filled else QueueState.QUEUED

    def _pending_full(self) -> bool:
        """A full batch waits behind the one being posted (the caller holds the lock)."""
        pending = len(self._lines) - self._sending_count
        return pending >= self.max_events or self._size - self._sending_bytes >= self.max_bytes

    def _take(self) -> tuple[bytes, int]:
        """The next batch (the caller is the sender)."""
        with self._lock:
            count, size = 0, 0
            for line in self._lines:
                if count and (count >= self.max_events or size + len(line) > self.max_bytes):
                    break
                count += 1
                size += len(line)
            body = b"".join(self._lines[:count])
            self._sending_count, self._sending_bytes = count, len(body)
            self._space_changed.notify_all()  # a sync emitter waits for this batch to go
            return body, count

    def _done(self, count: int, size: int) -> None:
        with self._lock:
            del self._lines[:count]
            self._size -= size
            self._sending_count = self._sending_bytes = 0
            self.delivered += count
            self._space_changed.notify_all()
        self._notify_changed()

    def _fail(self, error: ProducerError) -> None:
        with self._lock:
            self._error = error
            self._lines.clear()
            self._size = 0
            self._sending_count = self._sending_bytes = 0
            self._space_changed.notify_all()
        self._notify_changed()

    def _check(self) -> None:
        if self._error is not None:
            self.error_reported = True
            raise self._error

    # ------------------------------------------------------------------ the sender
    def _start(self) -> None:
        if self._task is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = loop.create_task(self._send_loop(), name="runevents-producer")

    def _signal(self) -> None:
        """Wake the sender (from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        if _in_loop(loop):
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def _notify_changed(self) -> None:
        changed = self._changed
        if changed is not None:
            changed.set()  # the sender runs in the loop

    async def _wait_changed(self) -> None:
        assert self._changed is not None
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await self._changed.wait()

    def _ready(self) -> bool:
        with self._lock:
            if not self._lines:
                return False
            return (
                self._flushing > 0
                or self._closing
                or len(self._lines) >= self.max_events
                or self._size >= self.max_bytes
            )

    async def _send_loop(self) -> None:
        try:
            await self._send_all()
        except asyncio.CancelledError:
            # asyncio.run() ending, or the loop's owner cancelling everything
            self._warn_lost("was cancelled (its event loop ended?)")
            raise

    async def _send_all(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while True:
            with self._lock:
                empty = not self._lines
            if empty:
                if self._closing:
                    return
                wake.clear()
                with self._lock:
                    empty = not self._lines
                if empty:
                    await wake.wait()
                continue
            if not self._ready() and self.linger > 0:
                # linger: let a batch fill up, unless flushed or filled first
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.linger):
                        while not self._ready():
                            await wake.wait()
                            wake.clear()
            body, count = self._take()
            self._notify_changed()  # an emitter may wait for this batch to be taken
            if not count:
                continue
            try:
                if self._url is None:
                    self._url = await self.client._path(self.run) + "/events"
                await self.client._append_body(self._url, body, new_key())
            except ClientError as exc:
                self._fail(ProducerError(f"a batch of {count} events was not delivered: {exc}"))
                return
            except Exception as exc:  # the sender must never die silently
                self._fail(ProducerError(f"the producer stopped: {exc!r}"))
                return
            self._done(count, len(body))


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
