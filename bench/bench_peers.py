"""The peers: the same events stored as database rows or a Redis stream, in the same run.

The design doc (060) rejects "one row per event"; this module measures that
design against the physical limit on exactly the events the project's own
benchmarks use (``make_console_events``, same count, same bytes):

- append: Postgres INSERT per event (autocommit) and COPY in 1,000-event
  transactions; SQLite INSERT per event (autocommit, WAL, synchronous=NORMAL)
  and in 1,000-event transactions; Redis Streams XADD pipelined 1,000 at a time.
  Every timed region includes the orjson serialization, like the limit's.
- replay: ordered SELECT through a server-side cursor (Postgres), ordered SELECT
  (SQLite), XRANGE in pages of 1,000 (Redis). Warm caches everywhere; a replay
  only fetches the JSON text, it does not re-encode it (favourable to peers).
- storage: bytes per event of each design next to the NDJSON file and its
  zstd (level 3) form.

Append ratios are against :func:`common.append_limit` on the same events
(vs "limit"); replay ratios against reading the same NDJSON file in 1 MiB
blocks cut at newlines (vs "read limit"); storage against the NDJSON file.
Peers that are not reachable give one "skipped: ..." row each.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from common import (
    DEFAULT_RUN_ID,
    REDIS_PREFIX,
    REDIS_URL,
    Row,
    append_limit,
    chunks,
    failed_row,
    main,
    make_console_events,
    pg_unreachable_reason,
    ratio,
    redis_unreachable_reason,
    row,
    scratch_pg_database,
    skipped_row,
)

APPEND, REPLAY, STORAGE = "Append", "Replay", "Storage"
BATCH = 1_000
RUN_ID = DEFAULT_RUN_ID


@dataclass(frozen=True)
class Sizes:
    per_event: int  # events for the per-event INSERT peers (slow: one commit each)
    batched: int  # events for the batched peers and the limits
    per_event_cap_s: float  # stop a per-event peer after this long and rate what it did


FULL = Sizes(per_event=100_000, batched=1_000_000, per_event_cap_s=120.0)
# quick only checks that everything runs: a short cap keeps a loaded machine's
# commit latency from stretching the CI smoke run.
QUICK = Sizes(per_event=5_000, batched=20_000, per_event_cap_s=10.0)


@dataclass
class Baselines:
    limit_small: float  # events/s, append_limit on the per-event peers' events
    limit_big: float  # events/s, append_limit on the batched peers' events
    read_limit: float  # events/s, the NDJSON file read back in 1 MiB blocks
    ndjson_bytes: float  # bytes per event of the plain log
    rows: list[Row] = field(default_factory=list)


def _progress(message: str) -> None:
    # stderr: stdout is the table when a module runs on its own
    print(f"[peers] {message}", file=sys.stderr, flush=True)


def _fmt_count(n: int) -> str:
    return f"{n:,}"


def _json_text(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


# ---------------------------------------------------------------------------
# the limits, on the same events


def _read_limit(path: Path, expected: int) -> float:
    """Events/s of reading the NDJSON file in 1 MiB blocks cut at the last newline."""
    start = time.perf_counter()
    lines = 0
    rest = b""
    with path.open("rb", buffering=0) as f:
        while block := f.read(1 << 20):
            data = rest + block
            cut = data.rfind(b"\n") + 1
            lines += data.count(b"\n", 0, cut)
            rest = data[cut:]
    seconds = time.perf_counter() - start
    if lines != expected:
        raise RuntimeError(f"read {lines} lines, expected {expected}")
    return lines / seconds


def _zstd_bytes(path: Path) -> int:
    import zstandard

    out = path.with_suffix(".ndjson.zst")
    with path.open("rb") as src, out.open("wb") as dst:
        zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
    size = out.stat().st_size
    out.unlink()
    return size


def _limits(tmp: Path, events: list[dict[str, Any]], sizes: Sizes) -> Baselines:
    small = events[: sizes.per_event]
    limit_small = append_limit(tmp / "limit_small.ndjson", small)
    big_path = tmp / "limit_big.ndjson"
    limit_big = append_limit(big_path, events)
    read = _read_limit(big_path, len(events))
    n = len(events)
    plain = big_path.stat().st_size
    zst = _zstd_bytes(big_path)
    base = Baselines(limit_small, limit_big, read, plain / n)
    note_small = f"{_fmt_count(len(small))} events of ~400 B, one fsync"
    note_big = f"{_fmt_count(n)} events, one fsync"
    base.rows += [
        row(APPEND, "limit: orjson + buffered append + fsync", limit_big, "events/s",
            "limit", 1.0, note_big),
        row(APPEND, "limit: orjson + buffered append + fsync (per-event peers' count)",
            limit_small, "events/s", "limit", 1.0, note_small),
        row(REPLAY, "read limit: NDJSON file, 1 MiB blocks cut at newlines", read,
            "events/s", "read limit", 1.0, f"{_fmt_count(n)} events, page cache warm"),
        row(STORAGE, "NDJSON file (plain)", plain / n, "bytes/event", "NDJSON", 1.0,
            f"{plain / 1e6:.1f} MB for {_fmt_count(n)} events"),
        row(STORAGE, "NDJSON file, zstd level 3 (whole file)", zst / n, "bytes/event",
            "NDJSON", zst / plain, f"compression {plain / zst:.1f}x; reference for the "
            "compressed form"),
    ]  # fmt: skip
    return base


# ---------------------------------------------------------------------------
# Postgres


_PG_TABLE = """
CREATE TABLE {name} (
    run_id text NOT NULL,
    sequence bigint NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (run_id, sequence)
)
"""


async def _postgres(events: list[dict[str, Any]], sizes: Sizes, base: Baselines) -> list[Row]:
    reason = await pg_unreachable_reason()
    if reason:
        # One row for the whole peer: its INSERT, COPY, SELECT and size rows.
        return [skipped_row(APPEND, "Postgres (INSERT, COPY, cursor replay, size)", reason)]
    import asyncpg

    rows: list[Row] = []
    async with scratch_pg_database("runevents_bench_peers") as dsn:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(_PG_TABLE.format(name="ev_insert"))
            await conn.execute(_PG_TABLE.format(name="ev_copy"))
            rows.append(await _pg_insert(conn, events[: sizes.per_event], sizes, base))
            copied = await _pg_copy(conn, events, base)
            rows.append(copied)
            if copied["note"].startswith("failed"):
                return rows
            rows.append(await _pg_replay(conn, len(events), base))
            await conn.execute("VACUUM ANALYZE ev_copy")
            size = await conn.fetchval("SELECT pg_total_relation_size('ev_copy')")
            n = len(events)
            rows.append(
                row(STORAGE, "Postgres rows (table + indexes)", size / n, "bytes/event",
                    "NDJSON", ratio(size / n, base.ndjson_bytes),
                    f"(run_id, sequence, body jsonb) PK (run_id, sequence); "
                    f"pg_total_relation_size after VACUUM, {_fmt_count(n)} events")
            )  # fmt: skip
        finally:
            await conn.close()
    return rows


async def _pg_insert(conn: Any, events: list[dict[str, Any]], sizes: Sizes, base: Baselines) -> Row:
    name = "Postgres INSERT per event (autocommit)"
    _progress(f"{name}: up to {_fmt_count(len(events))} events")
    try:
        stmt = await conn.prepare(
            "INSERT INTO ev_insert (run_id, sequence, body) VALUES ($1, $2, $3)"
        )
        done = 0
        start = time.perf_counter()
        deadline = start + sizes.per_event_cap_s
        for event in events:
            # One statement outside a transaction block = one commit = one WAL
            # flush (synchronous_commit as the server has it): the rows design.
            await stmt.fetch(RUN_ID, event["sequence"], _json_text(event))
            done += 1
            if done % 256 == 0 and time.perf_counter() > deadline:
                break
        seconds = time.perf_counter() - start
    except Exception as exc:
        return failed_row(APPEND, name, exc)
    rate = done / seconds
    return row(APPEND, name, rate, "events/s", "limit", ratio(rate, base.limit_small),
               _per_event_note(done, len(events), sizes))  # fmt: skip


def _per_event_note(done: int, wanted: int, sizes: Sizes) -> str:
    # The per-event peers commit once per event: at ~1 ms a commit, the batched
    # count would take many minutes, so they run on fewer events and the rate
    # (events/s) is what compares with the batched rows.
    capped = f", stopped at the {sizes.per_event_cap_s:.0f} s cap" if done < wanted else ""
    return (
        f"measured on {_fmt_count(done)} events{capped} (slow, fewer events; the rate "
        f"compares), ratio vs the limit on {_fmt_count(wanted)} events"
    )


async def _pg_copy(conn: Any, events: list[dict[str, Any]], base: Baselines) -> Row:
    name = "Postgres COPY, 1,000-event transactions"
    _progress(f"{name}: {_fmt_count(len(events))} events")
    try:
        start = time.perf_counter()
        for batch in chunks(events, BATCH):
            records = [(RUN_ID, e["sequence"], _json_text(e)) for e in batch]
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "ev_copy", records=records, columns=("run_id", "sequence", "body")
                )
        seconds = time.perf_counter() - start
    except Exception as exc:
        return failed_row(APPEND, name, exc)
    rate = len(events) / seconds
    return row(APPEND, name, rate, "events/s", "limit", ratio(rate, base.limit_big),
               f"asyncpg copy_records_to_table, {_fmt_count(len(events))} events")  # fmt: skip


async def _pg_replay(conn: Any, n: int, base: Baselines) -> Row:
    name = "Postgres ordered SELECT, server-side cursor"
    _progress(f"{name}: {_fmt_count(n)} events")
    try:
        count = 0
        last = 0
        start = time.perf_counter()
        async with conn.transaction():
            query = "SELECT sequence, body FROM ev_copy WHERE run_id = $1 ORDER BY sequence"
            async for record in conn.cursor(query, RUN_ID, prefetch=BATCH):
                seq = record[0]
                if seq != last + 1:
                    raise RuntimeError(f"sequence {seq} after {last}")
                last = seq
                count += 1
        seconds = time.perf_counter() - start
        if count != n:
            raise RuntimeError(f"replayed {count} of {n}")
    except Exception as exc:
        return failed_row(REPLAY, name, exc)
    rate = n / seconds
    return row(REPLAY, name, rate, "events/s", "read limit", ratio(rate, base.read_limit),
               f"asyncpg cursor prefetch={BATCH}, body as JSON text, warm")  # fmt: skip


# ---------------------------------------------------------------------------
# SQLite


_SQLITE_TABLE = """
CREATE TABLE events (
    run_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (run_id, sequence)
) WITHOUT ROWID
"""


def _sqlite_open(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the module never opens transactions on its own, so
    # a bare INSERT is its own transaction (autocommit) and BEGIN/COMMIT are ours.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    # WITHOUT ROWID clusters the rows on (run_id, sequence): no second index,
    # ordered replay reads the table in key order; the favourable schema.
    conn.execute(_SQLITE_TABLE)
    return conn


def _sqlite(tmp: Path, events: list[dict[str, Any]], sizes: Sizes, base: Baselines) -> list[Row]:
    rows: list[Row] = []
    sql = "INSERT INTO events (run_id, sequence, body) VALUES (?, ?, ?)"

    name = "SQLite INSERT per event (autocommit, WAL, synchronous=NORMAL)"
    small = events[: sizes.per_event]
    _progress(f"{name}: up to {_fmt_count(len(small))} events")
    try:
        conn = _sqlite_open(tmp / "per_event.sqlite")
        try:
            done = 0
            start = time.perf_counter()
            deadline = start + sizes.per_event_cap_s
            for event in small:
                conn.execute(sql, (RUN_ID, event["sequence"], _json_text(event)))
                done += 1
                if done % 256 == 0 and time.perf_counter() > deadline:
                    break
            seconds = time.perf_counter() - start
        finally:
            conn.close()
        rate = done / seconds
        rows.append(
            row(APPEND, name, rate, "events/s", "limit", ratio(rate, base.limit_small),
                "stdlib sqlite3; WAL with synchronous=NORMAL does not fsync per commit; "
                + _per_event_note(done, len(small), sizes))
        )  # fmt: skip
    except Exception as exc:
        rows.append(failed_row(APPEND, name, exc))

    name = "SQLite INSERT, 1,000-event transactions"
    _progress(f"{name}: {_fmt_count(len(events))} events")
    path = tmp / "batched.sqlite"
    try:
        conn = _sqlite_open(path)
        try:
            start = time.perf_counter()
            for batch in chunks(events, BATCH):
                conn.execute("BEGIN")
                conn.executemany(sql, [(RUN_ID, e["sequence"], _json_text(e)) for e in batch])
                conn.execute("COMMIT")
            seconds = time.perf_counter() - start
            rate = len(events) / seconds
            rows.append(
                row(APPEND, name, rate, "events/s", "limit", ratio(rate, base.limit_big),
                    f"executemany per transaction, {_fmt_count(len(events))} events")
            )  # fmt: skip
            rows.append(_sqlite_replay(conn, len(events), base))
            # Fold the WAL into the main file so its size is the whole store.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        n = len(events)
        size = path.stat().st_size
        rows.append(
            row(STORAGE, "SQLite rows (file)", size / n, "bytes/event", "NDJSON",
                ratio(size / n, base.ndjson_bytes),
                f"WITHOUT ROWID, PK (run_id, sequence); file size after checkpoint, "
                f"{_fmt_count(n)} events")
        )  # fmt: skip
    except Exception as exc:
        rows.append(failed_row(APPEND, name, exc))
    return rows


def _sqlite_replay(conn: sqlite3.Connection, n: int, base: Baselines) -> Row:
    name = "SQLite ordered SELECT"
    _progress(f"{name}: {_fmt_count(n)} events")
    try:
        count = 0
        last = 0
        start = time.perf_counter()
        cur = conn.execute(
            "SELECT sequence, body FROM events WHERE run_id = ? ORDER BY sequence", (RUN_ID,)
        )
        while batch := cur.fetchmany(BATCH):
            for seq, _body in batch:
                if seq != last + 1:
                    raise RuntimeError(f"sequence {seq} after {last}")
                last = seq
                count += 1
        seconds = time.perf_counter() - start
        if count != n:
            raise RuntimeError(f"replayed {count} of {n}")
    except Exception as exc:
        return failed_row(REPLAY, name, exc)
    rate = n / seconds
    return row(REPLAY, name, rate, "events/s", "read limit", ratio(rate, base.read_limit),
               f"stdlib sqlite3, fetchmany({BATCH}), warm")  # fmt: skip


# ---------------------------------------------------------------------------
# Redis


async def _redis(events: list[dict[str, Any]], base: Baselines) -> list[Row]:
    append_name = "Redis XADD, pipelined 1,000 at a time"
    replay_name = "Redis XRANGE, pages of 1,000"
    storage_name = "Redis stream (MEMORY USAGE)"
    reason = await redis_unreachable_reason()
    if reason:
        return [skipped_row(APPEND, "Redis Streams (XADD, XRANGE, memory)", reason)]
    import redis.asyncio as aioredis

    rows: list[Row] = []
    key = f"{REDIS_PREFIX}stream:{RUN_ID}"
    n = len(events)
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=120)
    try:
        await client.delete(key)
        _progress(f"{append_name}: {_fmt_count(n)} events")
        try:
            start = time.perf_counter()
            for batch in chunks(events, BATCH):
                pipe = client.pipeline(transaction=False)
                for event in batch:
                    pipe.xadd(key, {"e": orjson.dumps(event)})
                await pipe.execute()
            seconds = time.perf_counter() - start
        except Exception as exc:
            return [failed_row(APPEND, append_name, exc)]
        rate = n / seconds
        rows.append(
            row(APPEND, append_name, rate, "events/s", "limit", ratio(rate, base.limit_big),
                f"one field holding the JSON; in memory, persistence as the server has it; "
                f"{_fmt_count(n)} events")
        )  # fmt: skip

        _progress(f"{replay_name}: {_fmt_count(n)} events")
        try:
            count = 0
            lower = "-"
            start = time.perf_counter()
            while page := await client.xrange(key, lower, "+", count=BATCH):
                count += len(page)
                last_id = page[-1][0]
                lower = "(" + (last_id.decode() if isinstance(last_id, bytes) else str(last_id))
            seconds = time.perf_counter() - start
            if count != n:
                raise RuntimeError(f"replayed {count} of {n}")
            rate = n / seconds
            rows.append(
                row(REPLAY, replay_name, rate, "events/s", "read limit",
                    ratio(rate, base.read_limit), "redis-py asyncio, exclusive ranges, warm")
            )  # fmt: skip
        except Exception as exc:
            rows.append(failed_row(REPLAY, replay_name, exc))

        usage = int(await client.memory_usage(key, samples=0) or 0)  # 0: every entry
        rows.append(
            row(STORAGE, storage_name, usage / n, "bytes/event", "NDJSON",
                ratio(usage / n, base.ndjson_bytes),
                f"RAM, not disk; MEMORY USAGE SAMPLES 0, {_fmt_count(n)} events")
        )  # fmt: skip
    finally:
        # The server is shared: leave nothing behind, whatever happened above.
        await client.delete(key)
        await client.aclose()
    return rows


# ---------------------------------------------------------------------------


async def _guard(name: str, section: str, fn: Callable[[], Any]) -> list[Row]:
    try:
        result = fn()
        if asyncio.iscoroutine(result):
            result = await result
        return list(result)
    except Exception as exc:
        return [failed_row(section, name, exc)]


async def _collect(quick: bool) -> list[Row]:
    sizes = QUICK if quick else FULL
    _progress(f"generating {_fmt_count(sizes.batched)} events")
    events = make_console_events(sizes.batched)
    with tempfile.TemporaryDirectory(prefix="runevents-bench-peers-") as tmp_name:
        tmp = Path(tmp_name)
        _progress("limits")
        base = _limits(tmp, events, sizes)
        rows = list(base.rows)
        rows += await _guard("Postgres", APPEND, lambda: _postgres(events, sizes, base))
        rows += await _guard("SQLite", APPEND, lambda: _sqlite(tmp, events, sizes, base))
        rows += await _guard("Redis", APPEND, lambda: _redis(events, base))
    # Same sections as the project's rows: the table puts them side by side.
    order = {APPEND: 0, REPLAY: 1, STORAGE: 2}
    return sorted(rows, key=lambda r: order.get(r["section"], 3))


def collect(quick: bool) -> list[Row]:
    return asyncio.run(_collect(quick))


if __name__ == "__main__":
    main(collect)
