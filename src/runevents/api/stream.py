"""The ASGI response that carries an SSE stream of pre-encoded bytes.

Why not sse-starlette's ``EventSourceResponse``: it wraps every send in an
anyio cancel scope for its send timeout, about 25 µs a send on this hardware.
A live run followed by 500 clients at 100 events/s is 50,000 sends a second,
so that alone would take most of a CPU. Here a send costs a timestamp and a
lock; one watchdog task per stream wakes every :data:`TICK` seconds to

* send ``: keepalive`` when nothing was sent for ``keepalive_seconds``,
* drop the client when one send has been stuck for ``send_timeout`` seconds
  (a client that stopped reading: the log reader is paused with it, so nothing
  piles up in memory; the client resumes later with ``Last-Event-ID``),
* end the stream when the server shuts down, so uvicorn's drain never waits
  for a stream that would never end (detected like sse-starlette does: its
  ``AppStatus`` flag, set by its patch of uvicorn's signal handler, or the
  uvicorn server behind the SIGTERM handler).

A disconnect from the client ends the stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Mapping

from sse_starlette.sse import AppStatus
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from runevents import metrics

log = logging.getLogger(__name__)

#: how often the watchdog looks at a stream (seconds)
TICK = 0.5
#: the idle comment
KEEPALIVE = b": keepalive\n\n"
#: bound on the last message to a client we are dropping anyway (seconds)
FAREWELL_TIMEOUT = 1.0


def server_stopping() -> bool:
    """True once the hosting uvicorn server began to shut down."""
    if AppStatus.should_exit:
        return True
    # uvicorn installs its bound ``handle_exit`` as the SIGTERM handler while serving
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


class EventStream(Response):
    """``text/event-stream`` response of ``body`` (already encoded SSE bytes).

    A Starlette ``Response`` (like ``StreamingResponse``) so FastAPI passes it through.
    """

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        headers: Mapping[str, str],
        keepalive_seconds: float,
        send_timeout: float,
        status_code: int = 200,
    ) -> None:
        self.body_iterator = body
        self.status_code = status_code
        self.background = None
        self.raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.keepalive_seconds = keepalive_seconds
        self.send_timeout = send_timeout
        self._lock = asyncio.Lock()
        self._last_send = 0.0
        self._sending_since: float | None = None
        #: why the stream ended: "end", "disconnect", "stuck", "shutdown"
        self.outcome = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await self._close_body()
            return
        loop = asyncio.get_running_loop()
        self._last_send = loop.time()
        stream = asyncio.create_task(self._stream(send))
        watchdog = asyncio.create_task(self._watch(send))
        listener = asyncio.create_task(self._listen(receive))
        try:
            await asyncio.wait({stream, watchdog, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, watchdog, listener):
                task.cancel()
            results = await asyncio.gather(stream, watchdog, listener, return_exceptions=True)
            await self._close_body()
        for result in results:
            if isinstance(result, OSError):
                # the client went away in the middle of a send
                log.debug("SSE client gone: %s", result)
            elif isinstance(result, Exception):
                log.warning("SSE stream failed: %s: %s", type(result).__name__, result)
        if self.outcome in {"shutdown", "stuck"} or (not self.outcome and stream.cancelled()):
            # end the HTTP response properly where the client may still listen
            with contextlib.suppress(Exception):
                async with asyncio.timeout(FAREWELL_TIMEOUT):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, send: Send, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            self._sending_since = loop.time()
            await send({"type": "http.response.body", "body": data, "more_body": True})
            self._sending_since = None
            self._last_send = loop.time()

    async def _stream(self, send: Send) -> None:
        async for data in self.body_iterator:
            await self._send(send, data)
        async with self._lock:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.outcome = "end"

    async def _watch(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        tick = min(TICK, self.keepalive_seconds, self.send_timeout / 2)
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            if server_stopping():
                self.outcome = "shutdown"
                return
            started = self._sending_since
            if started is not None:
                if now - started > self.send_timeout:
                    log.info("dropping an SSE client that took no data for %.1f s", now - started)
                    metrics.sse_send_timeout()
                    self.outcome = "stuck"
                    return
            elif now - self._last_send >= self.keepalive_seconds and not self._lock.locked():
                try:
                    # bounded: this task is also the one that notices a stuck client
                    async with asyncio.timeout(self.send_timeout):
                        await self._send(send, KEEPALIVE)
                except TimeoutError:
                    metrics.sse_send_timeout()
                    self.outcome = "stuck"
                    return

    async def _listen(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.outcome = "disconnect"
                return

    async def _close_body(self) -> None:
        aclose = getattr(self.body_iterator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
