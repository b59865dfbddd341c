"""Server-side search over a run's console lines (the UI's "search in log").

A streaming scan: it reads the log forward from a position, in constant
memory, and stops after ``limit`` matches, so it covers lines the browser has
not loaded. Cheap byte-level prefilters skip most lines before any JSON is
decoded.
"""

from __future__ import annotations

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
    resumes after ``next_after_sequence``.
    """
    needle = q.casefold() if q else None
    needle_bytes = _byte_needle(needle)
    matches: list[bytes] = []
    position = after_sequence
    async for chunk in chunks:
        for offset, line in enumerate(chunk.data.split(b"\n")[:-1]):
            sequence = chunk.first_sequence + offset
            if b'"console.line"' not in line or (
                needle_bytes is not None and needle_bytes not in line.lower()
            ):
                position = sequence
                continue
            if len(matches) >= limit:
                return matches, position, True
            position = sequence
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
            matches.append(line)
    return matches, position, False
