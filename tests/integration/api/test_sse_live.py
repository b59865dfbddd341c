"""Live SSE over a real uvicorn (section 5): first bytes, keepalive, live tail, resume, shutdown."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from runevents import metrics
from runevents.api.app import create_app
from runevents.app import App
from runevents.settings import Settings
from tests.fixtures.app import LiveServer, serve
from tests.fixtures.metrics import parse, value
from tests.integration.api.helpers import COMPLETED, console, create_external, ingest, run_path


class Stream:
    """An open SSE response read incrementally."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.raw = b""
        self._chunks: AsyncIterator[bytes] = response.aiter_raw()
        self.ended = False

    async def read_until(self, predicate: Any, timeout: float = 10.0) -> None:
        """Read until ``predicate(self.raw)`` holds (or the stream ends: AssertionError)."""
        async with asyncio.timeout(timeout):
            while not predicate(self.raw):
                try:
                    self.raw += await anext(self._chunks)
                except StopAsyncIteration:
                    self.ended = True
                    assert predicate(self.raw), self.raw[-500:]
                    return

    async def read_to_end(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            async for chunk in self._chunks:
                self.raw += chunk
        self.ended = True

    def ids(self) -> list[int]:
        return [int(line[4:]) for line in self.raw.split(b"\n") if line.startswith(b"id: ")]

    def payloads(self) -> list[dict[str, Any]]:
        return [
            json.loads(line[6:]) for line in self.raw.split(b"\n") if line.startswith(b"data: ")
        ]


async def open_stream(http: httpx.AsyncClient, url: str, **kw: Any) -> tuple[Stream, Any]:
    context = http.stream("GET", url, **kw)
    response = await context.__aenter__()
    return Stream(response), context


async def test_live_tail_from_open_to_completion(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        run = await create_external(http)
        stream, context = await open_stream(
            http, run_path(run) + "/events", params={"stream": "true", "after_sequence": 1}
        )
        try:
            assert stream.response.status_code == 200
            assert stream.response.headers["content-type"] == "text/event-stream"
            # first bytes at once, before any event exists
            await stream.read_until(lambda raw: raw.startswith(b"retry: 3000\n\n"), timeout=2)
            # keepalive comments while idle (keepalive_seconds = 0.3 in these tests)
            await stream.read_until(lambda raw: b": keepalive\n\n" in raw, timeout=3)
            assert stream.ids() == []
            await ingest(http, run, console("one"), console("two"))
            await stream.read_until(lambda raw: len(stream.ids()) == 2)
            assert stream.ids() == [2, 3]
            await ingest(http, run, console("three"), COMPLETED)
            await stream.read_to_end()
            assert stream.ids() == [2, 3, 4, 5]
            assert stream.payloads()[-1]["type"] == "run.completed"
        finally:
            await context.__aexit__(None, None, None)


async def test_resume_with_last_event_id_no_gap_no_duplicate(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        run = await create_external(http)
        url = run_path(run) + "/events"
        await ingest(http, run, *(console(f"m{i}") for i in range(20)))  # sequences 2..21
        first, context = await open_stream(http, url, params={"stream": "true"})
        await first.read_until(lambda raw: len(first.ids()) >= 21)
        await context.__aexit__(None, None, None)
        seen = first.ids()
        # more events while the client is away
        await ingest(http, run, *(console(f"n{i}") for i in range(5)))  # 22..26
        second, context = await open_stream(
            http,
            url,
            params={"stream": "true", "after_sequence": 3},
            headers={"Last-Event-ID": str(seen[-1])},
        )
        try:
            await second.read_until(lambda raw: len(second.ids()) >= 5)
            await ingest(http, run, COMPLETED)  # 27
            await second.read_to_end()
        finally:
            await context.__aexit__(None, None, None)
        assert seen + second.ids() == list(range(1, 28))


async def test_many_clients_see_the_same_events(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        run = await create_external(http)
        url = run_path(run) + "/events"
        opened = [await open_stream(http, url, params={"stream": "true"}) for _ in range(20)]
        try:
            for stream, _ in opened:
                await stream.read_until(lambda raw, s=stream: 1 in s.ids())
            for batch in range(5):
                await ingest(http, run, *(console(f"{batch}-{i}") for i in range(10)))
                await asyncio.sleep(0.02)
            await ingest(http, run, COMPLETED)
            await asyncio.gather(*(stream.read_to_end() for stream, _ in opened))
        finally:
            for _, context in opened:
                await context.__aexit__(None, None, None)
        expected = list(range(1, 53))
        for stream, _ in opened:
            assert stream.ids() == expected


async def test_server_shutdown_ends_open_streams(
    api_settings: Settings, runevents_app: App
) -> None:
    asgi = create_app(api_settings, app=runevents_app)
    async with serve(asgi) as live, httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        run = await create_external(http)
        streams = [
            await open_stream(http, run_path(run) + "/events", params={"stream": "true"})
            for _ in range(3)
        ]
        for stream, _ in streams:
            await stream.read_until(lambda raw, s=stream: 1 in s.ids())
        loop = asyncio.get_running_loop()
        started = loop.time()
        await live.stop(timeout=8)  # fails the test if uvicorn hangs on the open streams
        assert loop.time() - started < 8
        for stream, context in streams:
            await stream.read_to_end(timeout=5)  # the responses ended, not just the listener
            await context.__aexit__(None, None, None)


async def test_post_runs_stream_true_live(live_server: LiveServer) -> None:
    async with (
        httpx.AsyncClient(base_url=live_server.url, timeout=10) as http,
        http.stream(
            "POST",
            "/api/v1/workspaces/acme/configurations/ext/runs",
            params={"stream": "true"},
            json={"external": True},
        ) as response,
    ):
        assert response.status_code == 200
        stream = Stream(response)
        await stream.read_until(lambda raw: len(stream.ids()) == 1)
        queued = stream.payloads()[0]
        assert queued["type"] == "run.queued"
        run = {"workspace_id": "acme", "configuration_id": "ext", "id": queued["run_id"]}
        await ingest(http, run, console("hi"), COMPLETED)
        await stream.read_to_end()
        assert stream.ids() == [1, 2, 3]


@pytest.mark.slow
async def test_a_stuck_client_is_dropped_without_hurting_others(
    api_settings: Settings, runevents_app: App
) -> None:
    """A client that stops reading is cut off after the send timeout; the log is not buffered."""
    settings = api_settings.model_copy(update={"sse_send_timeout_seconds": 0.5})
    async with (
        serve(create_app(settings, app=runevents_app)) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as http,
    ):
        run = await create_external(http)
        big = "x" * 4000
        for _ in range(15):  # ~12 MB: far more than the socket buffers hold
            response = await ingest(http, run, *(console(big) for _ in range(200)))
            assert response.status_code == 200, response.text
        await ingest(http, run, COMPLETED)
        port = int(live.url.rsplit(":", 1)[1])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(f"GET {run_path(run)}/events?stream=true HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(3)  # not reading: the server's sends block, then time out
        # a well-behaved client is served meanwhile
        page = await http.get(run_path(run) + "/events", params={"limit": 1})
        assert page.status_code == 200
        received = b""
        async with asyncio.timeout(20):
            while chunk := await reader.read(1 << 20):
                received += chunk
        writer.close()
        ids = [int(m) for m in re.findall(rb"\nid: (\d+)\n", received)]
        assert ids == list(range(1, len(ids) + 1))  # what arrived arrived in order, no gap
        # the connection was closed before the whole run was sent
        assert len(ids) < 3002
        assert b'"type":"run.completed"' not in received


async def test_durable_streams_sse_followers_were_not_counted_in_the_gauge(
    live_server: LiveServer,
) -> None:
    """Regression (contract 13): a `/ds/v1/...?live=sse` follower left
    `runevents_sse_followers` unmoved. Counted while connected, then no more, whether the
    client goes away or the run ends."""

    def followers() -> float:
        return value(parse(metrics.render()), "runevents_sse_followers")

    async def settles(expected: float) -> None:
        async with asyncio.timeout(10):  # the server sees a disconnect a moment later
            while followers() != expected:
                await asyncio.sleep(0.02)

    before = followers()
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        run = await create_external(http)
        url = f"/ds/v1/workspaces/{run['workspace_id']}/runs/{run['id']}"
        for ending in ("client gone", "run end"):
            stream, context = await open_stream(http, url, params={"offset": "-1", "live": "sse"})
            try:
                await stream.read_until(lambda raw: b"event: control" in raw)
                await settles(before + 1)
                if ending == "run end":
                    await ingest(http, run, COMPLETED)
                    await stream.read_to_end()
                    assert b'"streamClosed":true' in stream.raw
            finally:
                await context.__aexit__(None, None, None)
            await settles(before)
