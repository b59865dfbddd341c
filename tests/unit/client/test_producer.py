"""Batching producers against a scripted transport: batches, order, retries, backpressure."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from runevents.client import AsyncClient, Client, ProducerError, RetryPolicy

RUN = {"workspace_id": "ws", "configuration_id": "cfg", "id": "run_" + "0" * 26}
EVENTS_PATH = "/api/v1/workspaces/ws/configurations/cfg/runs/" + RUN["id"] + "/events"


class Server:
    """Records batches; ``script`` lists the answers to give first (status, headers)."""

    def __init__(self, script: list[tuple[int, dict[str, str]] | Exception] | None = None) -> None:
        self.script = list(script or [])
        self.batches: list[list[dict[str, Any]]] = []
        self.keys: list[str | None] = []
        self.times: list[float] = []
        self.next_sequence = 2
        self.delay = 0.0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == EVENTS_PATH
        assert request.headers["content-type"] == "application/x-ndjson"
        self.keys.append(request.headers.get("idempotency-key"))
        self.times.append(time.monotonic())
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            status, headers = answer
            body = {"error": {"code": "busy" if status >= 500 else "bad", "message": "scripted"}}
            return httpx.Response(status, json=body, headers=headers)
        lines = [json.loads(line) for line in request.content.splitlines()]
        self.batches.append(lines)
        first = self.next_sequence
        self.next_sequence += len(lines)
        return httpx.Response(
            200, json={"first_sequence": first, "last_sequence": self.next_sequence - 1}
        )

    def messages(self) -> list[str]:
        return [e["payload"]["message"] for batch in self.batches for e in batch]


def client_for(server: Server, **kw: Any) -> AsyncClient:
    return AsyncClient("http://test", transport=httpx.MockTransport(server.handle), **kw)


async def test_events_go_in_order_in_batches_of_at_most_max_events() -> None:
    server = Server()
    async with client_for(server) as client:
        async with client.producer(RUN, max_events=100, linger=0.01) as producer:
            for i in range(250):
                await producer.console(f"m{i}", level="warning", logger="etl")
        assert producer.delivered == 250
    assert server.messages() == [f"m{i}" for i in range(250)]
    assert [len(b) for b in server.batches] == [100, 100, 50]
    first = server.batches[0][0]
    assert first["type"] == "console.line"
    assert first["payload"] == {
        "scope": "run",
        "stream": "stdout",
        "level": "warning",
        "message": "m0",
        "logger": "etl",
    }
    assert len(set(server.keys)) == 3  # one idempotency key per batch


async def test_a_503_is_retried_after_retry_after_with_the_same_idempotency_key() -> None:
    server = Server([(503, {"Retry-After": "1"}), httpx.ConnectError("reset")])
    async with (
        client_for(server, retry=RetryPolicy(base_delay=0.01)) as client,
        client.producer(RUN) as producer,
    ):
        await producer.console("once")
    assert server.messages() == ["once"]  # delivered exactly once
    assert len(server.keys) == 3 and len(set(server.keys)) == 1
    assert server.times[1] - server.times[0] >= 0.95  # Retry-After: 1 was honoured


async def test_a_rejected_batch_stops_the_producer_and_says_so() -> None:
    server = Server([(422, {})])
    async with client_for(server) as client:
        producer = client.producer(RUN)
        await producer.console("bad")
        with pytest.raises(ProducerError, match="not delivered"):
            await producer.flush()
        with pytest.raises(ProducerError):
            await producer.console("after")
        with pytest.raises(ProducerError):
            await producer.aclose()
    assert server.batches == []


async def test_retries_give_up_after_the_policy() -> None:
    server = Server([(503, {})] * 10)
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
    async with client_for(server, retry=policy) as client:
        producer = client.producer(RUN)
        await producer.console("x")
        with pytest.raises(ProducerError, match=r"HTTP 503|busy"):
            await producer.flush()
    assert len(server.keys) == 3


async def test_finish_run_ends_the_run_failed_with_the_exception() -> None:
    server = Server()

    async def job(client: AsyncClient) -> None:
        async with client.producer(RUN, finish_run=True) as producer:
            await producer.console("working")
            raise RuntimeError("disk on fire")

    async with client_for(server) as client:
        with pytest.raises(RuntimeError):
            await job(client)
    last = server.batches[-1][-1]
    assert last["type"] == "run.completed"
    assert last["payload"] == {
        "status": "failed",
        "failure": {"stage": "run", "code": "RuntimeError", "message": "disk on fire"},
    }


async def test_emit_waits_while_the_buffer_is_over_its_bound() -> None:
    server = Server()
    server.delay = 0.05
    async with client_for(server) as client:
        producer = client.producer(RUN, max_events=10, max_buffered_bytes=2000, linger=0)
        peak = 0
        for i in range(200):
            await producer.console(f"line {i:04d}")
            peak = max(peak, producer._size)
        await producer.aclose()
    line = len(b'{"type":"console.line","payload":{"scope":"run","stream":"stdout",') + 40
    assert peak <= 2000 + line  # bounded: one line past the bound at most
    assert server.messages() == [f"line {i:04d}" for i in range(200)]


def test_sync_producer_from_several_threads_flushes_on_close() -> None:
    import threading

    server = Server()
    with Client("http://test", transport=httpx.MockTransport(server.handle)) as client:
        producer = client.producer(RUN, max_events=50)

        def work(name: str) -> None:
            for i in range(100):
                producer.console(f"{name}-{i}")

        threads = [threading.Thread(target=work, args=(n,)) for n in "abc"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        producer.close()
        assert producer.delivered == 300
    got = server.messages()
    assert sorted(got) == sorted(f"{n}-{i}" for n in "abc" for i in range(100))
    for name in "abc":  # each thread's events keep their order
        mine = [m for m in got if m.startswith(name)]
        assert mine == [f"{name}-{i}" for i in range(100)]


def test_closing_the_client_releases_a_thread_waiting_on_a_call() -> None:
    import concurrent.futures
    import threading

    gate = threading.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        gate.set()
        await asyncio.sleep(30)
        return httpx.Response(200, json={"first_sequence": 1, "last_sequence": 1})

    client = Client("http://test", transport=httpx.MockTransport(slow))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.append, RUN, b'{"type":"x"}\n')
        assert gate.wait(10)
        started = time.monotonic()
        client.close()
        with pytest.raises(concurrent.futures.CancelledError):
            waiting.result(10)
        assert time.monotonic() - started < 10
