"""Matching one chunk of NDJSON lines: the hits of contract section 12.

Pure and synchronous on purpose: callers run :func:`find_hits` in a worker
thread (``asyncio.to_thread``), so decoding a megabyte of JSON never holds
the event loop. Byte-level prefilters skip lines (or the whole chunk) that
cannot match before anything is decoded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import re2

from runevents.search.pattern import Pattern

CONSOLE_TYPE = b'"console.line"'
#: lines matched between two offers of the GIL to other threads (~0.5 ms of work)
YIELD_LINES = 256


class _Payload(msgspec.Struct):
    message: Any = None
    stream: Any = None
    level: Any = None


class _Line(msgspec.Struct):
    type: str
    sequence: int
    created_at: str
    payload: _Payload


class _Hit(msgspec.Struct):
    run_id: str
    configuration_id: str
    sequence: int
    created_at: str
    message: str
    match: list[tuple[int, int]]


_decode = msgspec.json.Decoder(_Line).decode
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Filters:
    """What a hit must be besides matching: its stream and level (None: any)."""

    stream: str | None = None
    level: str | None = None


def _printable(literal: str) -> bytes | None:
    """``literal`` as the bytes it is stored as, when JSON writes it unescaped."""
    if literal.isascii() and literal.isprintable() and '"' not in literal and "\\" not in literal:
        return literal.encode()
    return None


@dataclass(frozen=True)
class Prefilter:
    """Byte tests a line must pass to be decoded (only ever skips non-matches)."""

    #: alternatives of lowercase byte literals; None: no byte test
    alternatives: tuple[tuple[bytes, ...], ...] | None
    #: RE2, case-insensitive: the first literal of any alternative (None: no byte test).
    #: It finds the candidate lines of an ASCII chunk at C speed and without the
    #: GIL (RE2 releases it; ``bytes.lower`` and ``find`` do not).
    finder: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, pattern: Pattern) -> Prefilter:
        """The prefilter of ``pattern`` (from its requirement, literals JSON keeps as is)."""
        requirement = pattern.requirement()
        if not requirement:
            return cls(None)
        alternatives = []
        for alternative in requirement:
            kept = tuple(b for b in (_printable(lit) for lit in alternative) if b is not None)
            if not kept:
                return cls(None)  # this alternative cannot be tested on bytes
            alternatives.append(kept)
        firsts = b"|".join(re2.escape(alt[0]) for alt in dict.fromkeys(alternatives))
        return cls(tuple(alternatives), re2.compile(b"(?i)(?:" + firsts + b")"))

    def may_match(self, lowered: bytes) -> bool:
        """False only if no alternative's literals all occur in ``lowered`` (ASCII-lowered)."""
        if self.alternatives is None:
            return True
        return any(all(lit in lowered for lit in alt) for alt in self.alternatives)


def find_hits(
    data: bytes,
    first_sequence: int,
    pattern: Pattern,
    prefilter: Prefilter,
    filters: Filters,
    *,
    run_id: str,
    configuration_id: str,
    after_sequence: int = 0,
    limit: int | None = None,
) -> list[tuple[int, bytes]]:
    """Hits in ``data`` (whole lines, the first being ``first_sequence``) as encoded lines.

    Returns ``(sequence, NDJSON line without newline)`` for at most ``limit``
    hits with a sequence above ``after_sequence``, in order.
    """
    if CONSOLE_TYPE not in data:
        return []
    ascii_chunk = data.isascii()
    lines: Iterator[tuple[int, bytes]]
    if ascii_chunk and prefilter.finder is not None:
        lines = _lines_with(data, prefilter.finder, first_sequence)
    else:
        lines = _lines(data, first_sequence)
    hits: list[tuple[int, bytes]] = []
    for sequence, line in lines:
        if sequence <= after_sequence or CONSOLE_TYPE not in line:
            continue
        if (ascii_chunk or line.isascii()) and not prefilter.may_match(line.lower()):
            continue
        try:
            event = _decode(line)
        except msgspec.DecodeError:
            continue  # not an event of the expected shape: no console line to match
        payload = event.payload
        message = payload.message
        if event.type != "console.line" or not isinstance(message, str):
            continue
        if filters.stream is not None and payload.stream != filters.stream:
            continue
        if filters.level is not None and payload.level != filters.level:
            continue
        spans = pattern.spans(message)
        if not spans:
            continue
        hit = _Hit(run_id, configuration_id, event.sequence, event.created_at, message, spans)
        hits.append((event.sequence, _encode(hit)))
        if limit is not None and len(hits) >= limit:
            break
    return hits


def _lines(data: bytes, first_sequence: int) -> Iterator[tuple[int, bytes]]:
    """Every line of ``data`` with its sequence.

    Every :data:`YIELD_LINES` lines the GIL is offered to other threads
    (``time.sleep(0)``): a chunk matched line by line is Python work (a
    megabyte: thousands of lines, tens of ms), and without it the event loop
    would wait up to the interpreter's switch interval (5 ms) for the GIL at
    each step of serving any other request.
    """
    sequence = first_sequence - 1
    start = 0
    end = len(data)
    while start < end:
        newline = data.find(b"\n", start)
        if newline < 0:
            newline = end
        sequence += 1
        if not sequence % YIELD_LINES:
            time.sleep(0)
        yield sequence, data[start:newline]
        start = newline + 1


def _lines_with(data: bytes, finder: Any, first_sequence: int) -> Iterator[tuple[int, bytes]]:
    """The lines of the ASCII chunk ``data`` where ``finder`` (RE2) matches, with their sequences.

    The chunk is searched as a whole (C speed, the GIL released) rather than
    line by line: a rare term costs one RE2 pass per megabyte, not a Python
    step per line. On ASCII data a case-insensitive match of an ASCII literal
    is exactly "the ASCII-lowered line holds it" (the line test that follows);
    the literals are printable, never a newline, so a match is inside one line.
    """
    sequence = first_sequence
    counted = 0
    end = len(data)
    at = 0
    while at < end:
        found = finder.search(data, at)
        if found is None:
            return
        start = data.rfind(b"\n", 0, found.start()) + 1
        newline = data.find(b"\n", found.end())
        if newline < 0:
            newline = end
        sequence += data.count(b"\n", counted, start)
        counted = start
        yield sequence, data[start:newline]
        at = newline + 1
