"""Server-Sent Events: pure frame encoding, and the streaming response (contract section 5).

Every event becomes one frame::

    id: <sequence>
    event: ade.event
    data: <the stored NDJSON line, byte for byte>

The stored line is never re-serialized: JSON escapes every control character,
so a line holds no ``\\n`` and the only splitting is on ``\\n`` between lines
(never ``str.splitlines()``, which would also split on U+2028 or a lone ``\\r``
inside a string -- JSON leaves those unescaped).

Frames are encoded per :class:`~runevents.eventlog.Chunk`, not per event, and
memoized in ``chunk.cache["sse"]``: subscribers that are caught up share the
same chunk object, so 500 clients following one run encode each chunk once.

The response is :class:`~runevents.api.stream.EventStream` fed with these
pre-encoded bytes: keepalive comments while idle, a watchdog that drops a
stuck client (the log is read as the client takes it, so nothing buffers
without bound), and ending open streams when uvicorn shuts down.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from runevents import metrics
from runevents.api.stream import EventStream
from runevents.eventlog import Chunk

log = logging.getLogger(__name__)

#: the SSE event name of every stored event
EVENT_NAME = b"ade.event"
#: the first bytes of every stream, sent at once: proxies and clients see it open,
#: and a disconnected EventSource retries after 3 s
OPENING = b"retry: 3000\n\n"
#: key of the memoized frames in ``Chunk.cache``
CACHE_KEY = "sse"
#: headers of every SSE response (Content-Type without a charset parameter, on purpose)
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

_FRAME_HEAD = b"id: %d\nevent: " + EVENT_NAME + b"\ndata: "


def encode_lines(data: bytes, first_sequence: int) -> bytes:
    """The SSE frames of ``data``: complete NDJSON lines, the first one with ``first_sequence``.

    Sequences are positional (a chunk is gap-free), so ``data`` need not be parsed.
    """
    lines = data.split(b"\n")
    if lines.pop():
        raise ValueError("chunk data must end with a newline")
    count = len(lines)
    # [head, line, "\n\n"] per event, filled by slice assignment: the loop runs in C
    parts = [b"\n\n"] * (3 * count)
    head = _FRAME_HEAD
    parts[0::3] = [head % sequence for sequence in range(first_sequence, first_sequence + count)]
    parts[1::3] = lines
    return b"".join(parts)


def chunk_frames(chunk: Chunk, position: int = 0) -> bytes:
    """The frames of the events of ``chunk`` with a sequence above ``position``.

    A whole chunk is encoded once and memoized in its cache; a chunk that
    straddles ``position`` (rare: only at the start of a stream) is trimmed and
    not memoized.
    """
    if chunk.last_sequence <= position:
        return b""
    if chunk.first_sequence > position:
        cached: bytes | None = chunk.cache.get(CACHE_KEY)
        if cached is None:
            cached = chunk.cache[CACHE_KEY] = encode_lines(chunk.data, chunk.first_sequence)
        return cached
    skip = position - chunk.first_sequence + 1
    start = 0
    for _ in range(skip):
        start = chunk.data.index(b"\n", start) + 1
    return encode_lines(chunk.data[start:], position + 1)


def resolve_position(*positions: int | None) -> int:
    """The stream position: the furthest along of the given ones (0 = from the start)."""
    return max([p for p in positions if p is not None] + [0])


async def frames(chunks: AsyncIterator[Chunk], position: int) -> AsyncIterator[bytes]:
    """The body of an SSE response: the opening, then the frames of ``chunks``.

    Ends after the chunk that holds ``run.completed``; always closes ``chunks``
    (which releases the log reader), also when the client goes away.
    """
    with metrics.sse_following():
        try:
            yield OPENING
            async for chunk in chunks:
                data = chunk_frames(chunk, position)
                if data:
                    position = chunk.last_sequence
                    yield data
                if chunk.ends_run:
                    break
        except Exception:
            # headers are out: the only thing left to do is to end the stream; the
            # client reconnects with Last-Event-ID and resumes where it stopped
            log.exception("SSE stream ended by an error after sequence %d", position)
        finally:
            await close_quietly(chunks)


async def close_quietly(iterator: AsyncIterator[Any]) -> None:
    """``aclose()`` an async iterator if it has one (releases a log reader), ignoring errors."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def sse_response(
    chunks: AsyncIterator[Chunk],
    position: int,
    *,
    keepalive_seconds: float,
    send_timeout: float,
    status_code: int = 200,
) -> EventStream:
    """A streaming ``text/event-stream`` response of ``chunks`` after ``position``."""
    return EventStream(
        frames(chunks, position),
        headers=HEADERS,
        keepalive_seconds=keepalive_seconds,
        send_timeout=send_timeout,
        status_code=status_code,
    )
