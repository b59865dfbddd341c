"""Shared pieces of the benchmark suite: the events, the physical limit, rows, rendering.

Every bench module (``bench/bench_*.py``) exposes ``collect(quick: bool) -> list[dict]``
returning rows built with :func:`row`, and ends with::

    if __name__ == "__main__":
        main(collect)

Bench modules import this file as ``from common import ...``: running
``python bench/bench_x.py`` puts ``bench/`` first on ``sys.path``, and
``bench/run.py`` does the same before importing the modules.

Why a "limit" row: the machines are small and shared, so absolute numbers are
noisy. Every figure is printed next to a ratio against a baseline measured in
the same run (usually :func:`append_limit`, the cheapest possible way to get
the same bytes durably onto the same disk).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

if TYPE_CHECKING:
    import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

# Peers the suite talks to. Overridable so the suite can point at other servers;
# the defaults are the services already running on the development machines.
PG_DSN = os.environ.get("RUNEVENTS_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RUNEVENTS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# Redis is shared with other users of the machine: every key the suite writes
# lives under this prefix (with the pid, so two concurrent runs never collide).
REDIS_PREFIX = f"runevents-bench:{os.getpid()}:"

DEFAULT_RUN_ID = "run_01JBENCH00000000000000000A"
T = TypeVar("T")
Row = dict[str, Any]

# ---------------------------------------------------------------------------
# events

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_BASE_TIME = datetime(2026, 11, 24, 6, 0, 0, tzinfo=UTC)

_WORD_TEXT = (
    "row sheet table column value amount invoice customer total batch file read write parse "
    "normalize validate extract load transform skip retry ok done header cell mapping schema "
    "field null empty duplicate key index page chunk bytes rows cols date currency region "
    "account ledger entry status pending merged dropped coerced"
)
_WORDS = tuple(_WORD_TEXT.split(" "))
_FILES = ("acme-2026-11.xlsx", "orders.csv", "ledger_q3.xlsx", "customers.json", "inv-0042.xlsx")
_LOGGERS = ("etl.extract", "etl.transform", "etl.load", "runner", "validate.rules", "io.s3")
_ANSI = ("\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[1m", "\x1b[36m")
_RESET = "\x1b[0m"


def _crockford(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def _message_head(rng: random.Random, stream: str, level: str, seq: int) -> str:
    """The templated start of a console line (the rest is filler of the wanted length)."""
    # rng.random() arithmetic instead of randint/choice: this runs a million
    # times for the large benchmarks and randint is several times slower.
    r = rng.random
    file = _FILES[int(r() * len(_FILES))]
    logger = _LOGGERS[int(r() * len(_LOGGERS))]
    word = _WORDS[int(r() * len(_WORDS))]
    number = int(r() * 99999) + 1
    if level == "warning":
        return f"WARNING {logger}: column '{word}' has {number % 99 + 1} bad values"
    if level == "error":
        return f"ERROR {logger}: {word} failed in {file} row {number}"
    if stream == "stderr":
        return f'  File "/app/{logger.replace(".", "/")}.py", line {number % 900 + 1}, in run'
    kind = r()
    if kind < 0.15:
        # Colour codes are kept raw (contract: "ANSI codes kept"); orjson escapes
        # ESC as \u001b, six bytes, which the length accounting below measures.
        colour = _ANSI[number % len(_ANSI)]
        return f"{colour}INFO{_RESET} {logger}: batch {seq} of {file}"
    if kind < 0.30:
        pct = number % 101
        bar = "#" * (pct // 10) + "." * (10 - pct // 10)
        return f"Processing {file} [{bar}] {pct}% ({number} rows)"
    clock = f"06:{seq // 60000 % 60:02d}:{seq // 1000 % 60:02d},{number % 1000:03d}"
    return f"2026-11-24 {clock} INFO {logger}:"


def _filler(rng: random.Random, nbytes: int) -> str:
    """ASCII words and key=value pairs, exactly ``nbytes`` bytes once JSON-encoded."""
    # Unique random content (not slices of one corpus) so that compression
    # ratios measured on these events stay in the range of real console output.
    tokens = rng.choices(_WORDS, k=nbytes // 6 + 2)
    bits = rng.getrandbits
    for i in range(0, len(tokens), 3):
        tokens[i] = f"{tokens[i]}={bits(bits(4) + 3)}"
    return (" " + " ".join(tokens))[:nbytes]


def _created_at(elapsed_us: int) -> str:
    secs, micros = divmod(elapsed_us, 1_000_000)
    hours = 6 + secs // 3600
    if hours < 24:  # the fast path covers 18 hours of events
        return f"2026-11-24T{hours:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{micros:06d}Z"
    ts = _BASE_TIME + timedelta(microseconds=elapsed_us)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iter_console_events(
    n: int,
    *,
    run_id: str = DEFAULT_RUN_ID,
    workspace_id: str = "bench",
    configuration_id: str = "bench",
    size: int = 400,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """Yield the same events as :func:`make_console_events`, one at a time.

    For the 1,000,000-event benchmarks: regenerating is cheaper on a shared
    machine than holding ~1 GB of dicts, and a seed gives the same events.
    """
    rng = random.Random(seed)
    r = rng.random
    dumps = orjson.dumps
    source = "worker"
    build_id = None
    # Bytes of an envelope with an empty message and sequence 0, per level: the
    # message is then sized so the whole encoded line averages ``size`` bytes.
    overhead: dict[str, int] = {}
    for level in ("debug", "info", "warning", "error"):
        probe = {
            "type": "console.line",
            "event_id": "evt_" + "0" * 26,
            "created_at": "2026-11-24T06:00:00.000000Z",
            "sequence": 0,
            "source": source,
            "workspace_id": workspace_id,
            "configuration_id": configuration_id,
            "run_id": run_id,
            "build_id": build_id,
            "payload": {"scope": "run", "stream": "stdout", "level": level, "message": ""},
        }
        overhead[level] = len(dumps(probe)) - 1
    base_ms = int(_BASE_TIME.timestamp() * 1000)
    mean_message = max(0, size - overhead["info"])
    carry = 0  # bytes over target so far; paid back by the next lines
    elapsed_us = 0
    last_ms, time_part = -1, ""
    for seq in range(1, n + 1):
        x = r()
        if x < 0.08:
            stream, level = "stderr", "warning"
        elif x < 0.10:
            stream, level = "stderr", "error"
        elif x < 0.14:
            stream, level = "stderr", "info"
        elif x < 0.17:
            stream, level = "stdout", "debug"
        else:
            stream, level = "stdout", "info"
        # Line lengths vary a lot in real output (blank-ish lines to long ones).
        target_line = int(mean_message * (0.15 + 1.7 * r())) + overhead["info"]
        fixed = overhead[level] + len(str(seq))
        want = target_line - fixed - carry
        head = _message_head(rng, stream, level, seq)
        head_len = len(dumps(head)) - 2
        message = head + _filler(rng, want - head_len) if want > head_len else head
        carry += fixed + head_len + max(0, want - head_len) - target_line
        elapsed_us += 50 + int(r() * 2950)
        ms = base_ms + elapsed_us // 1000
        if ms != last_ms:
            last_ms, time_part = ms, _crockford(ms, 10)
        yield {
            "type": "console.line",
            # ULID-shaped (26 Crockford chars); hex digits are valid Crockford.
            "event_id": f"evt_{time_part}{bits64(rng):016X}",
            "created_at": _created_at(elapsed_us),
            "sequence": seq,
            "source": source,
            "workspace_id": workspace_id,
            "configuration_id": configuration_id,
            "run_id": run_id,
            "build_id": build_id,
            "payload": {"scope": "run", "stream": stream, "level": level, "message": message},
        }


def bits64(rng: random.Random) -> int:
    return rng.getrandbits(64)


def make_console_events(
    n: int,
    *,
    run_id: str = DEFAULT_RUN_ID,
    workspace_id: str = "bench",
    configuration_id: str = "bench",
    size: int = 400,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``n`` realistic ``console.line`` envelopes (contract section 2), sequence 1..n.

    The orjson encoding averages ``size`` bytes (without the newline) whenever
    ``size`` exceeds the envelope's own ~300 bytes. Deterministic for a seed.
    """
    return list(
        iter_console_events(
            n,
            run_id=run_id,
            workspace_id=workspace_id,
            configuration_id=configuration_id,
            size=size,
            seed=seed,
        )
    )


def make_drafts(n: int, size: int = 400, seed: int = 0) -> list[dict[str, Any]]:
    """The producer form (what HTTP ingest receives) of the same events: type and payload."""
    return [
        {"type": e["type"], "payload": e["payload"]}
        for e in iter_console_events(n, size=size, seed=seed)
    ]


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_ndjson(events: list[dict[str, Any]]) -> bytes:
    """The NDJSON bytes of ``events`` (what the log file holds)."""
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


#: events per ingest batch (and per COPY transaction of the Postgres baseline)
BATCH = 1_000


def event_batches(n: int, seed: int) -> Iterator[list[dict[str, Any]]]:
    """The ``n`` events of ``seed`` in lists of BATCH."""
    events = iter_console_events(n, seed=seed)
    while batch := list(itertools.islice(events, BATCH)):
        yield batch


def producer_body(batch: list[dict[str, Any]]) -> bytes:
    """The NDJSON ingest body of ``batch``: each event in its producer form (type, payload)."""
    dumps = orjson.dumps
    return b"".join([dumps({"type": e["type"], "payload": e["payload"]}) + b"\n" for e in batch])


def batch_bodies(n: int, seed: int) -> list[bytes]:
    """The ingest bodies of the ``n`` events of ``seed``, BATCH events each."""
    return [producer_body(batch) for batch in event_batches(n, seed)]


# ---------------------------------------------------------------------------
# physical limits


def append_limit(path: Path, events: list[dict[str, Any]]) -> float:
    """Events/s of the cheapest durable append: orjson + newline, buffered write, one fsync.

    No locking, no sequence bookkeeping, no index: the ceiling every append
    path of the project (and every peer) is compared with.
    """
    path = Path(path)
    path.unlink(missing_ok=True)
    dumps = orjson.dumps
    start = time.perf_counter()
    with path.open("ab", buffering=1 << 20) as f:
        write = f.write
        for event in events:
            write(dumps(event) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    return len(events) / seconds


def write_limit_bytes(path: Path, data: bytes) -> float:
    """MB/s (10^6 bytes) of one buffered write of ``data`` plus one fsync."""
    path = Path(path)
    path.unlink(missing_ok=True)
    start = time.perf_counter()
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    return len(data) / seconds / 1e6


# ---------------------------------------------------------------------------
# rows and timing


def row(
    section: str,
    name: str,
    value: float,
    unit: str,
    vs: str | None = None,
    ratio: float | None = None,
    note: str = "",
) -> Row:
    """One line of the results table. ``ratio`` is value / baseline named by ``vs``."""
    return {
        "section": section,
        "name": name,
        "value": float(value),
        "unit": unit,
        "vs": vs,
        "ratio": None if ratio is None else float(ratio),
        "note": note,
    }


def skipped_row(section: str, name: str, reason: str) -> Row:
    """A benchmark that could not run here (peer unreachable, ...): says why."""
    return row(section, name, math.nan, "", note=f"skipped: {reason}")


def failed_row(section: str, name: str, error: BaseException | str) -> Row:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = " ".join(str(text).split())[:300]
    return row(section, name, math.nan, "", note=f"failed: {text}")


def ratio(value: float, base: float) -> float | None:
    """value / base, or None when either is missing."""
    if not base or math.isnan(base) or math.isnan(value):
        return None
    return value / base


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Call ``fn()`` and return (its result, wall seconds)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


async def atimed(fn: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    """Await ``fn()`` and return (its result, wall seconds)."""
    start = time.perf_counter()
    result = await fn()
    return result, time.perf_counter() - start


def run_async_isolated(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine in a fresh event loop on its own thread.

    Works whether or not the caller already runs a loop (pytest-asyncio, a
    bench module using asyncio.run around collect).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(coro_fn())  # type: ignore[arg-type]
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# peers: reachability and scratch resources


async def pg_unreachable_reason(dsn: str = PG_DSN) -> str | None:
    """None if PostgreSQL answers at ``dsn``, else a one-line reason."""
    try:
        import asyncpg
    except ImportError as exc:  # pragma: no cover - asyncpg is a dependency
        return f"asyncpg not installed ({exc})"
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except Exception as exc:
        return f"PostgreSQL not reachable at {_redact(dsn)} ({type(exc).__name__}: {exc})"
    await conn.close()
    return None


async def redis_unreachable_reason(url: str = REDIS_URL) -> str | None:
    """None if Redis answers at ``url``, else a one-line reason."""
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:
        return f"redis-py not installed ({exc})"
    client = aioredis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    try:
        await client.ping()
    except Exception as exc:
        return f"Redis not reachable at {_redact(url)} ({type(exc).__name__}: {exc})"
    finally:
        await client.aclose()
    return None


@contextlib.asynccontextmanager
async def scratch_pg_database(prefix: str = "runevents_bench") -> AsyncIterator[str]:
    """Create a throwaway database on the bench server, yield its DSN, drop it after."""
    import asyncpg

    name = f"{prefix}_{os.getpid()}"
    admin = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = PG_DSN.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_DSN, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


#: a COPY session's table: the events as jsonb rows, keyed as the log is
COPY_TABLE = (
    "CREATE TABLE {name} (run_id text NOT NULL, sequence bigint NOT NULL,"
    " body jsonb NOT NULL, PRIMARY KEY (run_id, sequence))"
)


class CopySessions:
    """The Postgres baseline of the ingest benches: one session per seed, each with a
    table of its own, COPYing the events producers of those seeds send
    (``event_batches(per, seed)``), one BATCH-row transaction each, with
    ``synchronous_commit=on`` (durable, as the ingest it is compared with).

    ``async with CopySessions(dsn, seeds, per) as copies: seconds = await copies.run()``;
    connecting, creating the tables and encoding the rows happen before ``run`` (untimed,
    as the producers' bodies are encoded before their clock starts); the tables are
    dropped after.
    """

    def __init__(self, dsn: str, seeds: Sequence[int], per: int) -> None:
        self.dsn = dsn
        self.seeds = list(seeds)
        self.events = len(self.seeds) * per
        self._per = per
        self._conns: list[Any] = []
        self._tables: list[str] = []
        self._records: list[list[list[tuple[str, int, str]]]] = []

    async def __aenter__(self) -> CopySessions:
        import asyncpg

        try:
            for i in range(len(self.seeds)):
                conn = await asyncpg.connect(self.dsn)
                self._conns.append(conn)
                await conn.execute("SET synchronous_commit = on")
                table = f"copy_{i}_{os.getpid()}_{time.monotonic_ns()}"
                await conn.execute(COPY_TABLE.format(name=table))
                self._tables.append(table)
        except BaseException:
            await self._close()
            raise
        dumps = orjson.dumps
        self._records = [
            [[("c", e["sequence"], dumps(e).decode()) for e in batch] for batch in batches]
            for batches in (event_batches(self._per, seed) for seed in self.seeds)
        ]
        return self

    async def run(self) -> float:
        """Wall seconds of every session COPYing all its rows at once."""

        async def copy(conn: Any, table: str, batches: list[list[tuple[str, int, str]]]) -> None:
            for records in batches:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        table, records=records, columns=("run_id", "sequence", "body")
                    )

        start = time.perf_counter()
        await asyncio.gather(
            *(copy(*args) for args in zip(self._conns, self._tables, self._records, strict=True))
        )
        return time.perf_counter() - start

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:  # after a failure the scratch database takes them along
                for conn, table in zip(self._conns, self._tables, strict=True):
                    await conn.execute(f"DROP TABLE {table}")
        finally:
            await self._close()

    async def _close(self) -> None:
        for conn in self._conns:
            await conn.close()
        self._conns = []


def _redact(url: str) -> str:
    # user:password@host -> user@host, so a reason row never prints a secret
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url


# ---------------------------------------------------------------------------
# machine description


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


async def _peer_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    if await pg_unreachable_reason() is None:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN, timeout=3)
        try:
            versions["postgres"] = str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()
    else:
        versions["postgres"] = "not reachable"
    if await redis_unreachable_reason() is None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        try:
            info = await client.info("server")
            versions["redis"] = str(info.get("redis_version", "?"))
        finally:
            await client.aclose()
    else:
        versions["redis"] = "not reachable"
    return versions


def machine_description() -> dict[str, Any]:
    """What the numbers were measured on (CPU, cores, RAM, kernel, disk, versions)."""
    desc: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    try:
        import psutil

        desc["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        desc["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except (ImportError, OSError):
        pass
    usage = shutil.disk_usage(BENCH_DIR)
    desc["disk_free_gb"] = round(usage.free / 2**30, 1)
    try:
        desc.update(run_async_isolated(_peer_versions))
    except Exception as exc:  # a description must never fail a run
        desc["peers"] = f"unknown ({type(exc).__name__})"
    return desc


# ---------------------------------------------------------------------------
# rendering


def format_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return ""
    if value >= 100:
        return f"{value:,.0f}x"
    if value >= 10:
        return f"{value:.1f}x"
    if value >= 0.1:
        return f"{value:.2f}x"
    # two significant digits: the per-event peers sit far below 0.01x
    return f"{value:.2g}x"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_MACHINE_LABELS = (
    ("cpu", "CPU"),
    ("cores", "cores"),
    ("ram_gb", "RAM GB"),
    ("kernel", "kernel"),
    ("disk_free_gb", "disk free GB"),
    ("python", "Python"),
    ("postgres", "PostgreSQL"),
    ("redis", "Redis"),
    ("load_avg_1m", "load avg (1 min) at start"),
)


def render_table(rows: list[Row]) -> str:
    """One Markdown table, rows grouped by section in order of first appearance."""
    # Modules are written by different people: "Storage" and "storage" are one
    # section, shown with the first spelling met.
    order: list[str] = []
    groups: dict[str, list[Row]] = {}
    for r in rows:
        key = r["section"].strip().lower()
        if key not in groups:
            order.append(key)
            groups[key] = []
        groups[key].append(r)
    lines = [
        "| section | benchmark | value | unit | ratio | vs | note |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for section in order:
        for i, r in enumerate(groups[section]):
            cells = [
                f"**{groups[section][0]['section']}**" if i == 0 else "",
                r["name"],
                format_value(r["value"]),
                r["unit"],
                format_ratio(r["ratio"]),
                r["vs"] or "",
                r["note"],
            ]
            lines.append("| " + " | ".join(_cell(str(c)) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(rows: list[Row], machine: dict[str, Any]) -> str:
    """The results page: machine description, command, then the table."""
    out = ["# runevents benchmarks", ""]
    known = dict(_MACHINE_LABELS)
    parts = [f"{known[k]}: {machine[k]}" for k, _ in _MACHINE_LABELS if k in machine]
    extra = {
        k: v
        for k, v in machine.items()
        if k not in known and k not in {"command", "date", "mode", "duration_s"}
    }
    parts += [f"{k}: {v}" for k, v in extra.items()]
    if parts:
        out.append("Machine: " + " · ".join(parts))
    if "date" in machine:
        out.append(f"Date: {machine['date']}")
    if "mode" in machine:
        out.append(f"Mode: {machine['mode']}")
    if "command" in machine:
        out.append(f"Command: `{machine['command']}`")
    if "duration_s" in machine:
        out.append(f"Suite wall time: {machine['duration_s']:.0f} s")
    out += [
        "",
        "Every ratio is against a baseline measured in the same run on the same events "
        "(`vs`); absolute numbers on a shared 2-core machine are noisy, ratios less so.",
        "",
        render_table(rows),
    ]
    return "\n".join(out)


def rows_to_json(rows: list[Row]) -> list[Row]:
    """Rows with NaN turned into None (JSON has no NaN)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in rows
    ]


# ---------------------------------------------------------------------------
# standalone entry point for one module


def main(collect: Callable[[bool], list[Row]]) -> None:
    """``python bench/bench_x.py [--quick]``: run one module and print its table."""
    parser = argparse.ArgumentParser(description=(collect.__module__ or "bench") + " benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes, smoke run")
    parser.add_argument("--no-machine", action="store_true", help="skip the machine description")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = collect(args.quick)
    machine = {} if args.no_machine else machine_description()
    machine["mode"] = "quick" if args.quick else "full"
    machine["command"] = " ".join(["python", *sys.argv])
    machine["duration_s"] = time.perf_counter() - start
    print(render_markdown(rows, machine))


# ---------------------------------------------------------------------------- a server process


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    argv: list[str], *, env: dict[str, str] | None = None, stdout: Any = None, stderr: Any = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a process group of its own: :func:`stop_servers` then ends it with
    any children (uvicorn's workers), and a Ctrl-C of the bench does not reach it first."""
    return subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr, start_new_session=True)


def health_answers(url: str) -> bool:
    """Whether the runevents server at ``url`` answers ``/api/v1/health`` with 200."""
    import httpx

    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url + "/api/v1/health", timeout=1).status_code == 200
    return False


def wait_server(
    url: str, proc: subprocess.Popen[bytes], deadline: float, failure: Callable[[], str]
) -> None:
    """Until the server ``proc`` started answers at ``url``; RuntimeError(``failure()``)
    once it has exited or ``deadline`` (``time.monotonic()``) has passed."""
    while not health_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(failure())
        time.sleep(0.1)


def stop_servers(procs: Sequence[subprocess.Popen[bytes]], grace: float = 15.0) -> None:
    """SIGTERM to every server's process group at once (they shut down side by side),
    SIGKILL to those still running ``grace`` seconds later."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def server_process(
    argv: Callable[[int], list[str]],
    *,
    env: dict[str, str] | None = None,
    quiet: bool = False,
    start_timeout: float = 60.0,
) -> Iterator[tuple[str, int]]:
    """A runevents server started by ``argv(port)`` on a free port, in its own process
    group; yields ``(url, pid)`` once ``/api/v1/health`` answers; stopped afterwards
    (SIGTERM, then SIGKILL after 15 s)."""
    port = free_port()
    proc = start_server(argv(port), env=env, stdout=subprocess.DEVNULL if quiet else None)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        wait_server(url, proc, deadline, lambda: "the runevents server did not start")
        yield url, proc.pid
    finally:
        stop_servers([proc])


async def create_run(session: aiohttp.ClientSession, cfg: str, ws: str = "bench") -> str:
    """A new external run of ``ws``/``cfg`` over ``session`` (on the server's URL): the
    run's API path."""
    async with session.post(
        f"/api/v1/workspaces/{ws}/configurations/{cfg}/runs", json={"external": True}
    ) as r:
        r.raise_for_status()
        run_id = (await r.json())["run"]["id"]
    return f"/api/v1/workspaces/{ws}/configurations/{cfg}/runs/{run_id}"
