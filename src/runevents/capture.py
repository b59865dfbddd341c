"""Line capture: a child's raw output bytes -> lines -> event drafts.

Two pure, synchronous pieces the process runner (``process.py``) drives:

* :class:`LineSplitter` cuts a byte stream into lines with bounded memory. A
  line longer than ``max_line_bytes`` keeps its first ``max_line_bytes`` bytes
  (backed off to a UTF-8 character boundary) and only *counts* the rest, so a
  10 MB line never costs more than ``max_line_bytes`` of buffer. ``\\r\\n`` ends
  a line like ``\\n``; a lone ``\\r`` stays in the text; a last line without a
  newline is still a line.
* :class:`ConsoleTranslator` turns lines into :class:`~runevents.events.EventDraft`
  objects: a JSON object with a string ``type`` is the producer's structured
  event, anything else a ``console.line`` (contract section 2).

What a job may print as a structured event is what a producer may POST
(contract 6), by the same rules (``events.type_problem`` and
``events.console_problem``, which ``producer.py`` applies to a batch): not a
type only the server writes (``run.queued``, ``log.recovered``) nor, the run
being executed, one of its lifecycle (``run.started``, ``run.completed``,
``build.*``); a ``payload`` that is an object (left out: ``{}``); a
``created_at`` in RFC 3339; ``source`` and ``build_id`` strings if given; a
``console.line`` with a string ``message`` and the contract's ``scope``,
``stream`` and ``level`` (one left out is the line's own: the translator's
scope, the stream it was printed on, that stream's level). Where a producer
gets 422, the job's line is kept as a plain ``console.line`` of its raw text:
nothing printed is lost, and no malformed event is stored.

Both are hot paths (a child may print a million lines as fast as it can), so
the common case -- a short line -- avoids copies and per-line branches.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, Literal

import orjson

from runevents import events
from runevents.events import (
    CONSOLE_LINE,
    EventDraft,
    console_problem,
    type_problem,
)
from runevents.exceptions import InvalidInput
from runevents.timestamps import normalize_created_at

Stream = Literal["stdout", "stderr"]
Scope = Literal["run", "build"]

#: types a job may not print (the line stays a plain console line): the server's
#: own and the executed run's lifecycle, so ``run.completed`` stays exactly once and last
RESERVED_TYPES: Final = events.SERVER_ONLY_TYPES | events.EXECUTOR_TYPES
#: console level per stream (contract: stderr is ``warning``)
STREAM_LEVELS: Final = events.STREAM_LEVELS
#: ``logger`` of the console lines the executor itself writes (notices, spawn errors)
NOTICE_LOGGER: Final = "runevents"
#: longest structured event ``type`` accepted (longer ones become console lines)
MAX_TYPE_CHARS: Final = events.MAX_TYPE_CHARS


@dataclasses.dataclass(frozen=True, slots=True)
class CutLine:
    """A line cut at the length cap: its kept head and how many bytes were dropped."""

    head: bytes
    dropped: int


#: one line from :class:`LineSplitter`: the plain bytes (the common case) or a cut line
Line = bytes | CutLine


def utf8_prefix_length(data: bytes) -> int:
    """Length of ``data`` without a trailing *incomplete* UTF-8 sequence.

    Used when a line is cut so the kept head does not end in half a character
    (which would decode to U+FFFD). Invalid bytes are left alone: decoding with
    replacement handles those anyway.
    """
    n = len(data)
    i = n - 1
    # walk back over at most three continuation bytes to the sequence's lead byte
    while i >= 0 and n - i <= 3 and data[i] & 0xC0 == 0x80:
        i -= 1
    if i < 0:
        return n
    lead = data[i]
    if lead >= 0xF5:
        return n  # never a lead byte
    if lead >= 0xF0:
        need = 4
    elif lead >= 0xE0:
        need = 3
    elif lead >= 0xC0:
        need = 2
    else:
        return n
    return i if n - i < need else n


def format_size(n: int) -> str:
    """Human size for the truncation marker: ``512 B``, ``63.9 KiB``, ``9.9 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


class LineSplitter:
    """Split one byte stream into lines, keeping at most ``max_line_bytes`` per line.

    Memory is bounded by ``max_line_bytes`` (the unfinished line) plus the chunk
    being fed; bytes of a line beyond the cap are counted, never stored.
    """

    __slots__ = ("_buf", "_dropped", "_last_dropped_cr", "_max")

    def __init__(self, max_line_bytes: int) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self._max = max_line_bytes
        #: the unfinished line (at most ``_max`` bytes)
        self._buf = bytearray()
        #: bytes of the unfinished line beyond the cap
        self._dropped = 0
        #: whether the last dropped byte was ``\r`` (it may be the ``\r`` of ``\r\n``)
        self._last_dropped_cr = False

    @property
    def pending(self) -> int:
        """Bytes held for the unfinished line (never more than ``max_line_bytes``)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Line]:
        """Add ``data``; return the lines it completes, in order."""
        pieces = data.split(b"\n")
        tail = pieces.pop()  # the bytes after the last newline: an unfinished line
        if not pieces:
            self._add(tail)
            return []
        out: list[Line] = []
        if self._buf or self._dropped:
            # the first piece finishes the line carried over from earlier chunks
            self._add(pieces[0])
            out.append(self._take(strip_cr=True))
            del pieces[0]
        if pieces:
            if b"\r" in data:
                pieces = [p[:-1] if p.endswith(b"\r") else p for p in pieces]
            if max(map(len, pieces)) <= self._max:
                out.extend(pieces)  # fast path: no line needs cutting
            else:
                out.extend(p if len(p) <= self._max else self._cut(p) for p in pieces)
        self._add(tail)
        return out

    def finish(self) -> list[Line]:
        """End of stream: the unfinished line, if any (a last line without a newline)."""
        if not self._buf and not self._dropped:
            return []
        return [self._take(strip_cr=False)]

    def _add(self, piece: bytes) -> None:
        if not piece:
            return
        room = self._max - len(self._buf)
        if len(piece) <= room:
            self._buf += piece
            return
        if room > 0:
            self._buf += piece[:room]
        self._dropped += len(piece) - max(room, 0)
        self._last_dropped_cr = piece.endswith(b"\r")

    def _take(self, *, strip_cr: bool) -> Line:
        dropped = self._dropped
        if strip_cr:
            if dropped:
                if self._last_dropped_cr:
                    dropped -= 1  # that \r was the line ending's, not content
            elif self._buf.endswith(b"\r"):
                del self._buf[-1]
        head = bytes(self._buf)
        self._buf.clear()
        self._dropped = 0
        self._last_dropped_cr = False
        if not dropped:
            return head
        keep = utf8_prefix_length(head)
        return CutLine(head[:keep], dropped + len(head) - keep)

    def _cut(self, piece: bytes) -> CutLine:
        keep = utf8_prefix_length(piece[: self._max])
        return CutLine(piece[:keep], len(piece) - keep)


class ConsoleTranslator:
    """Turn lines into event drafts: structured producer events or ``console.line``.

    One translator serves both streams of a process (and a build's commands),
    so the producer's current ``run.phase.started`` phase is shared: console
    lines printed while a phase is open carry ``phase``.
    """

    def __init__(
        self,
        *,
        scope: Scope,
        phase: str | None = None,
        build_id: str | None = None,
        structured: bool = True,
    ) -> None:
        self.scope: Scope = scope
        #: phase stamped on console lines (a build command's phase, or the producer's)
        self.phase = phase
        self.build_id = build_id
        self.structured = structured
        #: set once the producer emitted a well-formed ``run.error`` (stage, code, message)
        self.run_error: dict[str, Any] | None = None
        #: lines cut at the cap so far
        self.truncated = 0

    def translate(
        self, stream: Stream, lines: list[Line], *, braces: bool = True
    ) -> list[EventDraft]:
        """Drafts for ``lines`` of ``stream``, in order.

        ``braces=False`` promises that no line but the first holds a ``{``
        (the caller saw none in the bytes it read), so only the first line --
        which may have started in an earlier read -- can be a structured
        event, and the rest take the fast path.
        """
        if braces or not self.structured or len(lines) < 2:
            return self._translate(stream, lines, self.structured)
        out = self._translate(stream, lines[:1], True)
        out.extend(self._translate(stream, lines[1:], False))
        return out

    def _translate(self, stream: Stream, lines: list[Line], structured: bool) -> list[EventDraft]:
        level = STREAM_LEVELS[stream]
        scope = self.scope
        build_id = self.build_id
        draft = EventDraft
        if not structured and self.phase is None:
            # the hot path: plain output (a million short lines)
            return [
                draft(
                    type="console.line",
                    payload={
                        "scope": scope,
                        "stream": stream,
                        "level": level,
                        "message": line.decode("utf-8", "replace"),
                    },
                    build_id=build_id,
                )
                if type(line) is bytes
                else self._cut(stream, line)
                for line in lines
            ]
        out: list[EventDraft] = []
        append = out.append
        for line in lines:
            if type(line) is not bytes:
                append(self._cut(stream, line))
                continue
            if structured and (line[:1] == b"{" or line.lstrip()[:1] == b"{"):
                event = self._structured(line, stream)
                if event is not None:
                    append(event)
                    continue
            payload: dict[str, Any] = {
                "scope": scope,
                "stream": stream,
                "level": level,
                "message": line.decode("utf-8", "replace"),
            }
            if self.phase is not None:
                payload["phase"] = self.phase
            append(draft(type="console.line", payload=payload, build_id=build_id))
        return out

    def _cut(self, stream: Stream, line: Line) -> EventDraft:
        assert isinstance(line, CutLine)
        self.truncated += 1
        text = line.head.decode("utf-8", "replace")
        payload: dict[str, Any] = {
            "scope": self.scope,
            "stream": stream,
            "level": STREAM_LEVELS[stream],
            "message": f"{text} …[truncated {format_size(line.dropped)}]",
            "truncated": True,
            "truncated_bytes": line.dropped,
        }
        if self.phase is not None:
            payload["phase"] = self.phase
        return EventDraft(type="console.line", payload=payload, build_id=self.build_id)

    def notice(self, message: str, *, level: str = "warning") -> EventDraft:
        """A console line from the executor itself (stderr, ``logger: runevents``)."""
        payload: dict[str, Any] = {
            "scope": self.scope,
            "stream": "stderr",
            "level": level,
            "message": f"runevents: {message}",
            "logger": NOTICE_LOGGER,
        }
        if self.phase is not None:
            payload["phase"] = self.phase
        return EventDraft(type="console.line", payload=payload, build_id=self.build_id)

    def _structured(self, line: bytes, stream: Stream) -> EventDraft | None:
        """The structured event ``line`` holds; None: a plain console line (rules:
        the module docstring)."""
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        kind = obj.get("type")
        if not isinstance(kind, str) or type_problem(kind, executed=True) is not None:
            return None
        payload = obj.get("payload", {})
        if not isinstance(payload, dict):
            return None
        for key in ("source", "build_id"):
            if not isinstance(obj.get(key, ""), str | None):
                return None
        created_at = obj.get("created_at")
        stamp: str | None = None
        if created_at is not None:
            if not isinstance(created_at, str):
                return None
            try:
                stamp = normalize_created_at(created_at)
            except InvalidInput:
                return None
        if kind == CONSOLE_LINE and (
            console_problem(payload, scope=self.scope, stream=stream) is not None
        ):
            return None
        self._observe(kind, payload)
        return EventDraft(type=kind, payload=payload, created_at=stamp, build_id=self.build_id)

    def _observe(self, kind: str, payload: dict[str, Any]) -> None:
        # only the run's own producer drives phases; a build command's phase is fixed
        if kind == "run.phase.started" and self.scope == "run":
            phase = payload.get("phase")
            self.phase = phase if isinstance(phase, str) else None
        elif kind == "run.phase.completed" and self.scope == "run":
            if payload.get("phase") == self.phase:
                self.phase = None
        elif kind == "run.error" and all(
            isinstance(payload.get(key), str) for key in ("stage", "code", "message")
        ):
            self.run_error = {key: payload[key] for key in ("stage", "code", "message")}
