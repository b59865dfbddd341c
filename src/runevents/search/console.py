"""Server-side search over a run's console lines (the UI's "search in log").

A streaming scan: it reads the log forward from a position, in constant
memory, and stops after ``limit`` matches, so it covers lines the browser has
not loaded. Cheap byte-level prefilters skip most lines before any JSON is
decoded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from runevents.eventlog import Chunk


class _ConsoleLine(msgspec.Struct):
    type: str
    payload: dict[str, Any] = {}


_decode = msgspec.json.Decoder(_ConsoleLine).decode


def _byte_needle(needle: str | None) -> bytes | None:
    """The needle as it appears in the stored JSON bytes, when that is certain.

    Only plain printable ASCII without ``"`` or ``\\`` is written unescaped by
    the encoder; anything else is matched after decoding only.
    """
    if not needle or not needle.isascii() or not needle.isprintable():
        return None
    if '"' in needle or "\\" in needle:
        return None
    return needle.encode()


#: chunks larger than this are matched in a worker thread (decoding holds the GIL,
#: but the event loop gets it back at every switch interval instead of waiting)
INLINE_BYTES = 64 * 1024


def _match_chunk(
    chunk: Chunk,
    needle: str | None,
    needle_bytes: bytes | None,
    stream: str | None,
    level: str | None,
    room: int,
) -> list[tuple[int, bytes]]:
    """``(sequence, line)`` of the matching lines of one chunk, at most ``room``."""
    matches: list[tuple[int, bytes]] = []
    for offset, line in enumerate(chunk.data.split(b"\n")[:-1]):
        # a byte test only for ASCII lines: casefolding other text can yield ASCII
        if b'"console.line"' not in line or (
            needle_bytes is not None and needle_bytes not in line.lower() and line.isascii()
        ):
            continue
        event = _decode(line)
        if event.type != "console.line":
            continue
        payload = event.payload
        if stream and payload.get("stream") != stream:
            continue
        if level and payload.get("level") != level:
            continue
        message = payload.get("message")
        if needle and not (isinstance(message, str) and needle in message.casefold()):
            continue
        matches.append((chunk.first_sequence + offset, line))
        if len(matches) >= room:
            break
    return matches


async def search_console(
    chunks: AsyncIterator[Chunk],
    *,
    q: str | None,
    stream: str | None,
    level: str | None,
    after_sequence: int,
    limit: int,
) -> tuple[list[bytes], int, bool]:
    """Console lines in ``chunks`` matching ``q`` (case-insensitive), ``stream`` and ``level``.

    Returns (matching lines, next_after_sequence, has_more): the next search
    resumes after ``next_after_sequence``. Large chunks are matched off the
    event loop.
    """
    needle = q.casefold() if q else None
    needle_bytes = _byte_needle(needle)
    matches: list[bytes] = []
    position = after_sequence
    async for chunk in chunks:
        # one match more than the page tells whether there is more
        args = (chunk, needle, needle_bytes, stream, level, limit - len(matches) + 1)
        if len(chunk.data) > INLINE_BYTES:
            found = await asyncio.to_thread(_match_chunk, *args)
        else:
            found = _match_chunk(*args)
        for sequence, line in found:
            if len(matches) >= limit:
                return matches, sequence - 1, True
            matches.append(line)
        position = chunk.last_sequence
    return matches, position, False
