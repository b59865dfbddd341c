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
prefilters before any JSON is decoded.
"""

from __future__ import annotations

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
#: bytes that may mark a console line as part of the outline (prefilter only)
_CONSOLE_MARKERS = (b"::group::", b"::endgroup::", b"section_start:", b"section_end:")
_ERROR_HINTS = (b"Traceback", b"rror", b"RROR", b"atal", b"ATAL", b"xception")
#: a console line that reads as an error whatever its level (stripped of ANSI)
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


async def outline_events(
    chunks: AsyncIterator[Chunk], *, after_sequence: int, limit: int
) -> tuple[list[bytes], int, bool]:
    """The outline's stored lines after ``after_sequence``, at most ``limit``.

    Returns (lines, next_after_sequence, has_more), like a search page.
    """
    found: list[bytes] = []
    position = after_sequence
    async for chunk in chunks:
        for sequence, line in _lines(chunk):
            if sequence <= after_sequence:
                continue
            is_console = b'"console.line"' in line
            if is_console:
                if not any(m in line for m in _CONSOLE_MARKERS) and not any(
                    h in line for h in _ERROR_HINTS
                ):
                    position = sequence
                    continue
            elif not any(t.encode() in line for t in OUTLINE_TYPES):
                position = sequence
                continue
            event = _decode(line)
            wanted = (
                (is_section_marker(event.payload.get("message")) or is_error_line(event.payload))
                if event.type == "console.line"
                else event.type in OUTLINE_TYPES
            )
            if wanted:
                if len(found) >= limit:
                    return found, position, True
                found.append(line)
            position = sequence
    return found, position, False


async def count_matches(
    chunks: AsyncIterator[Chunk], *, q: str | None, stream: str | None, level: str | None
) -> tuple[int, int]:
    """(console lines matching like the search route, last sequence scanned)."""
    from runevents.search import search_console

    total = 0
    position = 0
    # the search scan pages by `limit`; one huge page counts the whole log in one
    # pass, and only the count of each chunk's matches is kept (constant memory)
    async for chunk in chunks:

        async def one(c: Chunk = chunk) -> AsyncIterator[Chunk]:
            yield c

        lines, _, _ = await search_console(
            one(), q=q, stream=stream, level=level, after_sequence=0, limit=1 << 40
        )
        total += len(lines)
        position = chunk.last_sequence
    return total, position


async def console_text(chunks: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
    """The console messages of the log, ANSI removed, one per line (UTF-8)."""
    async for chunk in chunks:
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
        if out:
            yield ("\n".join(out) + "\n").encode()
