"""Would two server processes raise durable ingest with 8 producers? (issue 13, figures)

Durable ingest of 1,000-event batches is CPU-bound in one Python process (the
fsyncs are shared already), so on a machine with two cores the 8-producer
figure is one process's CPU. This measures 8 producers on 8 runs against:

- **one process** (the default deployment);
- **two processes on one data dir, producers split 4/4 by port**: the best a
  router or cross-process forwarding could do (each run's batches reach the
  process that holds it);
- **``uvicorn --workers 2`` on one port** (one listening socket the workers
  share) and **two processes on one port with SO_REUSEPORT** (the kernel hashes
  each connection to one of them): a producer keeps one connection and creates
  its run over it, so its batches reach the process holding the run (a batch
  reaching the other would be 503 WriterMoving: counted, retried);
- **8 Postgres COPY sessions** (``synchronous_commit=on``), for the ratio.

Each server: SQLite run index and local log store in one data dir (the bench's
setup), ``fsync=flush`` (durable, the default). Run:
``python bench/bench_processes.py [--quick] [--no-machine]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from common import (
    CopySessions,
    Row,
    batch_bodies,
    create_run,
    failed_row,
    free_port,
    main,
    pg_unreachable_reason,
    ratio,
    row,
    scratch_pg_database,
    server_process,
    start_server,
    stop_servers,
)

SECTION = "Durability, processes"
WS, CFG = "bench", "durable"
NDJSON = {"Content-Type": "application/x-ndjson"}
PRODUCERS = 8


def _progress(message: str) -> None:
    print(f"[bench_processes] {message}", file=sys.stderr, flush=True)


def app_from_env() -> Any:
    """The product app for ``uvicorn --factory`` (settings from RUNEVENTS_* variables), with
    ``/bench/pid`` so a producer can tell which worker its connection reached."""
    from runevents.api.app import create_app
    from runevents.settings import Settings

    asgi = create_app(Settings())

    async def pid() -> dict[str, int]:
        return {"pid": os.getpid()}

    asgi.add_api_route("/bench/pid", pid, methods=["GET"])
    return asgi


def _serve(port: int, workers: int) -> None:
    """``workers`` > 0: uvicorn's own workers on one socket; 0: one process on its own
    SO_REUSEPORT socket (start several on one port: the kernel spreads connections)."""
    import socket

    import uvicorn

    app = "bench_processes:app_from_env"
    common: dict[str, Any] = {"host": "127.0.0.1", "port": port, "log_level": "warning"}
    if workers > 0:
        uvicorn.run(app, factory=True, app_dir=str(Path(__file__).parent), workers=workers,
                    access_log=False, **common)  # fmt: skip
        return
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    # (not uvicorn's fd=: it wraps the descriptor as AF_UNIX, so uvloop serves the
    # TCP connections as pipes, without TCP_NODELAY)
    sys.path.insert(0, str(Path(__file__).parent))
    config = uvicorn.Config(app, factory=True, access_log=False, **common)
    uvicorn.Server(config).run(sockets=[sock])


def _env(data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RUNEVENTS_DATA_DIR": str(data_dir),
        "RUNEVENTS_WORKER_CONCURRENCY": "0",
        "RUNEVENTS_MAINTENANCE_INTERVAL_SECONDS": "0",
        "RUNEVENTS_REPAIR_INTERVAL_SECONDS": "0",
        "RUNEVENTS_FSYNC": "flush",
    }


@contextlib.contextmanager
def _server(data_dir: Path, workers: int) -> Iterator[str]:
    with server_process(
        lambda port: [sys.executable, __file__, "--serve", str(port), str(workers)],
        env=_env(data_dir),
    ) as (url, _):
        yield url


@contextlib.contextmanager
def _reuseport_pair(data_dir: Path) -> Iterator[str]:
    """Two single-process servers on one port (SO_REUSEPORT); the URL once both answer."""
    port = free_port()
    argv = [sys.executable, __file__, "--serve", str(port), "0"]
    procs = [start_server(argv, env=_env(data_dir))]
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_pids(url, 1)  # the first one migrated the index before the second starts
        procs.append(start_server(argv, env=_env(data_dir)))
        _wait_for_pids(url, 2)
        yield url
    finally:
        stop_servers(procs, grace=30.0)


def _wait_for_pids(url: str, n: int) -> None:
    """Until ``n`` different processes answered on ``url`` (new connections, spread by hash)."""
    import httpx

    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while len(seen) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} servers did not start on {url}")
        with contextlib.suppress(httpx.HTTPError):
            seen.add(int(httpx.get(url + "/bench/pid", timeout=1).json()["pid"]))
        time.sleep(0.05)


async def _producer(url: str, bodies: list[bytes], start: asyncio.Event) -> tuple[int, int]:
    """One producer on one connection: create a run, then post every body (retrying a 503).
    Returns (the pid that served it, 503 answers)."""
    refused = 0
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(url, connector=connector) as session:
        async with session.get("/bench/pid") as r:
            pid = int((await r.json())["pid"])
        path = await create_run(session, CFG, WS) + "/events"
        await start.wait()
        for body in bodies:
            while True:
                async with session.post(path, data=body, headers=NDJSON) as r:
                    await r.read()
                    if r.status != 503:
                        r.raise_for_status()
                        break
                    refused += 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", "0.05")))
    return pid, refused


async def _eight(urls: list[str], bodies: list[list[bytes]], per: int) -> tuple[float, str]:
    """8 producers, producer i on ``urls[i % len(urls)]``: (events/s, how they spread)."""
    start = asyncio.Event()
    tasks = [
        asyncio.create_task(_producer(urls[i % len(urls)], bodies[i], start))
        for i in range(PRODUCERS)
    ]
    await asyncio.sleep(0.5)  # every producer connected and its run created
    began = time.perf_counter()
    start.set()
    results = await asyncio.gather(*tasks)
    wall = time.perf_counter() - began
    spread: dict[int, int] = {}
    for pid, _ in results:
        spread[pid] = spread.get(pid, 0) + 1
    refused = sum(r for _, r in results)
    shape = "/".join(str(n) for n in sorted(spread.values(), reverse=True))
    return PRODUCERS * per / wall, f"producers per process {shape}; 503 answers: {refused}"


async def _collect(per: int, tmp: Path) -> list[Row]:
    reason = await pg_unreachable_reason()
    seeds = [10 + i for i in range(PRODUCERS)]
    bodies = [batch_bodies(per, seed) for seed in seeds]
    data_dir = tmp / "data"
    results: dict[str, tuple[float, str]] = {}
    copies = 0.0
    for attempt in range(2):  # alternated twice, best of each (as bench_durability)
        _progress(f"round {attempt + 1}: one process")
        with _server(data_dir, 1) as url:
            rate, shape = await _eight([url], bodies, per)
        results["one"] = max(results.get("one", (0.0, "")), (rate, shape))
        _progress(f"round {attempt + 1}: two processes, producers split by port")
        with _server(data_dir, 1) as first, _server(data_dir, 1) as second:
            rate, shape = await _eight([first, second], bodies, per)
        results["split"] = max(results.get("split", (0.0, "")), (rate, shape))
        _progress(f"round {attempt + 1}: uvicorn --workers 2, one port")
        with _server(data_dir, 2) as url:
            rate, shape = await _eight([url], bodies, per)
        results["workers"] = max(results.get("workers", (0.0, "")), (rate, shape))
        _progress(f"round {attempt + 1}: two processes on one port, SO_REUSEPORT")
        with _reuseport_pair(data_dir) as url:
            rate, shape = await _eight([url], bodies, per)
        results["reuseport"] = max(results.get("reuseport", (0.0, "")), (rate, shape))
        if not reason:
            _progress(f"round {attempt + 1}: 8 COPY sessions")
            async with (
                scratch_pg_database("runevents_bench_processes") as dsn,
                CopySessions(dsn, seeds, per) as sessions,
            ):
                copies = max(copies, sessions.events / await sessions.run())
    one = results["one"][0]
    vs_copy = "8 COPY sessions, synchronous_commit=on"
    note_copy = f"COPY: {copies:,.0f}/s; " if copies else f"COPY skipped ({reason}); "
    events = f"{PRODUCERS * per:,} events in 1,000-event batches, durable"
    return [
        row(SECTION, "8 producers on 8 runs, one process", one, "events/s", vs_copy,
            ratio(one, copies), f"{events}; {note_copy}best of 2"),
        row(SECTION, "  two processes, one data dir, producers split 4/4 by port",
            results["split"][0], "events/s", "one process", ratio(results["split"][0], one),
            f"{results['split'][1]}; the best routing could do; vs COPY "
            + (f"{results['split'][0] / copies:.2f}x" if copies else "n/a")),
        row(SECTION, "  uvicorn --workers 2, one port", results["workers"][0], "events/s",
            "one process", ratio(results["workers"][0], one),
            f"{results['workers'][1]}; one listening socket, the kernel hands connections out"),
        row(SECTION, "  two processes on one port (SO_REUSEPORT)", results["reuseport"][0],
            "events/s", "one process", ratio(results["reuseport"][0], one),
            f"{results['reuseport'][1]}; connections spread by the kernel's hash"),
    ]  # fmt: skip


def collect(quick: bool) -> list[Row]:
    per = 8_000 if quick else 50_000
    with tempfile.TemporaryDirectory(prefix="runevents-bench-processes-") as tmp:
        try:
            return asyncio.run(_collect(per, Path(tmp)))
        except Exception as exc:
            return [failed_row(SECTION, "processes benchmarks", exc)]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main(collect)
