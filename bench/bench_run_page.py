"""The run page's whole-log scans (issue 19): outline, search count, raw text.

A finished run's page asks the server for its outline (phase and section
markers, error lines) and, for a search, the number of matches in the whole
log; "View raw" streams the console as text. Each scans every line, so their
rate decides how long a big failed run takes to open at its first error.
Measured over an in-memory log of realistic console lines (``bench.common``,
~400 bytes each; 1,000,000 lines, 100,000 with ``--quick``) cut in 1 MiB
chunks, as the log store hands them over.

    python bench/bench_run_page.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from common import iter_console_events, row
from runevents.eventlog import Chunk
from runevents.outline import console_text, count_matches, outline_events
from runevents.search import search_console

SECTION = "run page scans"
CHUNK_BYTES = 1 << 20


def make_chunks(n: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    buf = bytearray()
    first = 1
    for seq, event in enumerate(iter_console_events(n), start=1):
        buf += orjson.dumps(event) + b"\n"
        if len(buf) >= CHUNK_BYTES or seq == n:
            chunks.append(Chunk(first, seq, bytes(buf), seq == n))
            buf.clear()
            first = seq + 1
    return chunks


async def feed(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


async def measure(n: int) -> list[dict[str, Any]]:
    chunks = make_chunks(n)
    size_mb = sum(len(c.data) for c in chunks) / 1e6
    rows = []

    start = time.perf_counter()
    found, _, _ = await outline_events(feed(chunks), after_sequence=0, limit=1 << 30)
    outline_s = time.perf_counter() - start
    rows.append(
        row(SECTION, f"outline of {n:,} lines", outline_s * 1000, "ms",
            note=f"{n / outline_s / 1e6:.2f} M lines/s; {len(found):,} outline events")
    )  # fmt: skip

    start = time.perf_counter()
    total, _ = await count_matches(feed(chunks), q="warn", stream=None, level=None)
    count_s = time.perf_counter() - start
    # the search route's own scan for the same term, one page at a time to the end
    start = time.perf_counter()
    pages = 0
    after = 0
    while True:
        rest = [c for c in chunks if c.last_sequence > after]
        _, after, more = await search_console(
            feed(rest), q="warn", stream=None, level=None, after_sequence=after, limit=1000
        )
        pages += 1
        if not more:
            break
    paged_s = time.perf_counter() - start
    rows.append(
        row(SECTION, f"search count over {n:,} lines", count_s * 1000, "ms",
            vs="paging every match", ratio=count_s / paged_s,
            note=f"{total:,} matches; paged 1,000 a time: {paged_s * 1000:.0f} ms, {pages} pages")
    )  # fmt: skip

    start = time.perf_counter()
    out = 0
    async for part in console_text(feed(chunks)):
        out += len(part)
    text_s = time.perf_counter() - start
    rows.append(
        row(SECTION, "raw text (View raw)", size_mb / text_s, "MB/s",
            note=f"{size_mb:.0f} MB of NDJSON -> {out / 1e6:.0f} MB of text in {text_s:.2f} s")
    )  # fmt: skip
    return rows


def collect(quick: bool) -> list[dict[str, Any]]:
    return asyncio.run(measure(100_000 if quick else 1_000_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 lines instead of 1,000,000")
    args = parser.parse_args()
    for r in collect(args.quick):
        print(f"{r['value']:>10.1f} {r['unit']:<5} {r['name']}  {r['note']}")


if __name__ == "__main__":
    main()
