"""Storage backends: whole-object write and ranged-read speed, local disk vs S3 (SeaweedFS).

What the event log engine does with a backend: upload a sealed log file whole
(``write(key, Path)``), stream it back (``read``, ranged GETs for S3) and
fetch small ranges of it (an index lookup or a page of events starting at a
byte offset). Measured on one object of 100 MiB (20 MiB with ``--quick``):

- write MB/s: ``LocalLogStore.write`` (copy, fsync, rename) vs the write limit
  (one buffered write + fsync of the same bytes); S3 upload vs the local write.
- read MB/s: a full streamed read (default 256 KiB chunks); local vs the read
  limit (plain ``readinto`` in 1 MiB blocks), S3 vs local. Caches are warm on
  both sides (the object was just written; SeaweedFS's volume files are in the
  same page cache): this is the software path, not the disk.
- 64 KiB ranged read latency, p50 and p99 over random offsets.
- peak RSS growth of this process over the S3 uploads and reads: the
  streaming claim (bounded by part and window sizes, not the object size).

Throughputs are the best of 3 runs (1 with --quick). SeaweedFS is started and
stopped here, with the test fixture's helper (``tests/fixtures/s3.py``), on
loopback: the S3 numbers are the client + protocol cost, without a network.
MB = 10^6 bytes.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from common import Row, main, ratio, row, run_async_isolated, skipped_row, write_limit_bytes

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # the SeaweedFS helper lives with the test fixtures
    sys.path.insert(0, str(ROOT))

from tests.fixtures.s3 import SeaweedFS, SeaweedUnavailable, seaweedfs_running  # noqa: E402

from runevents.logstore import LogStore  # noqa: E402
from runevents.logstore.local import LocalLogStore  # noqa: E402
from runevents.logstore.s3 import S3LogStore  # noqa: E402

SECTION = "storage"
MiB = 1024 * 1024
KEY = "workspaces/bench/runs/run_01JBENCH00000000000000000A/logs/events.ndjson"
RANGE = 64 * 1024


def _mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def _read_limit(path: Path) -> float:
    """MB/s of reading ``path`` with ``readinto`` in 1 MiB blocks (warm cache)."""
    buf = bytearray(MiB)
    start = time.perf_counter()
    total = 0
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return _mbps(total, time.perf_counter() - start)


async def _best(repeat: int, fn: Callable[[], Awaitable[float]]) -> float:
    """Best (shortest) wall time of ``repeat`` runs of ``fn`` (which returns its own timing)."""
    return min([await fn() for _ in range(repeat)])


async def _write_seconds(store: LogStore, source: Path) -> float:
    start = time.perf_counter()
    await store.write(KEY, source)
    return time.perf_counter() - start


async def _read_seconds(store: LogStore, size: int) -> float:
    start = time.perf_counter()
    total = 0
    async for chunk in store.read(KEY):
        total += len(chunk)
    seconds = time.perf_counter() - start
    if total != size:
        raise RuntimeError(f"read {total} bytes of {size}")
    return seconds


async def _range_latencies_ms(store: LogStore, size: int, count: int) -> list[float]:
    rng = random.Random(7)
    out = []
    for _ in range(count):
        start = rng.randrange(0, size - RANGE)
        began = time.perf_counter()
        got = 0
        async for chunk in store.read(KEY, start, start + RANGE):
            got += len(chunk)
        out.append((time.perf_counter() - began) * 1000)
        if got != RANGE:
            raise RuntimeError(f"range read returned {got} bytes")
    return out


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def _measure(
    store: LogStore, source: Path, size: int, repeat: int, ranges: int
) -> dict[str, Any]:
    process = psutil.Process()
    rss_before = process.memory_info().rss
    peak = [rss_before]
    done = asyncio.Event()

    async def sample() -> None:
        # RSS, not tracemalloc: S3 windows and upload parts live in Rust memory
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        write_s = await _best(repeat, lambda: _write_seconds(store, source))
        await _read_seconds(store, size)  # warm-up: connection pool, page cache
        read_s = await _best(repeat, lambda: _read_seconds(store, size))
    finally:
        done.set()
        await sampler
    latencies = await _range_latencies_ms(store, size, ranges)
    return {
        "write": _mbps(size, write_s),
        "read": _mbps(size, read_s),
        "p50": _p(latencies, 50),
        "p99": _p(latencies, 99),
        "rss_growth_mib": (peak[0] - rss_before) / MiB,
    }


def collect(quick: bool) -> list[Row]:
    """Rows of the storage section (see the module docstring)."""
    size = (20 if quick else 100) * MiB
    repeat = 1 if quick else 3
    ranges = 50 if quick else 300
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rbench-") as tmp:
        tmpdir = Path(tmp)
        source = tmpdir / "sealed.ndjson"
        data = random.Random(0).randbytes(size)
        source.write_bytes(data)
        write_limit = max(write_limit_bytes(tmpdir / "limit.bin", data) for _ in range(repeat))
        (tmpdir / "limit.bin").unlink()
        del data
        read_limit = max(_read_limit(source) for _ in range(repeat))
        mib = size // MiB

        local = LocalLogStore(tmpdir / "store")
        lo = run_async_isolated(lambda: _measure(local, source, size, repeat, ranges))
        rows += [
            row(
                SECTION,
                f"local write {mib} MiB",
                lo["write"],
                "MB/s",
                "write limit",
                ratio(lo["write"], write_limit),
                "copy + fsync + rename",
            ),
            row(
                SECTION,
                f"local read {mib} MiB",
                lo["read"],
                "MB/s",
                "read limit",
                ratio(lo["read"], read_limit),
                "256 KiB chunks, warm cache",
            ),
            row(
                SECTION,
                "local 64 KiB range p50",
                lo["p50"],
                "ms",
                None,
                None,
                f"p99 {lo['p99']:.3f} ms, {ranges} random offsets",
            ),
        ]
        rows.insert(0, row(SECTION, "write limit", write_limit, "MB/s", note="write + fsync"))
        rows.insert(1, row(SECTION, "read limit", read_limit, "MB/s", note="readinto 1 MiB"))

        s3_names = [
            f"s3 write {mib} MiB",
            f"s3 read {mib} MiB",
            "s3 64 KiB range p50",
            "s3 peak RSS growth",
        ]
        try:
            with seaweedfs_running(tmpdir / "seaweedfs") as server:
                rows += _s3_rows(server, source, size, repeat, ranges, lo)
        except SeaweedUnavailable as exc:
            rows += [skipped_row(SECTION, name, str(exc)) for name in s3_names]
    return rows


def _s3_rows(
    server: SeaweedFS, source: Path, size: int, repeat: int, ranges: int, lo: dict[str, Any]
) -> list[Row]:
    mib = size // MiB
    store = S3LogStore.from_url(server.url("bench"), **server.store_kwargs())
    s3 = run_async_isolated(lambda: _measure(store, source, size, repeat, ranges))
    return [
        row(
            SECTION,
            f"s3 write {mib} MiB",
            s3["write"],
            "MB/s",
            "local write",
            ratio(s3["write"], lo["write"]),
            "SeaweedFS on loopback, multipart 8 MiB x4",
        ),
        row(
            SECTION,
            f"s3 read {mib} MiB",
            s3["read"],
            "MB/s",
            "local read",
            ratio(s3["read"], lo["read"]),
            "8 MiB ranged GETs, 1 prefetched",
        ),
        row(
            SECTION,
            "s3 64 KiB range p50",
            s3["p50"],
            "ms",
            "local range",
            ratio(s3["p50"], lo["p50"]),
            f"p99 {s3['p99']:.3f} ms, one GET each",
        ),
        row(
            SECTION,
            "s3 peak RSS growth",
            s3["rss_growth_mib"],
            "MiB",
            None,
            None,
            f"over the {mib} MiB uploads + reads: parts and windows, not the object",
        ),
        row(
            SECTION,
            "seaweedfs start",
            server.started_in,
            "s",
            None,
            None,
            "until the first write succeeds",
        ),
    ]


if __name__ == "__main__":
    main(collect)
