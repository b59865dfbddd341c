"""Forwarding: what a batch costs when it reaches a replica that does not own the run.

Two real ``runevents serve`` processes (A and B) on one scratch Postgres
database, separate data dirs, one shared ``file://`` store, ``fsync=flush``
(durable, the default). An external run is created on A, which then holds its
writer; 1,000-event batches are posted alternately to A (direct) and to B
(relayed to A by ``api/forward.py``), one at a time, and each round trip is
timed from the client. The figure is the median (and p90) of each, and the
difference: the latency a forwarded batch adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson

from common import (
    Row,
    main,
    make_console_events,
    pg_unreachable_reason,
    ratio,
    row,
    scratch_pg_database,
    server_process,
    skipped_row,
)

SECTION = "Forwarding"
BATCH = 1_000
WS, CFG = "bench", "forward"
NDJSON = {"Content-Type": "application/x-ndjson"}


def batch_body(seed: int) -> bytes:
    """1,000 producer lines (type, payload, created_at: what a producer sends)."""
    events = make_console_events(BATCH, seed=seed)
    return b"".join(
        orjson.dumps({"type": e["type"], "payload": e["payload"], "created_at": e["created_at"]})
        + b"\n"
        for e in events
    )


@contextlib.contextmanager
def _replica(data_dir: Path, dsn: str, store: Path) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNEVENTS_")}
    env["RUNEVENTS_MAINTENANCE_INTERVAL_SECONDS"] = "0"

    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-m", "runevents", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--data-dir", str(data_dir), "--database-url", dsn,
            "--storage-url", store.as_uri(), "--workers", "0", "--log-level", "warning",
        ]  # fmt: skip

    with server_process(argv, env=env, quiet=True) as (url, _):
        yield url


def _median_p90(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))]


def measure(dsn: str, rounds: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        root = Path(tmp)
        (root / "store").mkdir()
        with (
            _replica(root / "a", dsn, root / "store") as a,
            _replica(root / "b", dsn, root / "store") as b,
            httpx.Client(timeout=60) as http,
        ):
            r = http.post(
                f"{a}/api/v1/workspaces/{WS}/configurations/{CFG}/runs", json={"external": True}
            )
            r.raise_for_status()
            run = r.json()["run"]["id"]
            path = f"/api/v1/workspaces/{WS}/configurations/{CFG}/runs/{run}/events"
            bodies = [batch_body(seed) for seed in range(8)]
            times: dict[str, list[float]] = {"direct": [], "forwarded": []}
            for n in range(rounds + 5):  # the first 5 of each warm up connections and caches
                for name, base in (("direct", a), ("forwarded", b)):
                    started = time.perf_counter()
                    answer = http.post(base + path, content=bodies[n % len(bodies)], headers=NDJSON)
                    elapsed = time.perf_counter() - started
                    if answer.status_code != 200:
                        raise RuntimeError(
                            f"{name} batch: {answer.status_code} {answer.text[:200]}"
                        )
                    if n >= 5:
                        times[name].append(elapsed * 1000)
            metrics = http.get(f"{b}/metrics").text
    if 'runevents_ingest_forwarded_total{outcome="answered"}' not in metrics:
        raise RuntimeError("B did not forward its batches")
    direct, direct_p90 = _median_p90(times["direct"])
    forwarded, forwarded_p90 = _median_p90(times["forwarded"])
    note = f"{BATCH:,}-event batches, median of {rounds}, one at a time, client round trip"
    relayed = "forwarded batch (to B, relayed to A)"
    return [
        row(SECTION, "direct batch (to the owner), p50", direct, "ms", note=note),
        row(SECTION, "direct batch, p90", direct_p90, "ms"),
        row(SECTION, f"{relayed}, p50", forwarded, "ms", "direct", ratio(forwarded, direct)),
        row(
            SECTION,
            f"{relayed}, p90",
            forwarded_p90,
            "ms",
            "direct",
            ratio(forwarded_p90, direct_p90),
        ),
        row(SECTION, "added by forwarding, p50", forwarded - direct, "ms"),
    ]


def collect(quick: bool) -> list[Row]:
    reason = asyncio.run(pg_unreachable_reason())
    if reason is not None:
        return [skipped_row(SECTION, "forwarded vs direct batch", reason)]

    async def scratch() -> list[Row]:
        async with scratch_pg_database("runevents_bench_forward") as dsn:
            return await asyncio.to_thread(measure, dsn, 10 if quick else 50)

    return asyncio.run(scratch())


if __name__ == "__main__":
    main(collect)
