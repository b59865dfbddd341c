"""The Durable Streams SSE body (``live=sse``) counts as an SSE follower (contract 13)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from runevents import metrics
from runevents.api.durable_sse import ds_frames
from runevents.api.sse import frames
from runevents.logview import LogEnd
from tests.fixtures.metrics import parse, value
from tests.unit.api.test_sse import Source, chunk


@pytest.fixture(autouse=True)
def _enabled() -> Iterator[None]:
    metrics.set_enabled(True)
    yield
    metrics.set_enabled(True)


def followers() -> float:
    return value(parse(metrics.render()), "runevents_sse_followers")


def body(source: Source, *, last: int = 2, ended: bool = False) -> AsyncIterator[bytes]:
    return ds_frames(
        source,
        0,
        LogEnd(last_sequence=last, ended=ended, form="ndjson"),
        encode_offset=lambda n: f"{n:020d}",
        next_cursor=lambda: "1",
    )


@pytest.mark.parametrize("ending", ["run end", "client gone", "read error", "ended already"])
async def test_durable_streams_sse_followers_were_not_counted_in_the_gauge(ending: str) -> None:
    """Regression: `runevents_sse_followers` counted the events stream's followers only;
    a `/ds/v1/...?live=sse` reader left it unmoved. It counts while the stream is open
    and no more once it ends, however it ends."""
    before = followers()
    if ending == "ended already":
        # at the end of an ended run: the closing control event at once, and the end
        parts = [part async for part in body(Source([]), ended=True)]
        assert b'"streamClosed":true' in parts[0] and followers() == before
        return
    error = OSError("disk gone") if ending == "read error" else None
    tail = [chunk(3, 4, ends_run=True)] if ending == "run end" else []
    source = Source([chunk(1, 2), *tail], error=error)
    stream = body(source)
    await anext(stream)
    assert followers() == before + 1
    if ending == "client gone":
        await stream.aclose()  # what the response does when the client disconnects
    elif ending == "read error":
        with pytest.raises(OSError, match="disk gone"):
            await anext(stream)
    else:
        assert b'"streamClosed":true' in await anext(stream)
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
    assert source.closed and followers() == before


async def test_both_sse_routes_count_through_the_same_gauge() -> None:
    """The events stream's follower still counts, with the shared mechanism."""
    before = followers()
    stream = frames(Source([chunk(1, 2)]), 0)
    await anext(stream)
    assert followers() == before + 1
    await stream.aclose()
    assert followers() == before
