"""Forwarding: what a batch costs when it reaches a replica that does not own the run.

Two real ``runevents serve`` processes (A and B) on one scratch Postgres
database, separate data dirs, one shared ``file://`` store, ``fsync=flush``
(durable, the default). External runs are created on A, which then holds
their writers; 1,000-event batches are posted one at a time and each round
trip is timed from the client:

* a run's next batch: alternately to A (direct) and to B, which knows the
  owner from the batch before and relays at once (``Forwarder.relay_early``);
* a run's first batch: to A, or to B with nothing known -- B reads the run's
  writer and its URL from the database (one query), then relays.

Medians and p90 of each, and the difference: the latency a forwarded batch adds.
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


def _post(http: httpx.Client, url: str, body: bytes) -> float:
    """One batch; its client round trip in ms."""
    started = time.perf_counter()
    answer = http.post(url, content=body, headers=NDJSON)
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:200]}")
    return elapsed * 1000


def _new_run(http: httpx.Client, a: str) -> str:
    """An external run created on A (which then holds its writer); its events URL path."""
    r = http.post(f"{a}/api/v1/workspaces/{WS}/configurations/{CFG}/runs", json={"external": True})
    r.raise_for_status()
    return f"/api/v1/workspaces/{WS}/configurations/{CFG}/runs/{r.json()['run']['id']}/events"


def measure(dsn: str, rounds: int) -> list[Row]:
    times: dict[str, list[float]] = {"direct": [], "forwarded": [], "first": [], "first_fwd": []}
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        root = Path(tmp)
        (root / "store").mkdir()
        with (
            _replica(root / "a", dsn, root / "store") as a,
            _replica(root / "b", dsn, root / "store") as b,
            httpx.Client(timeout=60) as http,
        ):
            bodies = [batch_body(seed) for seed in range(8)]
            # a run's batches, alternately to A (direct) and B (relayed: B knows the owner
            # from the batch before, the fast path)
            path = _new_run(http, a)
            for n in range(rounds + 5):  # the first 5 of each warm up connections and caches
                body = bodies[n % len(bodies)]
                direct, forwarded = _post(http, a + path, body), _post(http, b + path, body)
                if n >= 5:
                    times["direct"].append(direct)
                    times["forwarded"].append(forwarded)
            # the first batch of a fresh run: B has no hint and reads the run's writer
            # and its URL from the database first
            for n in range(rounds + 5):
                body = bodies[n % len(bodies)]
                direct = _post(http, a + _new_run(http, a), body)
                forwarded = _post(http, b + _new_run(http, a), body)
                if n >= 5:
                    times["first"].append(direct)
                    times["first_fwd"].append(forwarded)
            metrics = http.get(f"{b}/metrics").text
    if 'runevents_ingest_forwarded_total{outcome="answered"}' not in metrics:
        raise RuntimeError("B did not forward its batches")
    note = f"{BATCH:,}-event batches, median of {rounds}, one at a time, client round trip"
    rows: list[Row] = []
    for direct_key, relayed_key, what in (
        ("direct", "forwarded", "a run's next batch"),
        ("first", "first_fwd", "a run's first batch (no hint: one database read)"),
    ):
        direct, direct_p90 = _median_p90(times[direct_key])
        relayed, relayed_p90 = _median_p90(times[relayed_key])
        p50_ratio, p90_ratio = ratio(relayed, direct), ratio(relayed_p90, direct_p90)
        # each relayed batch against the direct one sent just before it: the drift of
        # a shared machine's load cancels out
        pairs = zip(times[direct_key], times[relayed_key], strict=True)
        paired = statistics.median(f - d for d, f in pairs)
        rows += [
            row(SECTION, f"{what}: direct to the owner, p50", direct, "ms", note=note),
            row(SECTION, f"{what}: relayed by B, p50", relayed, "ms", "direct", p50_ratio),
            row(SECTION, f"{what}: direct, p90", direct_p90, "ms"),
            row(SECTION, f"{what}: relayed, p90", relayed_p90, "ms", "direct", p90_ratio),
            row(SECTION, f"{what}: added by forwarding, p50", relayed - direct, "ms"),
            row(SECTION, f"{what}: added by forwarding, median of pairs", paired, "ms"),
        ]
    return rows


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
