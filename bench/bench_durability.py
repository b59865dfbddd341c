"""A 200 means durable, measured like for like (the durability issue's figures).

A real ``runevents`` server (uvicorn, own process, SQLite run index, local
log store) on loopback; the peer is Postgres COPY of the same events in a
scratch database. Durable against durable, relaxed against relaxed:

- **Durable ingest, one producer** (the server default: a batch is answered
  after write + fsync) vs COPY of 1,000-row transactions with
  ``synchronous_commit=on`` in one session, interleaved batch by batch so
  both get the same share of a shared machine [>= 2x]. The same again in
  turns of 20 batches each shows what starting every batch cold costs each
  side (information, not the target).
- **Durable ingest, 8 producers on 8 runs** vs 8 concurrent COPY sessions
  (``synchronous_commit=on``), alternated twice, best of each [>= 3x].
- **Relaxed ingest** (a server with ``RUNEVENTS_FSYNC=never``: page cache, no
  fsync) vs COPY with ``synchronous_commit=off``, interleaved.
- **The floor** (``floor_server.py``): the least any Python server pays for
  a durable batch, on the same HTTP stack, measured the same way against the
  same COPY in the same run: whether a target is out of reach for the design
  or for the runtime on this machine.
- **fsyncs per acknowledged batch** with 8 producers on 8 runs and with 8
  producers on *one* run (group commit: batches that arrive while an fsync
  is in flight share the next). Counted in the server: the bench's server
  wraps ``FileOps.fsync`` (the write path's OS-call seam) with a counter.
- **Completing a large run** (1 GiB; 50 MiB quick): the completion's wall
  time, the longest event-loop stall in the server meanwhile (a task that
  sleeps 5 ms and records how late it wakes), and the p99 append-to-delivery
  latency of a follower of *another* live run (100 events/s) before and
  during the completion.

The server runs as ``python bench/bench_durability.py --serve ...`` (this
file), so the counting seam and the stall probe never exist in the product.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from common import (
    BATCH,
    COPY_TABLE,
    CopySessions,
    Row,
    create_run,
    event_batches,
    failed_row,
    iter_console_events,
    main,
    pg_unreachable_reason,
    producer_body,
    ratio,
    row,
    scratch_pg_database,
    server_process,
    skipped_row,
)

SECTION = "Durability"
#: batches per turn in the warm variant of the one-producer row
WARM_TURN = 20
WS, CFG = "bench", "durable"
#: each interleaved comparison copies into a table of its own
_TABLE_NUMBERS = itertools.count()
NDJSON = {"Content-Type": "application/x-ndjson"}


@dataclass(frozen=True)
class Sizes:
    one: int  # events of the one-producer rows
    eight: int  # events per producer of the 8-producer rows
    big_bytes: int  # size of the run completed in the last row


FULL = Sizes(one=200_000, eight=50_000, big_bytes=1 << 30)
QUICK = Sizes(one=30_000, eight=8_000, big_bytes=50 << 20)


def _progress(message: str) -> None:
    print(f"[bench_durability] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the server


def _serve(port: int, data_dir: Path, fsync: str) -> None:
    """Child process: the product app, a counting fsync seam and a loop-stall probe."""
    import uvicorn

    from runevents.api.app import create_app
    from runevents.eventlog.files import FileOps
    from runevents.settings import Settings

    counts = {"fsyncs": 0}
    plain_fsync = FileOps.fsync

    def counting_fsync(self: FileOps, fd: int) -> None:
        counts["fsyncs"] += 1
        plain_fsync(self, fd)

    FileOps.fsync = counting_fsync  # type: ignore[method-assign]
    settings = Settings(
        data_dir=data_dir,
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        repair_interval_seconds=0,
        fsync=fsync,  # type: ignore[arg-type]
        port=port,
    )
    asgi = create_app(settings)
    stall = {"max": 0.0}

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.005)
            # (to the microsecond: a wake-up on time is 0, not a float residue)
            stall["max"] = max(stall["max"], round(loop.time() - start - 0.005, 6))

    probes: list[asyncio.Task[None]] = []

    async def fsyncs() -> dict[str, int]:
        return dict(counts)

    async def stall_reset() -> dict[str, float]:
        if not probes:
            probes.append(asyncio.create_task(probe()))
        worst, stall["max"] = stall["max"], 0.0
        return {"max_stall_s": worst}

    asgi.add_api_route("/bench/fsyncs", fsyncs, methods=["GET"])
    asgi.add_api_route("/bench/stall", stall_reset, methods=["POST"])
    uvicorn.run(asgi, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def _server(data_dir: Path, fsync: str) -> Iterator[str]:
    with server_process(
        lambda port: [sys.executable, __file__, "--serve", str(port), str(data_dir), fsync]
    ) as (url, _):
        yield url


@contextlib.contextmanager
def _floor_server(data_dir: Path) -> Iterator[str]:
    """The floor of durable ingest in Python (``floor_server.py``), on the same HTTP stack."""
    floor = str(Path(__file__).with_name("floor_server.py"))
    with server_process(lambda port: [sys.executable, floor, str(port), str(data_dir)]) as (
        url,
        _,
    ):
        yield url


# ---------------------------------------------------------------------------- producers and COPY


async def _create_run(session: aiohttp.ClientSession) -> str:
    return await create_run(session, CFG, WS)


async def _post(session: aiohttp.ClientSession, run_path: str, body: bytes) -> None:
    async with session.post(run_path + "/events", data=body, headers=NDJSON) as r:
        r.raise_for_status()
        await r.read()


async def _copy(conn: Any, table: str, batch: list[dict[str, Any]]) -> None:
    dumps = orjson.dumps
    records = [("c", e["sequence"], dumps(e).decode()) for e in batch]
    async with conn.transaction():
        await conn.copy_records_to_table(
            table, records=records, columns=("run_id", "sequence", "body")
        )


async def _interleaved(
    url: str, dsn: str, n: int, synchronous_commit: str, block: int = 1
) -> tuple[float, float]:
    """One producer and one COPY session taking turns, ``block`` batches each (1: batch by
    batch): (ingest events/s, COPY events/s)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    await conn.execute(f"SET synchronous_commit = {synchronous_commit}")
    table = f"one_{synchronous_commit}_{block}_{os.getpid()}_{next(_TABLE_NUMBERS)}"
    await conn.execute(COPY_TABLE.format(name=table))
    ingest_s = copy_s = 0.0
    done = 0
    batches = event_batches(n, seed=1)
    try:
        async with aiohttp.ClientSession(url) as session:
            run_path = await _create_run(session)
            while turn := list(itertools.islice(batches, block)):
                start = time.perf_counter()
                for batch in turn:
                    await _post(session, run_path, producer_body(batch))
                ingest_s += time.perf_counter() - start
                start = time.perf_counter()
                for batch in turn:
                    await _copy(conn, table, batch)
                copy_s += time.perf_counter() - start
                done += sum(map(len, turn))
    finally:
        await conn.close()
    return done / ingest_s, done / copy_s


async def _fsyncs(session: aiohttp.ClientSession) -> int:
    async with session.get("/bench/fsyncs") as r:
        return int((await r.json())["fsyncs"])


async def _eight_producers(url: str, per: int, *, one_run: bool) -> tuple[float, float]:
    """8 producers at once (8 runs, or one): (events/s wall, fsyncs per batch)."""
    async with aiohttp.ClientSession(url) as session:
        paths = [await _create_run(session) for _ in range(1 if one_run else 8)]
        bodies = [[producer_body(b) for b in event_batches(per, seed=10 + i)] for i in range(8)]
        before = await _fsyncs(session)

        async def produce(i: int) -> None:
            path = paths[0 if one_run else i]
            for body in bodies[i]:
                await _post(session, path, body)

        start = time.perf_counter()
        await asyncio.gather(*(produce(i) for i in range(8)))
        wall = time.perf_counter() - start
        batches = sum(len(b) for b in bodies)
        fsyncs = await _fsyncs(session) - before
    return 8 * per / wall, fsyncs / batches


async def _eight_copies(dsn: str, per: int) -> float:
    """8 concurrent COPY sessions (synchronous_commit=on) of the 8 producers' events:
    events/s wall (rows encoded before the clock starts, as the producers' bodies are)."""
    async with CopySessions(dsn, [10 + i for i in range(8)], per) as copies:
        return copies.events / await copies.run()


# ---------------------------------------------------------------------------- completing a big run


async def _big_completion(url: str, big_bytes: int) -> list[Row]:
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=600)) as session:
        big = await _create_run(session)
        per_event = 400
        n = big_bytes // per_event
        _progress(f"building a {big_bytes >> 20} MiB run ({n:,} events)")
        events = iter_console_events(n, seed=3)
        while batch := list(itertools.islice(events, 2 * BATCH)):
            await _post(session, big, producer_body(batch))
        live = await _create_run(session)
        latencies: list[tuple[float, float]] = []  # (sent at, latency)
        stop = asyncio.Event()

        async def follow() -> None:
            async with session.get(live + "/events?stream=true&after_sequence=1") as r:
                async for line in r.content:
                    if line.startswith(b"data: "):
                        payload = json.loads(line[6:])["payload"]
                        if "t" in payload:
                            sent = float(payload["t"])
                            latencies.append((sent, time.perf_counter() - sent))
                    if stop.is_set():
                        return

        async def produce() -> None:
            while not stop.is_set():
                body = (
                    orjson.dumps({"type": "bench.tick", "payload": {"t": time.perf_counter()}})
                    + b"\n"
                )
                await _post(session, live, body)
                await asyncio.sleep(0.01)

        follower = asyncio.create_task(follow())
        producer = asyncio.create_task(produce())
        await asyncio.sleep(3.0)
        async with session.post("/bench/stall") as r:
            await r.read()  # start the probe, reset
        await asyncio.sleep(2.0)
        async with session.post("/bench/stall") as r:
            baseline_stall = float((await r.json())["max_stall_s"])
        started = time.perf_counter()
        done = b'{"type":"run.completed","payload":{"status":"succeeded"}}\n'
        await _post(session, big, done)
        completion_s = time.perf_counter() - started
        async with session.post("/bench/stall") as r:
            stall = float((await r.json())["max_stall_s"])
        await asyncio.sleep(2.0)
        stop.set()
        producer.cancel()
        follower.cancel()
        for task in (producer, follower):
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await task

    def p99(window: list[float]) -> float:
        if not window:
            return float("nan")
        window = sorted(window)
        return window[min(len(window) - 1, int(len(window) * 0.99))]

    before = p99([lat for sent, lat in latencies if started - 5.0 <= sent < started])
    during = p99([lat for sent, lat in latencies if started - 0.1 <= sent < started + 2.0])
    size = f"{big_bytes >> 20} MiB run ({n:,} events)"
    return [
        row(SECTION, f"completing a {size}: wall time", completion_s * 1000, "ms",
            note="POST run.completed -> 200: summary from the incremental fold, durable "
            "run.completed, row, seal (index + fsync)"),
        row(SECTION, "  longest event-loop stall during it", stall * 1000, "ms",
            "target 50 ms", ratio(stall * 1000, 50.0),
            f"5 ms sleeper probe in the server; {baseline_stall * 1000:.1f} ms in the 2 s "
            "before, at rest"),
        row(SECTION, "  follower of another live run: p99 latency during / before", during * 1000,
            "ms", "before", ratio(during, before),
            f"100 events/s, one per POST; p99 {before * 1000:.1f} ms in the 5 s before"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- collect


async def _collect(sizes: Sizes, tmp: Path) -> list[Row]:
    rows: list[Row] = []
    reason = await pg_unreachable_reason()
    with _server(tmp / "durable", "flush") as url, _floor_server(tmp / "floor") as floor_url:
        if reason:
            rows.append(skipped_row(SECTION, "ingest vs Postgres COPY", reason))
        else:
            async with scratch_pg_database("runevents_bench_durable") as dsn:
                _progress(f"durable ingest vs COPY (synchronous_commit=on), {sizes.one:,} events")
                ingest, copy = await _interleaved(url, dsn, sizes.one, "on")
                rows += [
                    row(SECTION, "durable ingest (default), one producer", ingest, "events/s",
                        "COPY, synchronous_commit=on", ratio(ingest, copy),
                        f"{sizes.one:,} events in 1,000-event batches, each answered after "
                        "write + fsync; interleaved batch by batch with COPY; target >= 2x"),
                    row(SECTION, "Postgres COPY, synchronous_commit=on, one session", copy,
                        "events/s", note="1,000-row transactions, asyncpg, jsonb rows"),
                ]  # fmt: skip
                _progress(f"the floor (bare Python ingest) vs COPY, {sizes.one:,} events")
                floor_one, floor_copy = await _interleaved(floor_url, dsn, sizes.one, "on")
                rows.append(
                    row(SECTION, "  floor: bare Python durable ingest, one producer", floor_one,
                        "events/s", "COPY, synchronous_commit=on",
                        ratio(floor_one, floor_copy),
                        f"COPY {floor_copy:,.0f}/s; floor_server.py: the same HTTP stack, "
                        "decode + number + encode + write + fsync only (no auth, index, "
                        "summary, masking or keys); runevents reaches "
                        f"{ingest / floor_one:.0%} of it")
                )  # fmt: skip
                # The row above leaves each side idle while the other works, so every
                # batch starts cold; this one shows what that costs each side.
                _progress(f"the same, in turns of {WARM_TURN} batches")
                ingest, copy = await _interleaved(url, dsn, sizes.one, "on", block=WARM_TURN)
                rows.append(
                    row(SECTION, f"  the same in turns of {WARM_TURN} batches each", ingest,
                        "events/s", "COPY in the same turns", ratio(ingest, copy),
                        f"COPY {copy:,.0f}/s; each side runs {WARM_TURN} batches in a row, so "
                        "few start after the other side's turn; the row above (every batch "
                        "after a COPY) is the target's")
                )  # fmt: skip
                _progress(f"8 producers on 8 runs vs 8 COPY sessions, {sizes.eight:,} each")
                best_ingest = best_copy = best_floor = 0.0
                per_batch = float("nan")
                for _ in range(2):
                    copies = await _eight_copies(dsn, sizes.eight)
                    rate, per_batch = await _eight_producers(url, sizes.eight, one_run=False)
                    floor, _ = await _eight_producers(floor_url, sizes.eight, one_run=False)
                    best_copy, best_ingest = max(best_copy, copies), max(best_ingest, rate)
                    best_floor = max(best_floor, floor)
                rows += [
                    row(SECTION, "durable ingest, 8 producers on 8 runs", best_ingest,
                        "events/s", "8 COPY sessions, synchronous_commit=on",
                        ratio(best_ingest, best_copy),
                        f"{8 * sizes.eight:,} events; alternated twice with the COPY sessions, "
                        f"best of each; COPY: {best_copy:,.0f}/s; target >= 3x"),
                    row(SECTION, "  fsyncs per acknowledged batch, 8 runs", per_batch,
                        "fsyncs/batch", note="counted at the write path's fsync seam"),
                    row(SECTION, "  floor: bare Python durable ingest, 8 producers on 8 runs",
                        best_floor, "events/s", "the same 8 COPY sessions",
                        ratio(best_floor, best_copy),
                        "floor_server.py, alternated with the rows above, best of 2; "
                        f"runevents reaches {best_ingest / best_floor:.0%} of it"),
                ]  # fmt: skip
        _progress("8 producers on one run (group commit)")
        rate, per_batch = await _eight_producers(url, sizes.eight, one_run=True)
        rows.append(
            row(SECTION, "durable ingest, 8 producers on one run: fsyncs per batch", per_batch,
                "fsyncs/batch", note=f"{rate:,.0f} events/s; batches that arrive while an "
                "fsync is in flight share the next one (group commit)")
        )  # fmt: skip
        _progress("completing a large run")
        rows += await _big_completion(url, sizes.big_bytes)
    if not reason:
        with _server(tmp / "relaxed", "never") as url:
            async with scratch_pg_database("runevents_bench_relaxed") as dsn:
                _progress("relaxed ingest vs COPY (synchronous_commit=off)")
                ingest, copy = await _interleaved(url, dsn, sizes.one, "off")
                rows += [
                    row(SECTION, "relaxed ingest (RUNEVENTS_FSYNC=never), one producer", ingest,
                        "events/s", "COPY, synchronous_commit=off", ratio(ingest, copy),
                        "page cache only: a power loss can lose acknowledged batches (as "
                        "synchronous_commit=off can lose commits); answers say Durability: "
                        "relaxed"),
                    row(SECTION, "Postgres COPY, synchronous_commit=off, one session", copy,
                        "events/s"),
                ]  # fmt: skip
    return rows


def collect(quick: bool) -> list[Row]:
    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="runevents-bench-durable-") as tmp:
        try:
            return asyncio.run(_collect(sizes, Path(tmp)))
        except Exception as exc:
            return [failed_row(SECTION, "durability benchmarks", exc)]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    else:
        main(collect)
