"""The emitter: how one execution's output becomes events, one ``sink.emit`` at a time.

Separate from ``process.py``, which spawns and stops the child: the emitter is
what both the child's pipes and the executor's own notices write through, so
it owns the ordering (one lock) and the masking of secrets, and knows nothing
about processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from runevents.capture import ConsoleTranslator, Line, Stream
from runevents.events import EventDraft
from runevents.masking import Masker, has_add_mask


class Sink(Protocol):
    """Where drafts go (the executor's ``EventSink.emit``)."""

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        """Append ``drafts`` to the run's log, in order."""


class Emitter:
    """Serializes everything one execution emits through one translator.

    stdout, stderr and the executor's own notices share the lock so batches
    never interleave inside a ``sink.emit`` call and the translator's phase
    state sees lines in the order they are emitted.

    With a ``masker`` (the run's secrets, :mod:`runevents.masking`) every draft
    is masked before the sink sees it. For a batch of plain lines (no structured
    event, no ``::add-mask::``) one automaton scan over the read's bytes finds
    the lines holding a secret form, and only those are rewritten: the
    executor's hot path costs one scan per read.
    """

    def __init__(
        self, sink: Sink, translator: ConsoleTranslator, masker: Masker | None = None
    ) -> None:
        self.sink = sink
        self.translator = translator
        self.masker = masker
        self._lock = asyncio.Lock()

    async def lines(
        self, stream: Stream, lines: list[Line], *, braces: bool = True, raw: bytes | None = None
    ) -> None:
        """Translate and emit one batch of lines of ``stream`` (``braces``: see translate).

        ``raw``: the bytes of the read the lines came from (all of them but the
        first, which may have started in an earlier read), for the masker's
        one-scan check.
        """
        async with self._lock:
            translator = self.translator
            drafts = translator.translate(stream, lines, braces=braces)
            if not drafts:
                return
            masker = self.masker
            if masker is not None:
                hits = None if raw is None or braces else self._line_hits(masker, lines, raw)
                if hits is None or (hits and len(drafts) != len(lines)):
                    drafts = masker.mask_drafts(drafts)
                    if translator.phase is not None:
                        # a phase named with a secret is stamped on later lines: keep it masked
                        translator.phase = masker.mask_text(translator.phase)[0]
                else:
                    for index in sorted(hits):
                        masker.mask_drafts([drafts[index]])  # in place
            await self.sink.emit(drafts)

    def _line_hits(self, masker: Masker, lines: list[Line], raw: bytes) -> set[int] | None:
        """Indexes of the lines holding a secret form, found in the read's bytes; None
        when the batch needs the full look (an ``::add-mask::``, or a first line or a
        phase holding a form: the first line may have begun in an earlier read).

        ``lines[k]`` ends at the k-th newline of ``raw`` (the splitter's contract),
        so a match's line is the number of newlines before it.
        """
        first = lines[0]
        phase = self.translator.phase
        if (
            type(first) is not bytes
            or b"{" in first  # it may be a structured event: the full walk checks it
            or not masker.clean_bytes(first)
            or (phase is not None and not masker.clean_bytes(phase.encode("utf-8", "replace")))
            or has_add_mask(raw)
        ):
            return None
        hits: set[int] = set()
        for start, end in masker.byte_matches(raw):
            # every line the match touches, not just its ends: a multi-line value's
            # match hides the forms of its middle lines (each is masked on its own)
            first_line = raw.count(b"\n", 0, start)
            last_line = first_line + raw.count(b"\n", start, end - 1)
            # past the last newline: the next read's first line
            hits.update(range(first_line, min(last_line + 1, len(lines))))
        return hits

    async def notice(self, message: str, *, level: str = "warning") -> None:
        """Emit a console line written by runevents itself."""
        await self.emit([self.translator.notice(message, level=level)])

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        """Emit ready-made drafts (lifecycle events)."""
        async with self._lock:
            if self.masker is not None:
                drafts = self.masker.mask_drafts(drafts)
            await self.sink.emit(drafts)
