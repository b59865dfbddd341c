"""The SSE body of a Durable Streams read (``live=sse``, protocol section 5.8).

Each chunk of the run's log becomes one ``data`` event -- a JSON array of the
stored lines, one ``data:`` line per event -- followed by a ``control`` event
with ``streamNextOffset``, ``streamCursor`` and ``upToDate``. The chunk holding
``run.completed`` ends with ``streamClosed: true`` and the response ends; a
client must not reconnect after it. A reader already at the end of an ended
run gets that closing control event at once.

The connection is ended after :data:`CONNECTION_SECONDS` (the protocol asks for
about a minute, so CDNs can collapse readers); the client reconnects from the
last ``streamNextOffset``. Waiting happens in ``RunManager.follow_events``,
the same live tail every SSE follower shares.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson

from runevents import metrics
from runevents.api.sse import close_quietly
from runevents.eventlog import Chunk
from runevents.logview import LogEnd

#: headers of a Durable Streams SSE answer
DS_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
#: the server ends a stream after this long; the client resumes from its offset
CONNECTION_SECONDS = 60.0


def data_event(lines: list[bytes]) -> bytes:
    """``event: data`` carrying ``lines`` (stored JSON, no newline inside) as one array."""
    body = b",\ndata: ".join(lines)
    return b"event: data\ndata: [\ndata: " + body + b"\ndata: ]\n\n"


def control_event(
    next_offset: str, *, cursor: str | None, up_to_date: bool, closed: bool = False
) -> bytes:
    """``event: control`` with the offset to resume from and the stream's state."""
    fields: dict[str, object] = {"streamNextOffset": next_offset}
    if closed:
        fields["streamClosed"] = True
        fields["upToDate"] = True
    else:
        if cursor is not None:
            fields["streamCursor"] = cursor
        if up_to_date:
            fields["upToDate"] = True
    return b"event: control\ndata: " + orjson.dumps(fields) + b"\n\n"


def _lines_after(chunk: Chunk, position: int) -> list[bytes]:
    lines = chunk.data.split(b"\n")[:-1]
    skip = position - chunk.first_sequence + 1
    return lines[skip:] if skip > 0 else lines


async def ds_frames(
    chunks: AsyncIterator[Chunk],
    start: int,
    end: LogEnd,
    *,
    encode_offset: Callable[[int], str],
    next_cursor: Callable[[], str],
    max_seconds: float = CONNECTION_SECONDS,
) -> AsyncIterator[bytes]:
    """The SSE body: data/control pairs from ``start``; ``end``: the log's end at the request."""
    # a follower like one of the events stream (contract 13's gauge), for as long as it is open
    with metrics.sse_following():
        position = start
        try:
            if end.ended and start >= end.last_sequence:
                yield control_event(encode_offset(start), cursor=None, up_to_date=True, closed=True)
                return
            if start >= end.last_sequence:
                # nothing to replay: say at once that the client is caught up
                yield control_event(encode_offset(start), cursor=next_cursor(), up_to_date=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max_seconds
            while (remaining := deadline - loop.time()) > 0:
                try:
                    chunk = await asyncio.wait_for(anext(chunks), remaining)
                except TimeoutError:
                    return  # time to reconnect (the client resumes from its last offset)
                except StopAsyncIteration:
                    # the follower ends without a chunk only past run.completed
                    yield control_event(
                        encode_offset(position), cursor=None, up_to_date=True, closed=True
                    )
                    return
                lines = _lines_after(chunk, position)
                if not lines:
                    continue
                position = chunk.last_sequence
                yield data_event(lines) + control_event(
                    encode_offset(position),
                    cursor=next_cursor(),
                    # replayed chunks before the end the request saw are not up to date;
                    # live ones are delivered as they are made visible
                    up_to_date=position >= end.last_sequence,
                    closed=chunk.ends_run,
                )
                if chunk.ends_run:
                    return
        finally:
            await close_quietly(chunks)
