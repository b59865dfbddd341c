"""The HTTP API under load: a real ``runevents`` server (uvicorn, own process) on loopback.

Sections (issue 5 targets in brackets):

- Ingest: 1,000-event NDJSON batches POSTed one after the other over one
  keep-alive connection, against Postgres COPY (1,000-event transactions) and
  INSERT per event (autocommit) of the same events in a scratch database
  [>= 2x COPY, >= 20x INSERT]. Every timed region includes the producer's JSON
  encoding of its events, as in ``bench_peers``. The producer posts with
  aiohttp (C HTTP parser), as the COPY side uses asyncpg (C protocol); every
  other batch goes through httpx (pure-Python h11) instead, and its own row
  shows what that client costs.
- SSE replay of the completed run (1,000,000 events; 100,000 quick) to one
  client [>= 200,000 events/s]; the same frames through a plain Starlette
  ``StreamingResponse`` (bench-only route) show what the product's
  ``EventStream`` (keepalive, send watchdog, shutdown) costs.
- NDJSON download of the same run vs the same file served by ``StaticFiles``
  from the same server (a bench-only mount) [>= 0.8x], and JSON pages of 5,000.
- Fan-out: 500 SSE clients (50 quick) follow one live run that gets 100
  events/s, one event per POST: p99 append-to-client latency (POST sent ->
  frame received) and the server's peak RSS [p99 < 250 ms, RSS < 500 MB].

The server runs as ``python bench/bench_api.py --serve ...`` (this file) so the
bench-only routes never exist in the product. Clients run in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from common import (
    Row,
    failed_row,
    iter_console_events,
    main,
    pg_unreachable_reason,
    ratio,
    row,
    scratch_pg_database,
    server_process,
    skipped_row,
)

INGEST, SSE, DOWNLOAD, FANOUT = "API ingest", "API SSE replay", "API download", "API fan-out"
BATCH = 1_000
WS, CFG = "bench", "api"


@dataclass(frozen=True)
class Sizes:
    events: int  # events of the big run (ingest, replay, download)
    pg_events: int  # events ingested by a server whose run index is on Postgres
    inserts: int  # INSERTs per event after each 1,000-event batch
    clients: int  # fan-out SSE clients
    fanout_s: float  # seconds of 100 events/s


FULL = Sizes(1_000_000, 200_000, inserts=5, clients=500, fanout_s=30)
QUICK = Sizes(100_000, 50_000, inserts=10, clients=50, fanout_s=8)


def _progress(message: str) -> None:
    print(f"[bench_api] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the server


def _serve(port: int, data_dir: Path, database_url: str | None) -> None:
    """Child process: the product app plus two bench-only routes, under uvicorn."""
    import uvicorn
    from starlette.responses import StreamingResponse
    from starlette.staticfiles import StaticFiles

    from runevents.api.app import create_app
    from runevents.api.sse import HEADERS, frames
    from runevents.settings import Settings

    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        port=port,
    )
    asgi = create_app(settings)

    async def plain_sse(ws: str, cfg: str, run_id: str) -> StreamingResponse:
        manager = asgi.state.api.manager
        run = await manager.open_events(ws, cfg, run_id)
        body = frames(manager.follow_events(run, 0), 0)
        return StreamingResponse(body, headers=HEADERS)

    asgi.add_api_route(
        "/bench/plain-sse/workspaces/{ws}/configurations/{cfg}/runs/{run_id}",
        plain_sse,
        methods=["GET"],
    )
    data_dir.mkdir(parents=True, exist_ok=True)  # the app creates it only when it starts
    asgi.mount("/bench-static", StaticFiles(directory=data_dir))
    uvicorn.run(asgi, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def _server(data_dir: Path, database_url: str = "") -> Iterator[tuple[str, int]]:
    """A runevents server on a free port (SQLite in ``data_dir`` unless ``database_url``)."""
    argv = [sys.executable, __file__, "--serve", "{port}", str(data_dir), database_url]
    with server_process(lambda port: [a.replace("{port}", str(port)) for a in argv]) as server:
        yield server


# ---------------------------------------------------------------------------- (a) ingest


_PG_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (run_id text NOT NULL, sequence bigint NOT NULL,
                                   body jsonb NOT NULL, PRIMARY KEY (run_id, sequence))
"""
NDJSON_HEADERS = {"Content-Type": "application/x-ndjson"}


@dataclass
class Rates:
    """Busy seconds and counts of the interleaved designs."""

    ingest: list[float]  # [events, seconds] posted with aiohttp
    httpx: list[float]  # the same, posted with httpx
    copy: list[float]
    insert: list[float]

    def rate(self, name: str) -> float:
        done, seconds = getattr(self, name)
        return float(done / seconds) if seconds else math.nan


async def _post_aiohttp(session: aiohttp.ClientSession, path: str, body: bytes) -> None:
    async with session.post(path, data=body, headers=NDJSON_HEADERS) as response:
        response.raise_for_status()
        await response.read()


async def _post_httpx(http: httpx.AsyncClient, path: str, body: bytes) -> None:
    response = await http.post(path, content=body, headers=NDJSON_HEADERS)
    response.raise_for_status()


async def _interleaved(
    clients: tuple[aiohttp.ClientSession, httpx.AsyncClient],
    run_path: str,
    conn: Any,
    n: int,
    inserts: int,
) -> Rates:
    """Ingest ``n`` events over HTTP, COPY the same events and INSERT ``inserts`` per batch.

    Batch by batch, in turn: on a shared machine the load changes by the second,
    and interleaving gives every design the same share of it. Each timed region
    includes the JSON encoding of the batch (what a producer pays in each design).
    Even batches are posted with aiohttp, odd ones with httpx (same run, same
    connection reuse), each client timed on its own.
    """
    session, http = clients
    rates = Rates([0, 0.0], [0, 0.0], [0, 0.0], [0, 0.0])
    number = 0
    envelopes = iter_console_events(n)
    dumps = orjson.dumps
    table = f"ev_{run_path.rsplit('_', 1)[1].lower()}"  # one table per run: fresh primary keys
    if conn is not None:
        await conn.execute(_PG_TABLE.format(name=table))
        insert = await conn.prepare(f"INSERT INTO {table} VALUES ($1, $2, $3)")
    while batch := list(itertools.islice(envelopes, BATCH)):
        start = time.perf_counter()
        body = b"".join(
            [dumps({"type": e["type"], "payload": e["payload"]}) + b"\n" for e in batch]
        )
        if number % 2 == 0:
            await _post_aiohttp(session, run_path + "/events", body)
            timed = rates.ingest
        else:
            await _post_httpx(http, run_path + "/events", body)
            timed = rates.httpx
        timed[1] += time.perf_counter() - start
        timed[0] += len(batch)
        number += 1
        if conn is None:
            continue
        start = time.perf_counter()
        records = [("c", e["sequence"], dumps(e).decode()) for e in batch]
        async with conn.transaction():
            await conn.copy_records_to_table(
                table, records=records, columns=("run_id", "sequence", "body")
            )
        rates.copy[1] += time.perf_counter() - start
        rates.copy[0] += len(batch)
        start = time.perf_counter()
        for e in batch[:inserts]:
            # autocommit: one statement, one commit (the rows design the doc rejects)
            await insert.fetch("i", e["sequence"], dumps(e).decode())
        rates.insert[1] += time.perf_counter() - start
        rates.insert[0] += min(inserts, len(batch))
    return rates


async def _create_run(http: httpx.AsyncClient) -> str:
    response = await http.post(
        f"/api/v1/workspaces/{WS}/configurations/{CFG}/runs", json={"external": True}
    )
    response.raise_for_status()
    run_id = response.json()["run"]["id"]
    return f"/api/v1/workspaces/{WS}/configurations/{CFG}/runs/{run_id}"


async def _complete(http: httpx.AsyncClient, run_path: str) -> None:
    done = b'{"type":"run.completed","payload":{"status":"succeeded"}}\n'
    response = await http.post(run_path + "/events", content=done, headers=NDJSON_HEADERS)
    response.raise_for_status()


async def _ingest_run(url: str, n: int, conn: Any, inserts: int) -> tuple[str, Rates]:
    """A completed run of ``n`` producer events, ingested interleaved with the peers."""
    async with (
        httpx.AsyncClient(base_url=url, timeout=60) as http,
        aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=60)) as session,
    ):
        run_path = await _create_run(http)
        _progress(f"ingest {n:,} events, interleaved with COPY/INSERT, into {url}")
        rates = await _interleaved((session, http), run_path, conn, n, inserts)
        await _complete(http, run_path)
    return run_path, rates


# ---------------------------------------------------------------------------- (b), (c) reads


async def _stream_count(url: str, marker: bytes | None) -> tuple[int, int, float]:
    """GET ``url`` to the end: (bytes, occurrences of ``marker``, seconds)."""
    total = count = 0
    carry = b""
    keep = len(marker) - 1 if marker else 0
    async with httpx.AsyncClient(timeout=None) as http:
        start = time.perf_counter()
        async with http.stream("GET", url) as response:
            response.raise_for_status()
            async for data in response.aiter_raw(1 << 20):
                total += len(data)
                if marker:
                    window = carry + data
                    count += window.count(marker)
                    carry = window[-keep:]
        seconds = time.perf_counter() - start
    return total, count, seconds


async def _pages(http: httpx.AsyncClient, run_path: str) -> tuple[int, float]:
    after, n = 0, 0
    start = time.perf_counter()
    while True:
        response = await http.get(
            run_path + "/events", params={"after_sequence": after, "limit": 5000}
        )
        page = orjson.loads(response.content)
        n += len(page["events"])
        after = page["next_after_sequence"]
        if not page["has_more"]:
            return n, time.perf_counter() - start


# ---------------------------------------------------------------------------- (d) fan-out

_ID_RE = re.compile(rb"\nid: (\d+)\n")


class _Follower(asyncio.Protocol):
    """One SSE client on a raw socket, as cheap as a client can be.

    A Protocol (a callback per read, no coroutine to resume) and HTTP/1.0 (no
    chunked framing): 500 of them share this process's CPU with the producer,
    and every microsecond they spend would show up as server latency.
    """

    def __init__(self, sent: dict[int, float], latencies: list[float]) -> None:
        self.sent = sent
        self.latencies = latencies
        self.buffer = b"\n"
        self.seen = 0
        self.ready = asyncio.Event()
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.ready.set()
        buffer = self.buffer + data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self.buffer = buffer
            return
        for match in _ID_RE.finditer(buffer, 0, end + 2):
            sent_at = self.sent.get(int(match.group(1)))
            if sent_at is not None:
                self.latencies.append(now - sent_at)
                self.seen += 1
        self.buffer = buffer[end + 1 :]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.seen)


async def _follow(
    port: int, path: str, sent: dict[int, float], latencies: list[float]
) -> _Follower:
    loop = asyncio.get_running_loop()
    transport, follower = await loop.create_connection(
        lambda: _Follower(sent, latencies), "127.0.0.1", port
    )
    transport.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return follower


async def _rss_sampler(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    import psutil

    process = psutil.Process(pid)
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def _fanout(url: str, pid: int, sizes: Sizes) -> list[Row]:
    port = int(url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        run_path = await _create_run(http)
        sse_path = run_path + "/events?stream=true&after_sequence=1"
        sent: dict[int, float] = {}
        latencies: list[float] = []
        peak = [0]
        stop = asyncio.Event()
        sampler = asyncio.create_task(_rss_sampler(pid, peak, stop))
        followers = []
        for _ in range(sizes.clients):  # connect gradually, like a real crowd
            followers.append(await _follow(port, sse_path, sent, latencies))
            await asyncio.sleep(0.002)
        await asyncio.wait_for(asyncio.gather(*(f.ready.wait() for f in followers)), 60)
        _progress(f"fan-out: {sizes.clients} clients connected; 100 events/s")
        headers = {"Content-Type": "application/x-ndjson"}
        body = b'{"type":"console.line","payload":{"message":"tick","stream":"stdout"}}\n'
        n = int(sizes.fanout_s * 100)
        start = time.perf_counter()
        for i in range(n):
            # pace against the clock, not by sleeping a fixed amount after each POST
            delay = start + i / 100 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            # one producer, so the sequence is known before the POST; recording the
            # send time first matters: a fast client may see the event before the answer
            sequence = 2 + i
            sent[sequence] = time.perf_counter()
            response = await http.post(run_path + "/events", content=body, headers=headers)
            if response.json()["first_sequence"] != sequence:
                raise RuntimeError("another writer appended to the fan-out run")
        await _complete(http, run_path)
        seen = await asyncio.wait_for(asyncio.gather(*(f.done for f in followers)), 120)
        stop.set()
        await sampler
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    expected = n * sizes.clients
    delivered = sum(seen)
    note = (
        f"{sizes.clients} clients, {n:,} events at 100/s; p50 {p50:.1f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms; delivered {delivered:,}/{expected:,}"
    )
    return [
        row(FANOUT, "p99 append-to-client latency", p99, "ms", "target 250 ms", p99 / 250, note),
        row(FANOUT, "server peak RSS", peak[0] / 2**20, "MB", "target 500 MB",
            peak[0] / 2**20 / 500, f"{sizes.clients} SSE clients following one live run"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- collect


def _ingest_rows(sizes: Sizes, rates: Rates, pg_rates: Rates) -> list[Row]:
    name = "HTTP ingest, 1,000-event NDJSON batches"
    ingest, copy, insert = rates.rate("ingest"), rates.rate("copy"), rates.rate("insert")
    pg_ingest, pg_copy = pg_rates.rate("ingest"), pg_rates.rate("copy")
    slow = rates.rate("httpx")
    note = "aiohttp producer, interleaved batch by batch with the peers on the same events"
    return [
        row(INGEST, name + " (SQLite index)", ingest, "events/s", "Postgres COPY",
            ratio(ingest, copy), f"{sizes.events:,} events, one producer; serve default; {note}; "
            "target >= 2x COPY"),
        row(INGEST, name + " (SQLite index)", ingest, "events/s", "Postgres INSERT",
            ratio(ingest, insert), "target >= 20x INSERT per event"),
        row(INGEST, name + " (Postgres index)", pg_ingest, "events/s", "Postgres COPY",
            ratio(pg_ingest, pg_copy), f"{sizes.pg_events:,} events; run rows in Postgres; "
            f"COPY interleaved with it: {pg_copy:,.0f}/s"),
        row(INGEST, name + ", httpx producer", slow, "events/s", "Postgres COPY",
            ratio(slow, copy), "the other half of the batches of the SQLite-index run, posted "
            "with httpx (pure-Python HTTP): the client's own cost"),
        row(INGEST, "Postgres COPY, 1,000-event transactions", copy, "events/s",
            note=f"{sizes.events:,} events, asyncpg copy_records_to_table, jsonb rows"),
        row(INGEST, "Postgres INSERT per event (autocommit)", insert, "events/s",
            note=f"{int(rates.insert[0]):,} events, {sizes.inserts} after each batch"),
    ]  # fmt: skip


async def _collect(sizes: Sizes, url: str, pid: int, tmp: Path) -> list[Row]:
    rows: list[Row] = []
    name = "HTTP ingest, 1,000-event NDJSON batches"
    reason = await pg_unreachable_reason()
    if reason:
        run_path, rates = await _ingest_run(url, sizes.events, None, 0)
        rows.append(row(INGEST, name, rates.rate("ingest"), "events/s", note="aiohttp producer"))
        rows.append(row(INGEST, name + ", httpx producer", rates.rate("httpx"), "events/s"))
        rows.append(skipped_row(INGEST, "Postgres COPY / INSERT", reason))
    else:
        import asyncpg

        async with scratch_pg_database("runevents_bench_api") as dsn:
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                run_path, rates = await _ingest_run(url, sizes.events, conn, sizes.inserts)
                with _server(tmp / "pg-data", dsn) as (pg_url, _):
                    _, pg_rates = await _ingest_run(pg_url, sizes.pg_events, conn, sizes.inserts)
            finally:
                await conn.close()
        rows += _ingest_rows(sizes, rates, pg_rates)

    n = sizes.events + 2  # run.queued + the events + run.completed
    _progress("SSE replay")
    _, sse_events, sse_s = await _stream_count(
        f"{url}{run_path}/events?stream=true", b"\nevent: ade.event\n"
    )
    _, plain_events, plain_s = await _stream_count(
        f"{url}/bench/plain-sse{run_path.removeprefix('/api/v1')}", b"\nevent: ade.event\n"
    )
    sse_rate = sse_events / sse_s
    plain_rate = plain_events / plain_s
    rows += [
        row(SSE, "SSE replay of a completed run, one client", sse_rate, "events/s",
            "target 200,000/s", sse_rate / 200_000,
            f"{sse_events:,} of {n:,} events; the product's EventStream response"),
        row(SSE, "same frames via plain StreamingResponse", plain_rate, "events/s",
            "EventStream", ratio(plain_rate, sse_rate),
            f"{plain_events:,} events; bench-only route: the cost of keepalive/watchdog"),
    ]  # fmt: skip

    _progress("NDJSON download vs static file")
    run_id = run_path.rsplit("/", 1)[1]
    rel = f"workspaces/{WS}/runs/{run_id}/logs/events.ndjson"
    ndjson_url = f"{url}{run_path}/events"
    best_nd = best_static = 0.0
    size = 0
    for _ in range(3):
        async with httpx.AsyncClient(timeout=None) as http:
            start = time.perf_counter()
            async with http.stream(
                "GET", ndjson_url, headers={"Accept": "application/x-ndjson"}
            ) as response:
                size = sum([len(d) async for d in response.aiter_raw(1 << 20)])
            best_nd = max(best_nd, size / (time.perf_counter() - start))
        static_size, _, static_s = await _stream_count(f"{url}/bench-static/{rel}", None)
        best_static = max(best_static, static_size / static_s)
    rows.append(
        row(DOWNLOAD, "NDJSON download (Accept: application/x-ndjson)", best_nd / 1e6, "MB/s",
            "static file", ratio(best_nd, best_static),
            f"{size / 1e6:.0f} MB log; best of 3; static = StaticFiles on the same server, "
            f"{best_static / 1e6:.0f} MB/s; target >= 0.8x")
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        paged, pages_s = await _pages(http, run_path)
    rows.append(
        row(DOWNLOAD, "JSON pages of 5,000 (client parses)", paged / pages_s, "events/s",
            "SSE replay", ratio(paged / pages_s, sse_rate), f"{paged:,} events")
    )  # fmt: skip

    _progress(f"fan-out: {sizes.clients} clients")
    rows += await _fanout(url, pid, sizes)
    return rows


def collect(quick: bool) -> list[Row]:
    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="runevents-bench-api-") as tmp:
        try:
            with _server(Path(tmp) / "data") as (url, pid):
                return _run(_collect(sizes, url, pid, Path(tmp)))
        except Exception as exc:
            return [failed_row(INGEST, "API benchmarks", exc)]


def _run(coro: Any) -> list[Row]:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[no-any-return]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] or None)
    else:
        main(collect)
