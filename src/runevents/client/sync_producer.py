"""The sync producer: :class:`Producer`, ``client.producer(run)`` of the sync ``Client``.

Separate from ``producer.py`` (the batching and sending, :class:`AsyncProducer`)
because what is here is only the thread side: it runs the async producer's
sender in the sync client's loop thread, lets ``emit`` be called from any
thread (waiting on the buffer's condition, not on the loop), and flushes when
the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from runevents.client.aio import RunRef
from runevents.client.producer import (
    AsyncProducer,
    QueueState,
    completed_payload,
    console_payload,
    encode_event,
)

if TYPE_CHECKING:
    from runevents.client.sync import Client

_dumps = orjson.dumps

#: a sync emitter lets the posting thread run every this many events (see Producer.emit)
YIELD_EVERY = 32


class Producer:
    """The sync producer (``client.producer(run)`` of the sync :class:`Client`).

    ``emit`` may be called from any thread; it returns at once unless the
    buffer is over its bound. The producer flushes on ``close``, on leaving its
    ``with`` block, when its client closes, and when the process exits.
    """

    def __init__(self, client: Client, run: RunRef, **options: Any) -> None:
        self.client = client
        self._inner = AsyncProducer(client._async, run, **options)
        self._since_yield = 0
        self.finish_run = self._inner.finish_run
        self._closed = False
        client._portal.call(self._start())
        self._exit_hook = _exit_hook(weakref.ref(self))
        atexit.register(self._exit_hook)

    async def _start(self) -> None:
        self._inner._start()

    @property
    def delivered(self) -> int:
        """Events the server has acknowledged."""
        return self._inner.delivered

    def emit(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        created_at: str | None = None,
        source: str | None = None,
    ) -> None:
        """Queue one event (blocks only while the buffer is over its bound)."""
        inner = self._inner
        if created_at is None and source is None and payload.__class__ is dict:
            # the common case, inline: this runs once per event on the caller's thread
            line = _dumps({"type": type, "payload": payload}) + b"\n"
        else:
            line = encode_event(type, payload, created_at, source)
        state = inner._add(line)
        if state is QueueState.QUEUED:
            if inner._sending_count:
                self._since_yield += 1
                if self._since_yield >= YIELD_EVERY:
                    # A batch is being posted on the loop thread, which needs the GIL
                    # at each step of its I/O; a tight loop of emits would hold it for
                    # the whole switch interval (5 ms) each time. Hand it over now.
                    self._since_yield = 0
                    time.sleep(0)
            return
        with inner._space_changed:
            if state is QueueState.FULL:
                # Wait until the sender takes this batch (it posts the one before
                # first). Filling a second batch meanwhile would only compete for
                # the GIL with the loop thread doing the posting: measured, an
                # emitter that never waits gets a third of the throughput.
                while inner._pending_full() and inner._error is None and not inner._closing:
                    inner._space_changed.wait(0.5)
            while inner._size > inner.max_buffered_bytes and inner._error is None:
                inner._space_changed.wait(0.5)

    def console(self, message: str, **fields: Any) -> None:
        """Queue a ``console.line`` (``stream``, ``level``, ``logger``, ``phase``)."""
        self.emit("console.line", console_payload(message, **fields))

    def flush(self) -> None:
        """Send everything queued so far and wait until the server has it."""
        self.client._portal.call(self._inner.flush())

    def complete(self, status: str = "succeeded", failure: Mapping[str, Any] | None = None) -> None:
        """End the run: queue ``run.completed`` and flush."""
        self.emit("run.completed", completed_payload(status, failure))
        self.flush()

    def close(self) -> None:
        """Flush and stop. Raises ProducerError if events could not be delivered."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._exit_hook)
        if self.client._portal.closed:
            return  # the client's close flushed and closed the async producer first
        self.client._portal.call(self._inner.aclose())

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self.finish_run and self._inner._error is None and not self._closed:
            if exc is None:
                self.emit("run.completed", completed_payload("succeeded", None))
            else:
                failure = {"stage": "run", "code": type(exc).__name__, "message": str(exc)}
                self.emit("run.completed", completed_payload("failed", failure))
        self.close()


def _exit_hook(ref: weakref.ReferenceType[Producer]) -> Any:
    def flush_at_exit() -> None:
        producer = ref()
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close()

    return flush_at_exit
