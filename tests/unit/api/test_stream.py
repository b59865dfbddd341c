"""EventStream, the SSE response: keepalive, stuck-client watchdog, disconnect, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sse_starlette.sse import AppStatus

from runevents.api.stream import KEEPALIVE, EventStream

HEADERS = {"Content-Type": "text/event-stream"}


class Body:
    """An async iterator of byte parts that can wait for a signal, and records aclose()."""

    def __init__(self, parts: list[bytes], *, then_wait: bool = False) -> None:
        self.parts = list(parts)
        self.then_wait = then_wait
        self.closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self.parts:
            return self.parts.pop(0)
        if self.then_wait:
            await asyncio.sleep(3600)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


class Client:
    """ASGI receive/send of one request; ``stuck_after`` sends block forever."""

    def __init__(self, *, stuck_after: int | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.disconnect = asyncio.Event()
        self.stuck_after = stuck_after

    async def receive(self) -> dict[str, Any]:
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        bodies = [m for m in self.messages if m["type"] == "http.response.body"]
        is_body = message["type"] == "http.response.body"
        if is_body and self.stuck_after is not None and len(bodies) >= self.stuck_after:
            await asyncio.sleep(3600)
        self.messages.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(
            m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"
        )

    @property
    def completed(self) -> bool:
        last = self.messages[-1]
        return last["type"] == "http.response.body" and not last.get("more_body", False)


def stream(body: Body, **kw: Any) -> EventStream:
    return EventStream(
        body,
        headers=HEADERS,
        keepalive_seconds=kw.pop("keepalive_seconds", 15),
        send_timeout=kw.pop("send_timeout", 30),
        **kw,
    )


SCOPE = {"type": "http", "method": "GET"}


async def test_sends_every_part_then_ends() -> None:
    body, client = Body([b"a", b"b"]), Client()
    response = stream(body, status_code=200)
    await asyncio.wait_for(response(SCOPE, client.receive, client.send), 5)
    start = client.messages[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert (b"content-type", b"text/event-stream") in start["headers"]
    assert client.body == b"ab" and client.completed
    assert response.outcome == "end" and body.closed


async def test_keepalive_only_while_idle() -> None:
    body, client = Body([b"first"], then_wait=True), Client()
    task = asyncio.create_task(
        stream(body, keepalive_seconds=0.1)(SCOPE, client.receive, client.send)
    )
    await asyncio.sleep(0.45)
    client.disconnect.set()
    await asyncio.wait_for(task, 5)
    assert client.body.startswith(b"first")
    assert 2 <= client.body.count(KEEPALIVE) <= 5
    assert body.closed


async def test_disconnect_ends_the_stream() -> None:
    body, client = Body([], then_wait=True), Client()
    response = stream(body)
    task = asyncio.create_task(response(SCOPE, client.receive, client.send))
    await asyncio.sleep(0.05)
    client.disconnect.set()
    await asyncio.wait_for(task, 5)
    assert response.outcome == "disconnect" and body.closed


async def test_a_stuck_client_is_dropped() -> None:
    # the third body message never completes: the client stopped reading
    body, client = Body([b"1", b"2", b"3", b"4"], then_wait=True), Client(stuck_after=2)
    response = stream(body, send_timeout=0.2)
    await asyncio.wait_for(response(SCOPE, client.receive, client.send), 5)
    assert response.outcome == "stuck" and body.closed
    assert client.body == b"12"


async def test_a_stuck_keepalive_is_noticed_too() -> None:
    body, client = Body([], then_wait=True), Client(stuck_after=0)
    response = stream(body, keepalive_seconds=0.05, send_timeout=0.2)
    await asyncio.wait_for(response(SCOPE, client.receive, client.send), 5)
    assert response.outcome == "stuck"


async def test_server_shutdown_ends_streams_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    body, client = Body([b"x"], then_wait=True), Client()
    response = stream(body, keepalive_seconds=0.1)
    task = asyncio.create_task(response(SCOPE, client.receive, client.send))
    await asyncio.sleep(0.05)
    monkeypatch.setattr(AppStatus, "should_exit", True)
    await asyncio.wait_for(task, 5)
    assert response.outcome == "shutdown"
    assert client.completed  # the HTTP response was ended, not cut
    assert body.closed


async def test_head_sends_headers_only() -> None:
    body, client = Body([b"never"]), Client()
    await stream(body)({"type": "http", "method": "HEAD"}, client.receive, client.send)
    assert client.body == b"" and client.completed and body.closed
