"""Read-only scans of a run's log for the run page: its outline, match counts, plain text.

* :func:`outline_events` picks the events the page folds the console by and
  navigates errors with: phase starts and ends, ``run.completed``, ``run.error``,
  console lines that open or close a section (GitHub's ``::group::NAME`` /
  ``::endgroup::``, GitLab's ``section_start:TS:NAME`` / ``section_end:TS:NAME``)
  and console lines that are errors (level ``error``, or a traceback or
  ``error:`` line). The page feeds them, in order, to the same code that reads
  the live stream, so a finished run and a live one are folded alike.
* :func:`count_matches` counts what the console search would find (the whole
  log, no cap), for the page's "n of m".
* :func:`console_text` is the raw log: console messages, one per line, ANSI
  codes removed, as GitHub's "View raw logs".

All three stream the log forward in constant memory with cheap byte-level
prefilters before any JSON is decoded, and do the scanning of each chunk in a
worker thread: a scan of a million-line log must not hold up the event loop
(measured: the page's first lines waited for the outline of a 200,000-line
log, 4 s, when the scan ran on the loop).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from runevents.eventlog import Chunk

#: event types that are always part of the outline
OUTLINE_TYPES = frozenset(
    {
        "run.phase.started",
        "run.phase.completed",
        "build.phase.started",
        "build.phase.completed",
        "run.error",
        "run.completed",
    }
)
#: bytes (lowercase) that may put a line in the outline: a prefilter over a
#: whole chunk with bytes.find (C speed); each hit's line is then decoded and
#: checked exactly. (A regex alternation was 5x slower on a 200,000-line log.)
_NEEDLES = (
    b".phase.",
    b'"run.error"',
    b'"run.completed"',
    b"::group::",
    b"::endgroup::",
    b"section_start:",
    b"section_end:",
    b"error",
    b"fatal",
    b"exception",
    b"traceback",
)
#: a console line that reads as an error whatever its level (stripped of ANSI);
#: web/static/sections.js has the same pattern
ERROR_TEXT = re.compile(
    r"^\s*(Traceback \(most recent call last\)|##\[error\]|(error|fatal)\b\s*[:!]"
    r"|[A-Za-z_][\w.]*(Error|Exception):\s)",
    re.I,
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-Z\\-_]")


class _Event(msgspec.Struct):
    type: str
    payload: dict[str, Any] = {}


_decode = msgspec.json.Decoder(_Event).decode


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def is_error_line(payload: dict[str, Any]) -> bool:
    """A console line the page lists under "first error / next error"."""
    if payload.get("level") == "error":
        return True
    message = payload.get("message")
    return isinstance(message, str) and bool(ERROR_TEXT.match(strip_ansi(message)))


def is_section_marker(message: object) -> bool:
    if not isinstance(message, str):
        return False
    text = strip_ansi(message).lstrip()
    return text.startswith(("::group::", "::endgroup::", "section_start:", "section_end:"))


def _lines(chunk: Chunk) -> list[tuple[int, bytes]]:
    return [(chunk.first_sequence + k, line) for k, line in enumerate(chunk.data.split(b"\n")[:-1])]


def _outline_of(chunk: Chunk, after_sequence: int) -> list[tuple[int, bytes]]:
    """The outline's (sequence, line) pairs in one chunk (runs in a worker thread)."""
    data = chunk.data
    low = data.lower()  # same length: positions carry over
    hits: set[int] = set()
    for needle in _NEEDLES:
        at = low.find(needle)
        while at >= 0:
            hits.add(low.rfind(b"\n", 0, at) + 1)
            end = low.find(b"\n", at)
            if end < 0:
                break
            at = low.find(needle, end)
    starts = sorted(hits)
    found: list[tuple[int, bytes]] = []
    sequence = chunk.first_sequence
    counted = 0
    for start in starts:
        sequence += data.count(b"\n", counted, start)
        counted = start
        end = data.find(b"\n", start)
        if sequence <= after_sequence or end < 0:
            continue
        line = data[start:end]
        event = _decode(line)
        if event.type == "console.line":
            message = event.payload.get("message")
            wanted = is_section_marker(message) or is_error_line(event.payload)
        else:
            wanted = event.type in OUTLINE_TYPES
        if wanted:
            found.append((sequence, line))
    return found


async def outline_events(
    chunks: AsyncIterator[Chunk], *, after_sequence: int, limit: int
) -> tuple[list[bytes], int, bool]:
    """The outline's stored lines after ``after_sequence``, at most ``limit``.

    Returns (lines, next_after_sequence, has_more), like a search page.
    """
    found: list[bytes] = []
    position = after_sequence
    async for chunk in chunks:
        for sequence, line in await asyncio.to_thread(_outline_of, chunk, after_sequence):
            if len(found) >= limit:
                return found, position, True
            found.append(line)
            position = sequence
        position = max(position, chunk.last_sequence)
    return found, position, False


def _count_in(
    chunk: Chunk,
    needle: str | None,
    needle_bytes: bytes | None,
    stream: str | None,
    level: str | None,
) -> int:
    """Console lines of one chunk matching as ``search.search_console`` matches (a thread)."""
    total = 0
    for line in chunk.data.split(b"\n")[:-1]:
        if b'"console.line"' not in line:
            continue
        if needle_bytes is not None and needle_bytes not in line.lower():
            continue
        event = _decode(line)
        if event.type != "console.line":
            continue
        payload = event.payload
        if (stream and payload.get("stream") != stream) or (
            level and payload.get("level") != level
        ):
            continue
        message = payload.get("message")
        if needle and not (isinstance(message, str) and needle in message.casefold()):
            continue
        total += 1
    return total


async def count_matches(
    chunks: AsyncIterator[Chunk], *, q: str | None, stream: str | None, level: str | None
) -> tuple[int, int]:
    """(console lines matching like the search route, last sequence scanned)."""
    from runevents.search.console import _byte_needle

    needle = q.casefold() if q else None
    needle_bytes = _byte_needle(needle)
    total = 0
    position = 0
    async for chunk in chunks:
        total += await asyncio.to_thread(_count_in, chunk, needle, needle_bytes, stream, level)
        position = chunk.last_sequence
    return total, position


def _text_of(chunk: Chunk) -> bytes:
    out: list[str] = []
    for _, line in _lines(chunk):
        if b'"console.line"' not in line:
            continue
        event = _decode(line)
        if event.type != "console.line":
            continue
        message = event.payload.get("message")
        if isinstance(message, str):
            out.append(strip_ansi(message).replace("\r", ""))
    return ("\n".join(out) + "\n").encode() if out else b""


async def console_text(chunks: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
    """The console messages of the log, ANSI removed, one per line (UTF-8)."""
    async for chunk in chunks:
        text = await asyncio.to_thread(_text_of, chunk)
        if text:
            yield text
