"""What the metrics cost: HTTP ingest with metrics on vs off (issue 17: within 3%).

Two ``runevents serve`` processes (the product command, SQLite, no embedded
worker) run side by side, one with ``RUNEVENTS_METRICS_ENABLED=false``. One
producer posts the same pre-encoded 1,000-event NDJSON batches to an external
run on each, alternating batch by batch (which server goes first alternates
too), so both see the same share of a shared machine's changing load; each
server's busy time is the sum of its own round trips. The batch bodies are
encoded once, outside the timing: only the server's cost differs between the
two, so the ratio is the metrics' cost and nothing else. The figure is the
median of the per-round ratios (a round = a few batches to each), which a
momentary stall of one side moves less than a ratio of totals.

Also measured: the latency of a ``GET /metrics`` scrape (the database gauges
recounted every time: ``RUNEVENTS_METRICS_REFRESH_SECONDS=0``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson

from common import Row, failed_row, iter_console_events, main, row, server_process

SECTION = "Operations"
BATCH = 1_000
#: batches per server per round; rounds per run
ROUND = 4
FULL_ROUNDS, QUICK_ROUNDS = 60, 8
WS, CFG = "bench", "metrics"
NDJSON_HEADERS = {"Content-Type": "application/x-ndjson"}


def _progress(message: str) -> None:
    print(f"[bench_metrics] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _server(data_dir: Path, *, metrics: bool) -> Iterator[str]:
    """``runevents serve`` on a free port, metrics on or off; yields its URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNEVENTS_")}
    env.update(
        RUNEVENTS_METRICS_ENABLED="true" if metrics else "false",
        RUNEVENTS_METRICS_REFRESH_SECONDS="0",
        RUNEVENTS_MAINTENANCE_INTERVAL_SECONDS="0",
    )
    with server_process(
        lambda port: [
            sys.executable, "-m", "runevents", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--data-dir", str(data_dir), "--workers", "0",
            "--log-level", "warning",
        ],
        env=env, quiet=True, start_timeout=90,
    ) as (url, _):  # fmt: skip
        yield url


async def _create_run(session: aiohttp.ClientSession, url: str) -> str:
    async with session.post(
        f"{url}/api/v1/workspaces/{WS}/configurations/{CFG}/runs", json={"external": True}
    ) as response:
        response.raise_for_status()
        run_id = (await response.json())["run"]["id"]
    return f"{url}/api/v1/workspaces/{WS}/configurations/{CFG}/runs/{run_id}/events"


async def _post(session: aiohttp.ClientSession, path: str, body: bytes) -> float:
    start = time.perf_counter()
    async with session.post(path, data=body, headers=NDJSON_HEADERS) as response:
        response.raise_for_status()
        await response.read()
    return time.perf_counter() - start


def _bodies(n: int) -> list[bytes]:
    events = iter_console_events(n)
    dumps = orjson.dumps
    bodies = []
    while batch := list(itertools.islice(events, BATCH)):
        bodies.append(
            b"".join(dumps({"type": e["type"], "payload": e["payload"]}) + b"\n" for e in batch)
        )
    return bodies


async def _collect(on_url: str, off_url: str, rounds: int) -> list[Row]:
    bodies = _bodies(ROUND * BATCH)
    async with aiohttp.ClientSession() as session:
        on_path = await _create_run(session, on_url)
        off_path = await _create_run(session, off_url)
        # warm both (imports, caches, the first writer)
        for body in bodies[:2]:
            await _post(session, on_path, body)
            await _post(session, off_path, body)
        on_s = off_s = 0.0
        per_round: list[float] = []
        _progress(f"{rounds} rounds of {ROUND} x {BATCH:,}-event batches to each server")
        for number in range(rounds):
            round_on = round_off = 0.0
            for body in bodies:
                first_on = number % 2 == 0
                for path in (on_path, off_path) if first_on else (off_path, on_path):
                    seconds = await _post(session, path, body)
                    if path == on_path:
                        round_on += seconds
                    else:
                        round_off += seconds
            on_s += round_on
            off_s += round_off
            per_round.append(round_off / round_on)  # rate on / rate off
        async with session.get(off_url + "/metrics") as response:
            if response.status != 404:
                raise RuntimeError(f"metrics are not off on the baseline ({response.status})")
        scrapes = []
        for _ in range(20):
            start = time.perf_counter()
            async with session.get(on_url + "/metrics") as response:
                response.raise_for_status()
                text = await response.read()
            scrapes.append(time.perf_counter() - start)
    events = rounds * ROUND * BATCH
    on_rate, off_rate = events / on_s, events / off_s
    hooks_s = _hooks_per_batch()
    batch_s = off_s / (rounds * ROUND)
    median = statistics.median(per_round)
    note = (
        f"{events:,} events to each; batches alternate between the two servers; "
        f"ratio: median of {rounds} rounds (of totals: {on_rate / off_rate:.3f}x)"
    )
    return [
        row(SECTION, "HTTP ingest, metrics on", on_rate, "events/s", "metrics off", median, note),
        row(SECTION, "HTTP ingest, metrics off", off_rate, "events/s", note="baseline"),
        row(
            SECTION,
            "metrics hooks of one ingest batch, in process",
            hooks_s * 1e6,
            "µs",
            note=f"{100 * hooks_s / batch_s:.2f}% of a 1,000-event batch's round trip "
            f"({batch_s * 1000:.2f} ms, metrics off); every hook a batch calls, fsync=flush",
        ),
        row(
            SECTION,
            "GET /metrics scrape (rows recounted)",
            statistics.median(scrapes) * 1000,
            "ms",
            note=f"median of 20; {len(text):,} bytes; SQLite index of 2 runs",
        ),
    ]


def _hooks_per_batch(repeat: int = 20_000) -> float:
    """Seconds the metrics hooks of one ingest batch take (what metrics on adds)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from runevents import metrics

    metrics.set_enabled(True)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            token = metrics.APPEND_SOURCE.set("ingest")  # api/context.py
            metrics.events_appended(BATCH)  # the writer's commit
            metrics.bytes_written(400 * BATCH)  # the pwrite
            metrics.fsync_observed(0.0005)  # the fsync (fsync=flush)
            metrics.notify_wakeup("local")  # the notify after the flush
            metrics.ingest_answered(200, 0.005)  # api/context.py
            metrics.APPEND_SOURCE.reset(token)
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def collect(quick: bool) -> list[Row]:
    rounds = QUICK_ROUNDS if quick else FULL_ROUNDS
    with tempfile.TemporaryDirectory(prefix="runevents-bench-metrics-") as tmp:
        try:
            with (
                _server(Path(tmp) / "on", metrics=True) as on_url,
                _server(Path(tmp) / "off", metrics=False) as off_url,
            ):
                return asyncio.run(_collect(on_url, off_url, rounds))
        except Exception as exc:
            return [failed_row(SECTION, "metrics on vs off", exc)]


if __name__ == "__main__":
    main(collect)
