"""Shared helpers of the engine tests: drafts, and checks of what a log holds."""

from __future__ import annotations

import json
from collections.abc import Iterable

from runevents.eventlog import Chunk, EventLog, RunRef
from runevents.events import EventDraft, decode_event


def drafts(n: int, start: int = 0, size: int = 0) -> list[EventDraft]:
    """``n`` console lines numbered from ``start`` (message padded to about ``size`` bytes)."""
    return [
        EventDraft(
            type="console.line",
            payload={"stream": "stdout", "message": f"line {i} " + "x" * size},
        )
        for i in range(start, start + n)
    ]


def completed(status: str = "succeeded") -> EventDraft:
    """The final event."""
    return EventDraft(type="run.completed", payload={"status": status})


def check_chunks(chunks: Iterable[Chunk], first: int = 1) -> list[int]:
    """Check chunks are whole lines, positional and gap-free; return the sequences seen."""
    seen: list[int] = []
    expected = first
    for chunk in chunks:
        assert chunk.data.endswith(b"\n")
        lines = chunk.data.split(b"\n")[:-1]
        assert chunk.first_sequence == expected
        assert chunk.last_sequence == chunk.first_sequence + len(lines) - 1
        for offset, line in enumerate(lines):
            event = decode_event(line)
            assert event.sequence == chunk.first_sequence + offset
            seen.append(event.sequence)
        assert chunk.ends_run == (decode_event(lines[-1]).type == "run.completed")
        expected = chunk.last_sequence + 1
    return seen


async def read_sequences(log: EventLog, ref: RunRef, after: int = 0) -> list[int]:
    """The sequences a full read returns (checked for shape)."""
    return check_chunks([c async for c in log.read(ref, after_sequence=after)], after + 1)


async def messages(log: EventLog, ref: RunRef) -> list[str]:
    """The message of every event of the log, in order."""
    out: list[str] = []
    async for chunk in log.read(ref):
        for line in chunk.data.split(b"\n")[:-1]:
            out.append(str(json.loads(line)["payload"].get("message", "")))
    return out
