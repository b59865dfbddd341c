"""Run summary benchmark: folding each batch as it is appended vs re-reading the log at completion.

    python bench/bench_summary.py            # 200,000 console lines; 1,000,000 distinct phases
    python bench/bench_summary.py --quick    # 40,000 lines; 100,000 phases

Rows (issue 13, defects 3 and 8):

- ``add_events``: microseconds per ``console.line`` folded in batches of 1,000
  ``Event`` objects (the live path), against ``add()`` per event.
- ``preview``: milliseconds to build the summary of the run plus its completing
  1,000-event batch without changing the builder (what completion now costs),
  against ``summarize_lines`` over the whole stored log (what it cost before:
  decoding every line on the event loop).
- memory: tracemalloc growth and peak while folding that many distinct phase
  names or source files: bounded, whatever the count.

Each timing is the best of three runs (the machine is shared).
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, main, make_console_events, ratio, row
from runevents.events import Event, encode_batch
from runevents.summary import RunSummaryBuilder, summarize_lines

SECTION = "run summary"
BATCH = 1000


def _best(fn: Callable[[], Any], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _fold_rows(n: int) -> list[Row]:
    events = [msgspec.convert(e, Event) for e in make_console_events(n)]
    batches = [events[i : i + BATCH] for i in range(0, n, BATCH)]

    def batched() -> RunSummaryBuilder:
        builder = RunSummaryBuilder()
        for batch in batches:
            builder.add_events(batch)
        return builder

    def one_by_one() -> None:
        builder = RunSummaryBuilder()
        for e in events:
            builder.add(e.type, e.created_at, e.payload)

    per_event = _best(batched) / n * 1e6
    per_add = _best(one_by_one) / n * 1e6
    builder = batched()
    completing = batches[-1]
    preview_ms = _best(lambda: builder.preview(completing)) * 1e3
    lines = encode_batch(events).split(b"\n")[:-1]
    reread_ms = _best(lambda: summarize_lines(lines), repeat=1) * 1e3
    return [
        row(
            SECTION,
            f"add_events, console.line, batches of {BATCH}",
            per_event,
            "us/event",
            vs="add() per event",
            ratio=ratio(per_add, per_event),
            note=f"{n:,} events; add(): {per_add:.2f} us/event",
        ),
        row(
            SECTION,
            f"complete: preview of a {BATCH}-event batch after {n:,} events",
            preview_ms,
            "ms",
            vs="re-read the log (summarize_lines)",
            ratio=ratio(reread_ms, preview_ms),
            note=f"re-reading {n:,} lines: {reread_ms:.0f} ms",
        ),
    ]


def _memory_row(kind: str, n: int, payload: Callable[[int], tuple[str, dict[str, Any]]]) -> Row:
    builder = RunSummaryBuilder()
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            type_, body = payload(i)
            builder.add(type_, None, body)
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    summary = builder.build()
    size = len(msgspec.json.encode(summary))
    return row(
        SECTION,
        f"memory after {n:,} distinct {kind}",
        (current - start) / 1e6,
        "MB",
        note=f"peak {(peak - start) / 1e6:.1f} MB; summary {size / 1024:.0f} KiB; "
        f"truncated {summary['truncated']}",
    )


def collect(quick: bool) -> list[Row]:
    """Rows of the run summary section (see the module docstring)."""
    rows = _fold_rows(40_000 if quick else 200_000)
    rows.append(
        _memory_row(
            "phases",
            100_000 if quick else 1_000_000,
            lambda i: ("run.phase.started", {"phase": f"phase-{i:08d}"}),
        )
    )
    rows.append(
        _memory_row(
            "source_files",
            50_000 if quick else 300_000,
            lambda i: (
                "run.table.summary",
                {"table_id": f"t{i}", "source_file": f"file-{i:08d}.xlsx", "row_count": 1},
            ),
        )
    )
    return rows


if __name__ == "__main__":
    main(collect)
