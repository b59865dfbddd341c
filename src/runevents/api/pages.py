"""JSON pages of stored lines: ``{"events": [...], "next_after_sequence", "has_more"}``.

A page's ``events`` are the stored lines spliced into the response, never
decoded and re-encoded. A page ends at ``limit`` events or at
:data:`PAGE_BYTES` (at least one event), whichever comes first. A page is
built up to a ``stop`` sequence -- the end of the log when the request came
(``runevents.logview``) -- so its bytes, and so its ETag, depend only on the
position, the limit and that end, not on what a writer appends meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from runevents.api.sse import close_quietly
from runevents.eventlog import Chunk
from runevents.manager import RunManager
from runevents.models import Run

#: a JSON page stops growing past this many bytes of events (the first event always fits)
PAGE_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class Page:
    """Stored lines after ``position``; ``last``: the sequence of the last one."""

    position: int
    limit: int
    lines: list[bytes] = field(default_factory=list)
    size: int = 0
    last: int = 0
    has_more: bool = False

    def __post_init__(self) -> None:
        self.last = self.position

    def take(self, chunk: Chunk) -> bool:
        """Add the lines of ``chunk`` after the position; False once the page is full."""
        sequence = chunk.first_sequence
        for line in chunk.data.split(b"\n")[:-1]:
            if sequence > self.position:
                if len(self.lines) >= self.limit or (
                    self.lines and self.size + len(line) > PAGE_BYTES
                ):
                    self.has_more = True
                    return False
                self.lines.append(line)
                self.size += len(line) + 1
                self.last = sequence
            sequence += 1
        return True


async def read_page(manager: RunManager, run: Run, position: int, limit: int, stop: int) -> Page:
    """The page after ``position`` of the events up to sequence ``stop``."""
    page = Page(position, limit)
    if stop <= position:
        return page
    # one event past the limit, when the log holds it, tells has_more
    chunks = manager.read_events(run, position, min(limit + 1, stop - position))
    try:
        async for chunk in chunks:
            if not page.take(chunk):
                break
    finally:
        await close_quietly(chunks)
    return page


def page_of(chunks: Iterable[Chunk], position: int, limit: int) -> Page:
    """The page after ``position`` of chunks already in hand (a long-poll's)."""
    page = Page(position, limit)
    for chunk in chunks:
        if not page.take(chunk):
            break
    return page


def json_list(key: bytes, lines: list[bytes], next_after: int, has_more: bool) -> bytes:
    """``{"<key>": [lines], "next_after_sequence": .., "has_more": ..}`` without re-encoding."""
    return b'{"%s":[%s],"next_after_sequence":%d,"has_more":%s}' % (
        key,
        b",".join(lines),
        next_after,
        b"true" if has_more else b"false",
    )


async def first_chunks(chunks: AsyncIterator[Chunk]) -> list[Chunk]:
    """The first chunk of ``chunks`` (empty if it ends first); closes the iterator."""
    try:
        async for chunk in chunks:
            return [chunk]
        return []
    finally:
        await close_quietly(chunks)
