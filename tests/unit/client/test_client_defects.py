"""Defects an outside tester found in the client, each against a scripted transport.

Every test is named after the defect it pins down; each failed before its fix.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from runevents.client import AsyncClient, Client, ClientError, ProducerError, RunCompleted
from tests.unit.client.test_producer import RUN, Server

RUN_ID = RUN["id"]
COMPLETED = {
    "type": "run.completed",
    "sequence": 2,
    "event_id": "evt_1",
    "created_at": "2026-01-01T00:00:00Z",
    "run_id": RUN_ID,
    "payload": {"status": "succeeded"},
}


class Recorder:
    """Answers every request with ``answer()`` and records which paths were asked for."""

    def __init__(self, answer: Callable[[], httpx.Response] | None = None) -> None:
        self.paths: list[str] = []
        self.answer = answer or (lambda: httpx.Response(200, json={"items": []}))

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.raw_path.decode())
        return self.answer()


def recording_client(recorder: Recorder, **kw: Any) -> AsyncClient:
    return AsyncClient("http://test", transport=httpx.MockTransport(recorder.handle), **kw)


async def test_a_hostile_workspace_id_reached_another_route() -> None:
    hostile = f"acme/configurations/victim/runs/{RUN_ID}/cancel?x="
    recorder = Recorder()
    async with recording_client(recorder) as client:
        attempts = [
            client.create_external_run(hostile, "whatever"),
            client.create_external_run("acme", "../../../runs/x"),
            client.create_run("acme", ".."),
            client.create_run(".", "etl"),
            client.list_runs("../../../metrics?"),
            client.list_runs("acme", configuration_id="a/b"),
            client.cancel({"workspace_id": hostile, "configuration_id": "c", "id": RUN_ID}),
            client.events({"workspace_id": "acme", "configuration_id": "c", "id": "../x"}),
        ]
        for attempt in attempts:
            with pytest.raises(ClientError) as refused:
                await attempt
            assert refused.value.status is None and refused.value.code == "invalid_input"
        with pytest.raises(ClientError, match="workspace_id"):
            async for _ in client.search("../metrics?", {"q": "x"}):
                pass
    assert recorder.paths == []  # nothing was sent


async def test_a_non_json_2xx_answer_raised_a_raw_json_decode_error() -> None:
    def html() -> httpx.Response:
        return httpx.Response(200, text="<html>proxy login</html>")

    async with recording_client(Recorder(html)) as client:
        for attempt in (
            client.list_runs("acme"),
            client.get_run(RUN_ID),
            client.create_external_run("acme", "etl"),
            client.append(RUN, [{"type": "x", "payload": {}}]),
        ):
            with pytest.raises(ClientError, match="cannot read") as unreadable:
                await attempt
            assert unreadable.value.status == 200 and "proxy login" in str(unreadable.value)

    # JSON, but not the shape of the answer: the same error, not a KeyError
    def wrong() -> httpx.Response:
        return httpx.Response(200, json=["not", "a", "run"])

    async with recording_client(Recorder(wrong)) as client:
        with pytest.raises(ClientError, match="cannot read"):
            await client.get_run(RUN_ID)

    # a stream whose data is not JSON
    def stream() -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, content=b"id: 1\ndata: <html>\n\n", headers=headers)

    async with recording_client(Recorder(stream)) as client:
        with pytest.raises(ClientError, match="cannot read"):
            async for _ in client.follow(RUN):
                pass


@pytest.mark.parametrize("token", ["s3cret-token\n", " s3cret-token", "s3cret-tök", "s3c ret"])
def test_a_bad_token_was_reported_as_an_unreachable_server_or_a_bad_url(token: str) -> None:
    with pytest.raises(ClientError, match="the token") as bad:
        AsyncClient("http://127.0.0.1:8000", token)
    message = str(bad.value)
    assert "server URL" not in message and "cannot reach" not in message
    assert "s3cret" not in message  # the token itself is never echoed
    with pytest.raises(ClientError, match="the token"):
        Client("http://127.0.0.1:8000", token)


async def test_credentials_in_the_server_url_were_echoed_in_error_messages() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused by {request.url}")

    server = "http://alice:pa55word@test"
    async with AsyncClient(server, transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(ClientError) as unreachable:
            await client.list_runs("acme")
    with pytest.raises(ClientError) as invalid:
        AsyncClient("http://alice:pa55word@host:99x")
    with pytest.raises(ClientError) as unreachable_sync, Client("alice:pa55word@host:1") as sync:
        sync.list_runs("acme")
    for error in (unreachable.value, invalid.value, unreachable_sync.value):
        assert "pa55word" not in str(error) and "pa55word" not in error.message
        assert "***@" in str(error)


def test_the_sync_client_lacked_search_reconnect_delay_and_follow_on_retry() -> None:
    def signature(method: Any) -> list[tuple[str, Any]]:
        return [(p.name, p.kind) for p in inspect.signature(method).parameters.values()]

    public = {name for name in dir(AsyncClient) if not name.startswith("_")} - {"aclose"}
    assert public <= set(dir(Client))
    for name in public:
        assert signature(getattr(Client, name)) == signature(getattr(AsyncClient, name)), name
    assert signature(Client.__init__) == signature(AsyncClient.__init__)

    answers = [
        httpx.Response(503),
        httpx.Response(
            200,
            content=b"id: 2\ndata: " + httpx.Response(200, json=COMPLETED).content + b"\n\n",
            headers={"content-type": "text/event-stream"},
        ),
        httpx.Response(200, content=b'{"hit": 1}\n{"done": true}\n'),
    ]
    retries: list[tuple[int, str]] = []
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    with Client("http://test", reconnect_delay=0.01, transport=transport) as client:
        assert client.reconnect_delay == 0.01
        events = list(client.follow(RUN, on_retry=lambda n, why: retries.append((n, why))))
        assert [type(e) for e in events] == [RunCompleted]
        assert retries == [(1, "HTTP 503")]
        assert list(client.search("acme", {"q": "x"})) == [{"hit": 1}, {"done": True}]


def test_closing_the_client_first_lost_the_sync_producers_buffer() -> None:
    server = Server()
    server.delay = 0.05  # the client closes while batches are still on their way
    with Client("http://test", transport=httpx.MockTransport(server.handle)) as client:
        producer = client.producer(RUN, max_events=1000)  # never closed
        for i in range(2500):
            producer.console(f"row {i}")
    assert server.messages() == [f"row {i}" for i in range(2500)]
    assert producer.delivered == 2500
    with pytest.raises(ProducerError, match="closed"):
        producer.console("after the client closed")  # not buffered to be lost


async def test_an_async_producer_never_closed_was_lost_without_a_word() -> None:
    # closing its client flushes it
    server = Server()
    async with AsyncClient("http://test", transport=httpx.MockTransport(server.handle)) as client:
        producer = client.producer(RUN, linger=60)  # nothing would go by itself
        for i in range(10):
            await producer.console(f"row {i}")
    assert server.messages() == [f"row {i}" for i in range(10)]
    assert producer.delivered == 10
    # a failure nobody heard of yet is raised by the client's close
    failing = Server([(422, {})])
    with pytest.raises(ProducerError, match="not delivered"):
        async with AsyncClient(
            "http://test", transport=httpx.MockTransport(failing.handle)
        ) as client:
            await client.producer(RUN, linger=60).console("rejected")


def test_an_async_producer_left_open_when_its_loop_ended_was_lost_without_a_word(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server()

    async def forget() -> None:  # the probe: neither the producer nor its client closed
        client = AsyncClient("http://test", transport=httpx.MockTransport(server.handle))
        producer = client.producer(RUN, linger=60)
        for i in range(10):
            await producer.console(f"row {i}")

    with caplog.at_level(logging.WARNING, "runevents.client"):
        asyncio.run(forget())
    assert server.messages() == []
    assert "10 events not delivered" in caplog.text

    # garbage-collected without its loop ever cancelling it
    caplog.clear()
    loop = asyncio.new_event_loop()
    client = AsyncClient("http://test", transport=httpx.MockTransport(server.handle))

    async def emit() -> None:
        await client.producer(RUN, linger=60).console("orphan")

    with caplog.at_level(logging.WARNING, "runevents.client"):
        loop.run_until_complete(emit())
        loop.close()  # the sender task is dropped as it is, never cancelled
        del loop
        gc.collect()
    assert "1 events not delivered" in caplog.text and "garbage-collected" in caplog.text
