"""Clients and cacheable reads (issue 18): a real ``runevents serve`` on loopback.

- ETag revalidation: an ended run of ~100 MB (10 MB quick); a full NDJSON
  download vs a revalidation with ``If-None-Match`` (304, no body).
- Long-poll: 1,000 waiters (200 quick) on one live run, each holding
  ``GET {run}/events?after_sequence=N&wait=60``; one event is appended; the
  time from the POST to each waiter's answer (p50/p99), over several rounds
  (each round re-arms every waiter at the new position), and the server's RSS
  with the waiters parked vs before they came; then, on a fresh server, the
  RSS of as many idle SSE followers (a waiter must cost no more than one).
- Producer: the same events through ``runevents.client``'s producers vs raw
  httpx posting the same 1,000-event batches, one after the other, both
  encoding the events with orjson inside the timed region [>= 0.9x]; async
  (``AsyncProducer`` vs ``httpx.AsyncClient``) and sync (``Producer`` vs
  ``httpx.Client``), interleaved runs, best of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from common import Row, failed_row, iter_console_events, main, ratio, row, server_process

CACHE, LONGPOLL, PRODUCER = "Clients: caching", "Clients: long-poll", "Clients: producer"
WS, CFG = "bench", "clients"
NDJSON = {"Content-Type": "application/x-ndjson"}


@dataclass(frozen=True)
class Sizes:
    log_mb: int  # size of the ended run revalidated
    waiters: int  # long-poll waiters on one live run
    rounds: int  # long-poll rounds (one event each)
    producer_events: int  # events per producer run
    repeats: int  # interleaved repeats of each producer design
    settle_s: float  # time for a crowd of requests to park before an event or a reading


FULL = Sizes(log_mb=100, waiters=1000, rounds=5, producer_events=200_000, repeats=3, settle_s=2.0)
QUICK = Sizes(log_mb=5, waiters=200, rounds=2, producer_events=20_000, repeats=1, settle_s=1.0)


def _progress(message: str) -> None:
    print(f"[bench_clients] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _server(data_dir: Path) -> Iterator[tuple[str, int]]:
    """``python -m runevents serve`` on a free port; (url, pid)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNEVENTS_")}
    env["RUNEVENTS_WORKER_CONCURRENCY"] = "0"
    env["RUNEVENTS_MAINTENANCE_INTERVAL_SECONDS"] = "0"
    with server_process(
        lambda port: [sys.executable, "-m", "runevents", "serve", "--port", str(port),
                      "--data-dir", str(data_dir)],
        env=env, quiet=True,
    ) as server:  # fmt: skip
        yield server


async def _create_run(http: httpx.AsyncClient, cfg: str = CFG) -> str:
    response = await http.post(
        f"/api/v1/workspaces/{WS}/configurations/{cfg}/runs", json={"external": True}
    )
    response.raise_for_status()
    run_id = response.json()["run"]["id"]
    return f"/api/v1/workspaces/{WS}/configurations/{cfg}/runs/{run_id}"


def _events(n: int, seed: int) -> list[dict[str, Any]]:
    return [
        {"type": e["type"], "payload": e["payload"]}
        for e in iter_console_events(n, size=400, seed=seed)
    ]


# ---------------------------------------------------------------------------- caching


async def _caching(url: str, sizes: Sizes) -> list[Row]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        run_path = await _create_run(http)
        n = sizes.log_mb * 1024 * 1024 // 400
        _progress(f"ended run of ~{sizes.log_mb} MB ({n:,} events)")
        batch: list[bytes] = []
        for event in iter_console_events(n, size=400, seed=1):
            batch.append(orjson.dumps({"type": event["type"], "payload": event["payload"]}))
            if len(batch) == 1000:
                body = b"\n".join(batch) + b"\n"
                (
                    await http.post(run_path + "/events", content=body, headers=NDJSON)
                ).raise_for_status()
                batch = []
        done = b'{"type":"run.completed","payload":{"status":"succeeded"}}\n'
        if batch:
            done = b"\n".join(batch) + b"\n" + done
        (await http.post(run_path + "/events", content=done, headers=NDJSON)).raise_for_status()
        while (await http.head(run_path + "/events")).headers["Runevents-Ended"] != "true":
            await asyncio.sleep(0.05)
        accept = {"Accept": "application/x-ndjson"}
        full_s, size, tag = [], 0, ""
        for _ in range(3):
            start = time.perf_counter()
            async with http.stream("GET", run_path + "/events", headers=accept) as response:
                size = 0
                async for data in response.aiter_raw(1 << 20):
                    size += len(data)
                tag = response.headers["etag"]
            full_s.append(time.perf_counter() - start)
        revalidate = []
        for _ in range(200):
            start = time.perf_counter()
            answer = await http.get(run_path + "/events", headers={**accept, "If-None-Match": tag})
            revalidate.append(time.perf_counter() - start)
            if answer.status_code != 304:
                raise RuntimeError(f"expected 304, got {answer.status_code}")
    best_full = min(full_s)
    revalidate.sort()
    p50 = revalidate[len(revalidate) // 2]
    p99 = revalidate[int(len(revalidate) * 0.99)]
    return [
        row(CACHE, "full NDJSON download of an ended run", best_full * 1000, "ms", note=(
            f"{size / 1e6:,.0f} MB, {n + 2:,} events; best of 3; "
            f"{size / best_full / 1e6:,.0f} MB/s")),
        row(CACHE, "ETag revalidation (If-None-Match -> 304)", p50 * 1000, "ms",
            "full download", ratio(p50, best_full),
            f"p50 of 200; p99 {p99 * 1000:.2f} ms; no body, one row read, no log I/O; "
            f"{best_full / p50:,.0f}x faster than the download"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- long-poll


class _Waiter(asyncio.Protocol):
    """One long-poll request on a raw socket (HTTP/1.0: the answer ends the connection)."""

    def __init__(self) -> None:
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(time.perf_counter())


async def _settle(pid: int, timeout: float = 120.0) -> None:
    """Wait until the server is idle (< 5% of a core for 0.5 s): every request of a crowd
    has been read, authorized and parked, so what comes next measures only delivery."""
    import psutil

    process = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(process.cpu_times()[:2])
        await asyncio.sleep(0.5)
        if sum(process.cpu_times()[:2]) - before < 0.025:
            return
    raise RuntimeError("the server did not settle")


async def _rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


async def _long_poll(url: str, pid: int, sizes: Sizes) -> list[Row]:
    port = int(url.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    rss_before = rss_parked = 0
    body = b'{"type":"console.line","payload":{"message":"tick","stream":"stdout"}}\n'
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        run_path = await _create_run(http)
        rss_before = await _rss(pid)
        position = 1
        for round_no in range(sizes.rounds):
            path = f"{run_path}/events?after_sequence={position}&wait=60"
            request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()
            waiters = []
            for _ in range(sizes.waiters):
                transport, waiter = await loop.create_connection(_Waiter, "127.0.0.1", port)
                transport.write(request)
                waiters.append(waiter)
                await asyncio.sleep(0.001)
            await asyncio.sleep(sizes.settle_s)
            await _settle(pid)  # every request is parked on the tail
            if any(w.done.done() for w in waiters):
                raise RuntimeError("a long-poll answered before any event existed")
            rss_parked = max(rss_parked, await _rss(pid))
            _progress(f"long-poll round {round_no + 1}: {sizes.waiters} waiters parked")
            sent = time.perf_counter()
            answer = await http.post(run_path + "/events", content=body, headers=NDJSON)
            answer.raise_for_status()
            position = answer.json()["last_sequence"]
            done = await asyncio.wait_for(asyncio.gather(*(w.done for w in waiters)), 60)
            latencies.extend(t - sent for t in done)
            for waiter in waiters:
                if b'"sequence":%d' % position not in waiter.data:
                    raise RuntimeError("a waiter did not get the event")
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    note = (
        f"{sizes.waiters} waiters x {sizes.rounds} rounds, one event per round; "
        f"p50 {p50:.1f} ms, max {latencies[-1] * 1000:.0f} ms (POST sent -> answer received)"
    )
    grown = (rss_parked - rss_before) / 2**20
    return [
        row(LONGPOLL, f"p99 delivery to {sizes.waiters} long-poll waiters", p99, "ms", note=note),
        row(LONGPOLL, "server RSS with the waiters parked", rss_parked / 2**20, "MB", note=(
            f"{rss_before / 2**20:.0f} MB before; +{grown:.1f} MB for {sizes.waiters} waiters "
            f"({grown * 1024 / sizes.waiters:.1f} KiB each: connection + request + cursor)")),
    ]  # fmt: skip


async def _sse_parked(url: str, pid: int, sizes: Sizes) -> list[Row]:
    """The same crowd as SSE followers (on a fresh server: RSS only grows), for comparison."""
    port = int(url.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        run_path = await _create_run(http)
        rss_before = await _rss(pid)
        request = (
            f"GET {run_path}/events?stream=true&after_sequence=1 HTTP/1.0\r\n"
            "Host: 127.0.0.1\r\n\r\n"
        ).encode()
        transports = []
        for _ in range(sizes.waiters):
            transport, _waiter = await loop.create_connection(_Waiter, "127.0.0.1", port)
            transport.write(request)
            transports.append(transport)
            await asyncio.sleep(0.001)
        await asyncio.sleep(sizes.settle_s)
        await _settle(pid)
        rss_parked = await _rss(pid)
        for transport in transports:
            transport.close()
    grown = (rss_parked - rss_before) / 2**20
    return [
        row(LONGPOLL, "server RSS with as many SSE followers parked", rss_parked / 2**20, "MB",
            note=f"fresh server, {rss_before / 2**20:.0f} MB before; +{grown:.1f} MB for "
            f"{sizes.waiters} SSE followers ({grown * 1024 / sizes.waiters:.1f} KiB each)"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- producer


async def _raw_async(url: str, events: list[dict[str, Any]]) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        run_path = await _create_run(http, "raw")
        start = time.perf_counter()
        for i in range(0, len(events), 1000):
            body = b"".join(orjson.dumps(e) + b"\n" for e in events[i : i + 1000])
            headers = {**NDJSON, "Idempotency-Key": os.urandom(16).hex()}
            (
                await http.post(run_path + "/events", content=body, headers=headers)
            ).raise_for_status()
        return time.perf_counter() - start


async def _producer_async(url: str, events: list[dict[str, Any]]) -> float:
    from runevents.client import AsyncClient

    async with AsyncClient(url) as client:
        run = await client.create_external_run(WS, "producer")
        start = time.perf_counter()
        async with client.producer(run) as producer:
            for e in events:
                await producer.emit(e["type"], e["payload"])
        elapsed = time.perf_counter() - start
        if producer.delivered != len(events):
            raise RuntimeError("the producer lost events")
        return elapsed


def _raw_sync(url: str, events: list[dict[str, Any]]) -> float:
    with httpx.Client(base_url=url, timeout=60) as http:
        created = http.post(
            f"/api/v1/workspaces/{WS}/configurations/raw/runs", json={"external": True}
        )
        run_id = created.json()["run"]["id"]
        run_path = f"/api/v1/workspaces/{WS}/configurations/raw/runs/{run_id}"
        start = time.perf_counter()
        for i in range(0, len(events), 1000):
            body = b"".join(orjson.dumps(e) + b"\n" for e in events[i : i + 1000])
            headers = {**NDJSON, "Idempotency-Key": os.urandom(16).hex()}
            http.post(run_path + "/events", content=body, headers=headers).raise_for_status()
        return time.perf_counter() - start


def _producer_sync(url: str, events: list[dict[str, Any]]) -> float:
    from runevents.client import Client

    with Client(url) as client:
        run = client.create_external_run(WS, "producer")
        start = time.perf_counter()
        with client.producer(run) as producer:
            for e in events:
                producer.emit(e["type"], e["payload"])
        elapsed = time.perf_counter() - start
        if producer.delivered != len(events):
            raise RuntimeError("the producer lost events")
        return elapsed


async def _client_cost(events: list[dict[str, Any]]) -> tuple[float, float]:
    """Seconds of the producer's own work vs raw encoding + httpx, with no server at all
    (an httpx MockTransport answers at once): what a producer adds per event."""
    from runevents.client import AsyncClient

    run = {"workspace_id": WS, "configuration_id": "mock", "id": "run_" + "0" * 26}
    path = f"/api/v1/workspaces/{WS}/configurations/mock/runs/{run['id']}/events"
    counter = [2]

    def answer(request: httpx.Request) -> httpx.Response:
        first = counter[0]
        counter[0] += request.content.count(b"\n")
        return httpx.Response(200, json={"first_sequence": first, "last_sequence": counter[0] - 1})

    transport = httpx.MockTransport(answer)
    async with httpx.AsyncClient(base_url="http://mock", transport=transport) as http:
        start = time.perf_counter()
        for i in range(0, len(events), 1000):
            body = b"".join(orjson.dumps(e) + b"\n" for e in events[i : i + 1000])
            headers = {**NDJSON, "Idempotency-Key": os.urandom(16).hex()}
            await http.post(path, content=body, headers=headers)
        raw = time.perf_counter() - start
    async with AsyncClient("http://mock", transport=transport) as client:
        start = time.perf_counter()
        async with client.producer(run) as producer:
            for e in events:
                await producer.emit(e["type"], e["payload"])
        produced = time.perf_counter() - start
    return raw, produced


#: what the mocked server takes per batch (seconds)
MOCK_BATCH_S = 0.005


def _mocked_sync(events: list[dict[str, Any]]) -> tuple[float, float]:
    """Raw httpx.Client vs the sync Producer against a server mocked to take 5 ms per batch
    (in-process transports, no sockets): whether the producer hides its own cost in the
    server's time, as it fills the next batch while one is posted."""
    from runevents.client import Client

    run = {"workspace_id": WS, "configuration_id": "mock", "id": "run_" + "0" * 26}
    counter = [2]

    def answer(body: bytes) -> httpx.Response:
        first = counter[0]
        counter[0] += body.count(b"\n")
        return httpx.Response(200, json={"first_sequence": first, "last_sequence": counter[0] - 1})

    def slow_sync(request: httpx.Request) -> httpx.Response:
        time.sleep(MOCK_BATCH_S)
        return answer(request.content)

    class SlowAsync(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            body = await request.aread()
            await asyncio.sleep(MOCK_BATCH_S)
            return answer(body)

    with httpx.Client(base_url="http://mock", transport=httpx.MockTransport(slow_sync)) as http:
        start = time.perf_counter()
        for i in range(0, len(events), 1000):
            body = b"".join(orjson.dumps(e) + b"\n" for e in events[i : i + 1000])
            http.post("/events", content=body, headers=NDJSON)
        raw = time.perf_counter() - start
    with Client("http://mock", transport=SlowAsync()) as client:
        start = time.perf_counter()
        with client.producer(run) as producer:
            for e in events:
                producer.emit(e["type"], e["payload"])
        produced = time.perf_counter() - start
    return raw, produced


async def _producers(url: str, sizes: Sizes) -> list[Row]:
    events = _events(sizes.producer_events, seed=7)
    n = len(events)
    best: dict[str, float] = {}
    for repeat in range(sizes.repeats):
        _progress(f"producer vs raw httpx, {n:,} events, round {repeat + 1}/{sizes.repeats}")
        for name, seconds in (
            ("raw_async", await _raw_async(url, events)),
            ("producer_async", await _producer_async(url, events)),
            ("raw_sync", await asyncio.to_thread(_raw_sync, url, events)),
            ("producer_sync", await asyncio.to_thread(_producer_sync, url, events)),
        ):
            best[name] = min(best.get(name, seconds), seconds)
    raw_cost = produced_cost = math.inf
    for _ in range(3):
        raw_s, produced_s = await _client_cost(events)
        raw_cost, produced_cost = min(raw_cost, raw_s), min(produced_cost, produced_s)
    mock_raw = mock_produced = math.inf
    for _ in range(3):
        raw_s, produced_s = await asyncio.to_thread(_mocked_sync, events[:100_000])
        mock_raw, mock_produced = min(mock_raw, raw_s), min(mock_produced, produced_s)
    mocked_n = min(n, 100_000)
    rate = {name: n / seconds for name, seconds in best.items()}
    note = f"{n:,} events of ~400 B in 1,000-event batches; best of {sizes.repeats}; target >= 0.9x"
    return [
        row(PRODUCER, "raw httpx.AsyncClient, 1,000-event batches", rate["raw_async"], "events/s",
            note="orjson per event + one POST per batch, sequential"),
        row(PRODUCER, "AsyncProducer (runevents.client)", rate["producer_async"], "events/s",
            "raw httpx async", ratio(rate["producer_async"], rate["raw_async"]), note),
        row(PRODUCER, "raw httpx.Client, 1,000-event batches", rate["raw_sync"], "events/s",
            note="orjson per event + one POST per batch, sequential"),
        row(PRODUCER, "Producer, sync (runevents.client)", rate["producer_sync"], "events/s",
            "raw httpx sync", ratio(rate["producer_sync"], rate["raw_sync"]), note),
        row(PRODUCER, "Producer, sync, server mocked at 5 ms per batch", mocked_n / mock_produced,
            "events/s", "raw httpx sync, same mock", ratio(mock_raw, mock_produced),
            f"{mocked_n:,} events, in-process transports, best of 3: the producer's own cost "
            "hidden in the server's time (it fills a batch while the previous one is posted)"),
        row(PRODUCER, "client CPU per event, AsyncProducer (no server)", produced_cost / n * 1e6,
            "µs", "raw encode + httpx", ratio(produced_cost, raw_cost),
            f"raw {raw_cost / n * 1e6:.2f} µs/event; httpx MockTransport answering at once; best "
            "of 3: what emit() + batching add on the producer's own core"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- collect


async def _collect(url: str, pid: int, sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    for section, part in (
        (CACHE, _caching(url, sizes)),
        (LONGPOLL, _long_poll(url, pid, sizes)),
        (PRODUCER, _producers(url, sizes)),
    ):
        try:
            rows += await part
        except Exception as exc:
            rows.append(failed_row(section, section, exc))
    return rows


def collect(quick: bool) -> list[Row]:
    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="runevents-bench-clients-") as tmp:
        try:
            with _server(Path(tmp) / "data") as (url, pid):
                rows = asyncio.run(_collect(url, pid, sizes))
        except Exception as exc:
            return [failed_row(CACHE, "client benchmarks", exc)]
        try:
            with _server(Path(tmp) / "data-sse") as (url, pid):
                rows += asyncio.run(_sse_parked(url, pid, sizes))
        except Exception as exc:
            rows.append(failed_row(LONGPOLL, "SSE followers parked", exc))
        return rows


if __name__ == "__main__":
    main(collect)
