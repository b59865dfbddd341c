"""SSE frame encoding (contract section 5): exact bytes, positions, memoization."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from runevents.api.sse import (
    CACHE_KEY,
    OPENING,
    chunk_frames,
    encode_lines,
    frames,
    resolve_position,
)
from runevents.api.stream import KEEPALIVE
from runevents.eventlog import Chunk


def line(sequence: int, message: str = "m", type_: str = "console.line") -> bytes:
    event = {"type": type_, "sequence": sequence, "payload": {"message": message}}
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def chunk(first: int, last: int, *, ends_run: bool = False, message: str = "m") -> Chunk:
    data = b"".join(
        line(s, message, "run.completed" if ends_run and s == last else "console.line")
        for s in range(first, last + 1)
    )
    return Chunk(first_sequence=first, last_sequence=last, data=data, ends_run=ends_run)


def parse_sse(stream: bytes) -> list[dict[str, str]]:
    """A spec-following SSE parser (lines end at CRLF, LF or CR) returning dispatched events."""
    text = stream.decode("utf-8")
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    data: list[str] = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if raw == "":
            if data:
                current["data"] = "\n".join(data)
                events.append(current)
            current, data = {}, []
            continue
        if raw.startswith(":"):
            continue
        field, _, value = raw.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        else:
            current[field] = value
    return events


def test_encode_lines_exact_bytes() -> None:
    data = b'{"a":1}\n{"b":2}\n'
    assert encode_lines(data, 17) == (
        b'id: 17\nevent: ade.event\ndata: {"a":1}\n\nid: 18\nevent: ade.event\ndata: {"b":2}\n\n'
    )


def test_encode_lines_rejects_partial_line() -> None:
    with pytest.raises(ValueError, match="newline"):
        encode_lines(b'{"a":1}\n{"b"', 1)


def test_constants_are_the_contract_bytes() -> None:
    assert OPENING == b"retry: 3000\n\n"
    assert KEEPALIVE == b": keepalive\n\n"


@pytest.mark.parametrize("message", ["a\u2028b\u2029c", "lone \r cr", "tab\tand \x00 nul", "😀"])
def test_awkward_characters_arrive_intact(message: str) -> None:
    # JSON escapes control characters; U+2028/2029 stay raw and must not split a frame
    c = chunk(1, 2, message=message)
    parsed = parse_sse(chunk_frames(c))
    assert [e["id"] for e in parsed] == ["1", "2"]
    assert all(e["event"] == "ade.event" for e in parsed)
    assert [json.loads(e["data"])["payload"]["message"] for e in parsed] == [message, message]
    # byte for byte the stored lines
    assert [e["data"].encode() + b"\n" for e in parsed] == [line(1, message), line(2, message)]


def test_a_unit_marker_is_kept_in_the_data_field() -> None:
    """The writer ends a write unit's last line with b" \\n": the frame carries the stored
    line byte for byte (the space included); SSE keeps a value's trailing space and
    JSON parsers skip it."""
    data = line(1) + line(2)[:-1] + b" \n"
    frames_ = encode_lines(data, 1)
    assert b'data: {"type":"console.line","sequence":2,"payload":{"message":"m"}} \n\n' in frames_
    parsed = parse_sse(frames_)
    assert [e["data"].encode() + b"\n" for e in parsed] == data.splitlines(keepends=True)
    assert [json.loads(e["data"])["sequence"] for e in parsed] == [1, 2]


def test_chunk_frames_memoized_in_cache() -> None:
    c = chunk(5, 9)
    first = chunk_frames(c, 4)
    assert c.cache[CACHE_KEY] is first
    assert chunk_frames(c, 0) is first  # shared chunk: encoded once
    assert [e["id"] for e in parse_sse(first)] == ["5", "6", "7", "8", "9"]


def test_chunk_frames_trims_a_straddling_chunk_without_caching() -> None:
    c = chunk(5, 9)
    trimmed = chunk_frames(c, 6)
    assert [e["id"] for e in parse_sse(trimmed)] == ["7", "8", "9"]
    assert json.loads(parse_sse(trimmed)[0]["data"])["sequence"] == 7
    assert CACHE_KEY not in c.cache


def test_chunk_frames_behind_position_is_empty() -> None:
    assert chunk_frames(chunk(1, 3), 3) == b""
    assert chunk_frames(chunk(1, 3), 10) == b""


@pytest.mark.parametrize(
    ("positions", "expected"),
    [
        ((None, None, None), 0),
        ((5, None, None), 5),
        ((5, 9, None), 9),
        ((5, None, 3), 5),
        ((2, 0, 12), 12),
        ((None, -1, None), 0),
    ],
)
def test_resolve_position(positions: tuple[int | None, ...], expected: int) -> None:
    assert resolve_position(*positions) == expected


class Source:
    """An async iterator of chunks that records whether it was closed."""

    def __init__(self, chunks: list[Chunk], error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error
        self.closed = False

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self

    async def __anext__(self) -> Chunk:
        if self.chunks:
            return self.chunks.pop(0)
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


async def collect(source: Source, position: int) -> list[bytes]:
    return [part async for part in frames(source, position)]


async def test_frames_open_first_then_end_after_run_completed() -> None:
    source = Source([chunk(1, 3), chunk(4, 5, ends_run=True), chunk(6, 6)])
    parts = await collect(source, 0)
    assert parts[0] == OPENING
    events = parse_sse(b"".join(parts))
    assert [e["id"] for e in events] == ["1", "2", "3", "4", "5"]
    assert json.loads(events[-1]["data"])["type"] == "run.completed"
    assert source.closed


async def test_frames_never_repeat_an_event() -> None:
    # overlapping chunks (a shared live chunk straddling a resumed position)
    source = Source([chunk(3, 6), chunk(5, 8), chunk(8, 8), chunk(9, 10, ends_run=True)])
    events = parse_sse(b"".join(await collect(source, 4)))
    assert [int(e["id"]) for e in events] == [5, 6, 7, 8, 9, 10]


async def test_frames_end_quietly_on_a_read_error(caplog: pytest.LogCaptureFixture) -> None:
    source = Source([chunk(1, 2)], error=OSError("disk gone"))
    parts = await collect(source, 0)
    assert [e["id"] for e in parse_sse(b"".join(parts))] == ["1", "2"]
    assert source.closed
    assert "after sequence 2" in caplog.text


async def test_frames_close_the_source_when_the_consumer_stops() -> None:
    source = Source([chunk(1, 2), chunk(3, 4)])
    gen = frames(source, 0)
    assert await anext(gen) == OPENING
    await anext(gen)
    await gen.aclose()
    assert source.closed
