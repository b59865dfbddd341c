"""Compaction and retention: ratio, compress/decompress rates, replay, seek, database bytes.

The logs are the demo configuration's (``src/runevents/demo/runevents.toml``):
its job runs through the real worker and executor (build step included) with
``speed`` high enough that a run takes a fraction of a second, several times
with different seeds. What each run stored is the corpus.

- **ratio, per run**: every demo run compacted as the server does it
  (``RunManager.compact_run``): plain bytes / compressed bytes, summed.
- **large log**: the demo runs' events, re-sequenced into one run and repeated
  up to ~1 GB (~50 MB with ``--quick``), sealed as a plain log, then compacted
  by ``EventLog.compact`` (frames + fsync + verify + rename).
  - compress MB/s: the engine's frame writer (1 MiB frames, level 3) vs one-shot
    zstd of the same bytes at the same level (the library's own limit);
  - decompress MB/s: every frame through the engine's reader vs raw
    ``ZstdDecompressor`` on the same frames;
  - replay events/s: ``EventLog.read`` of the whole log, compressed vs plain;
  - seek: ``read(after_sequence=N-1, limit=1)`` at several N, each from a
    fresh open (index read, one frame decompressed), vs a linear scan from the
    start to the middle of the log. Target: under 20 ms at any sequence.
- **database bytes per run** before and after retention (SQLite file pages
  after a WAL checkpoint; Postgres ``runs`` table + indexes, also after
  ``VACUUM``): the row stays, so it should stay flat.

MB = 10^6 bytes. Throughputs are the best of 3 runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import msgspec
import sqlalchemy as sa
import zstandard

from common import (
    Row,
    failed_row,
    main,
    pg_unreachable_reason,
    ratio,
    row,
    run_async_isolated,
    scratch_pg_database,
    skipped_row,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from runevents.app import App  # noqa: E402
from runevents.demo import demo_config_path  # noqa: E402
from runevents.eventlog import EventLog, RunRef  # noqa: E402
from runevents.eventlog.compressed import FRAME_BYTES, LEVEL, FrameIndex  # noqa: E402
from runevents.events import Event, EventDraft, decode_event, encode_event  # noqa: E402
from runevents.logstore.local import LocalLogStore  # noqa: E402
from runevents.maintenance import retention  # noqa: E402
from runevents.manager import RunManager  # noqa: E402
from runevents.models import LogState, Run  # noqa: E402
from runevents.settings import Settings  # noqa: E402

SECTION = "compaction"
MB = 1e6
LARGE_RUN = "run_01JBENCHC0MPACT000000000AA"
SEEK_TARGET_MS = 20.0


def _say(message: str) -> None:
    print(f"[bench_compaction] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# the demo corpus


async def _wait_ended(manager: RunManager, run: Run, timeout: float = 120) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        current = await manager.get_run(run.workspace_id, run.configuration_id, run.id)
        if current.status.ended:
            return current
        if time.monotonic() > deadline:
            raise RuntimeError(f"demo run {run.id} did not end in {timeout} s")
        await asyncio.sleep(0.05)


async def demo_corpus(directory: Path, runs: int) -> tuple[list[bytes], list[Row]]:
    """Run the demo configuration ``runs`` times through the worker; return the stored logs.

    Also compacts each run as the server would and returns the per-run ratio row.
    """
    settings = Settings(
        data_dir=directory,
        config_file=demo_config_path(),
        worker_concurrency=2,
        maintenance_interval_seconds=0,
    )
    app = await App.open(settings)
    try:
        m = app.manager
        logs: list[bytes] = []
        done: list[Run] = []
        started = time.perf_counter()
        for first in range(0, runs, 2):
            # two at a time: the machine has 2 cores
            batch = [
                # ~25 s / 250 = 0.1 s per run; the output is the same at any speed
                await m.create_run("demo", "extract", options={"speed": 250, "seed": seed})
                for seed in range(first, min(first + 2, runs))
            ]
            done += [await _wait_ended(m, run) for run in batch]
        _say(f"{runs} demo runs in {time.perf_counter() - started:.1f} s")
        for run in done:
            logs.append(b"".join([c.data async for c in m.read_events(run)]))
        plain = compressed = 0
        for run in done:
            result = await m.compact_run(run)
            if result is None:
                raise RuntimeError(f"demo run {run.id} was not compacted")
            plain += result[0]
            compressed += result[1]
        events = sum(log.count(b"\n") for log in logs)
        rows = [
            row(
                SECTION,
                "demo logs: compression ratio, per run (compact_run)",
                plain / compressed,
                "x",
                note=f"{runs} demo runs, {events} events, {plain / runs / 1024:.0f} KiB plain "
                f"-> {compressed / runs / 1024:.1f} KiB per run",
            )
        ]
        return logs, rows
    finally:
        await app.close()


# ---------------------------------------------------------------------------
# the large log


def write_large_log(path: Path, corpus: list[bytes], target_bytes: int) -> tuple[int, int]:
    """The corpus' events re-sequenced into one run, repeated up to ``target_bytes``.

    Every line gets its own sequence, event id and the large run's id; the
    last one is a ``run.completed``. Returns (events, bytes).
    """
    events = [
        decode_event(line)
        for log in corpus
        for line in log.split(b"\n")[:-1]
        if not line.startswith(b'{"type":"run.completed"')
    ]
    if not events:
        raise RuntimeError("the demo corpus is empty")
    replace = msgspec.structs.replace
    sequence = 0
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb", buffering=8 << 20) as f:
        while written < target_bytes:
            for event in events:
                sequence += 1
                line = encode_event(
                    replace(
                        event,
                        sequence=sequence,
                        event_id=f"evt_{sequence:026d}",
                        run_id=LARGE_RUN,
                        workspace_id="bench",
                    )
                )
                f.write(line)
                written += len(line)
                if written >= target_bytes:
                    break
        sequence += 1
        last = Event(
            type="run.completed",
            event_id=f"evt_{sequence:026d}",
            created_at="2026-11-24T07:00:00.000000Z",
            sequence=sequence,
            source="server",
            workspace_id="bench",
            configuration_id=events[0].configuration_id,
            run_id=LARGE_RUN,
            build_id=None,
            payload={"status": "succeeded", "failure": None},
        )
        line = encode_event(last)
        f.write(line)
        written += len(line)
    return sequence, written


async def _best(repeat: int, fn: Callable[[], Awaitable[float]]) -> float:
    return min([await fn() for _ in range(repeat)])


async def _replay_seconds(log: EventLog, ref: RunRef, expected: int) -> float:
    started = time.perf_counter()
    count = 0
    async for chunk in log.read(ref):
        count += chunk.last_sequence - chunk.first_sequence + 1
    seconds = time.perf_counter() - started
    if count != expected:
        raise RuntimeError(f"replayed {count} events of {expected}")
    return seconds


async def _seek_ms(log: EventLog, ref: RunRef, sequence: int) -> float:
    started = time.perf_counter()
    chunks = [c async for c in log.read(ref, after_sequence=sequence - 1, limit=1)]
    elapsed = (time.perf_counter() - started) * 1000
    if (
        not chunks
        or chunks[0].first_sequence != sequence
        or decode_event(chunks[0].data).sequence != sequence
    ):
        raise RuntimeError(f"seek to {sequence} returned the wrong event")
    return elapsed


async def _scan_to_ms(log: EventLog, ref: RunRef, sequence: int) -> float:
    """A reader without the frame index: decompress from the start until ``sequence``."""
    started = time.perf_counter()
    async for chunk in log.read(ref):
        if chunk.last_sequence >= sequence:
            break
    return (time.perf_counter() - started) * 1000


def _frames_raw(data: bytes, index: FrameIndex) -> list[bytes]:
    return [data[index.offsets[i] : index.offsets[i] + index.sizes[i]] for i in range(index.frames)]


async def large_log(directory: Path, corpus: list[bytes], quick: bool) -> list[Row]:
    rows: list[Row] = []
    repeat = 3
    target = 50_000_000 if quick else 1_000_000_000
    store = LocalLogStore(directory / "store")
    log = EventLog(store, spool_dir=directory / "spool")
    ref = RunRef("bench", "extract", LARGE_RUN)
    keys = log.keys(ref)
    started = time.perf_counter()
    count, size = await asyncio.to_thread(write_large_log, keys.live, corpus, target)
    await log.seal(ref)  # fsync + the plain log's sparse index, as a finished run has
    _say(f"large log: {count} events, {size / MB:.0f} MB in {time.perf_counter() - started:.0f} s")
    label = f"{size / MB:,.0f} MB log, {count:,} events"
    corpus_mb = sum(len(log) for log in corpus) / MB

    # compaction as the server runs it
    started = time.perf_counter()
    info = await log.compact(ref)
    compact_s = time.perf_counter() - started
    zst_path = store.local_path(keys.compressed)
    idx_path = store.local_path(keys.compressed_index)
    assert zst_path is not None and idx_path is not None
    index = FrameIndex.from_bytes(idx_path.read_bytes())
    rows.append(
        row(
            SECTION,
            "large demo log: compression ratio (1 MiB frames)",
            size / info.bytes,
            "x",
            note=f"{label}; {info.frames} frames of {FRAME_BYTES // 2**20} MiB, zstd level "
            f"{LEVEL}; the {len(corpus)} demo runs ({corpus_mb:.1f} MB) repeat"
            + (
                ", more than a frame: no frame holds one event twice"
                if corpus_mb * MB > FRAME_BYTES
                else ", LESS than a frame: repeats inflate this ratio"
            ),
        )
    )

    # compress: the engine's frames vs one-shot zstd, same level, on a sample
    # (the rate does not depend on the log's length; 1 GB would not fit in memory here)
    frames_in_sample = min(index.frames, 16 if quick else 64)
    sample_size = sum(index.raw_sizes[:frames_in_sample])
    with keys.live.open("rb") as f:
        sample = f.read(sample_size)

    one_shot_bytes = [0]

    def one_shot() -> float:
        compressor = zstandard.ZstdCompressor(level=LEVEL)
        began = time.perf_counter()
        one_shot_bytes[0] = len(compressor.compress(sample))
        return time.perf_counter() - began

    def framed() -> float:
        compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
        began = time.perf_counter()
        view = memoryview(sample)
        start = 0
        for raw in index.raw_sizes[:frames_in_sample]:
            compressor.compress(view[start : start + raw])
            start += raw
        return time.perf_counter() - began

    limit_s = min([one_shot() for _ in range(repeat)])
    framed_s = min([framed() for _ in range(repeat)])
    rows.append(
        row(
            SECTION,
            "compress MB/s (1 MiB frames)",
            sample_size / framed_s / MB,
            "MB/s",
            "zstd one-shot, same level",
            ratio(limit_s, framed_s),
            note=f"first {sample_size / MB:.0f} MB of the large log; one stream finds "
            f"matches across runs that independent frames cannot (ratio "
            f"{sample_size / one_shot_bytes[0]:.1f}x one-shot): the price of random access",
        )
    )
    rows.append(
        row(
            SECTION,
            "compaction MB/s (EventLog.compact: frames + fsync + verify + rename)",
            size / compact_s / MB,
            "MB/s",
            "compress MB/s (frames only)",
            ratio(size / compact_s, sample_size / framed_s),
            note=f"{label}; one run; verify decompresses every frame again",
        )
    )

    # replay: plain first (compact leaves it and readers prefer it), then drop it
    plain_s = await _best(repeat, lambda: _replay_seconds(log, ref, count))
    await log.drop_plain(ref)
    compressed_s = await _best(repeat, lambda: _replay_seconds(log, ref, count))

    def raw_decompress() -> float:
        decompressor = zstandard.ZstdDecompressor()
        began = time.perf_counter()
        with zst_path.open("rb") as f:
            for size_, raw in zip(index.sizes, index.raw_sizes, strict=True):
                decompressor.decompress(f.read(size_), max_output_size=raw)
        return time.perf_counter() - began

    raw_s = min([raw_decompress() for _ in range(repeat)])
    rows.append(
        row(
            SECTION,
            "decompress MB/s (replay of the compressed log)",
            size / compressed_s / MB,
            "MB/s",
            "raw zstd decompress of the same frames",
            ratio(raw_s, compressed_s),
            note="plain MB out per second, EventLog.read",
        )
    )
    rows.append(row(SECTION, "replay events/s, plain log", count / plain_s, "events/s", note=label))
    rows.append(
        row(
            SECTION,
            "replay events/s, compressed log",
            count / compressed_s,
            "events/s",
            "replay, plain log",
            ratio(plain_s, compressed_s),
            note="EventLog.read of every event",
        )
    )

    # seek: a fresh open (index + one frame) per position
    positions = sorted(
        {1, 2, count // 10, count // 4, count // 2, (3 * count) // 4, count - 1, count}
    )
    await _seek_ms(log, ref, count // 3)  # warm the page cache, as a live server's is
    timings = {p: min([await _seek_ms(log, ref, p) for _ in range(3)]) for p in positions}
    worst = max(timings.values())
    scan_ms = min([await _scan_to_ms(log, ref, count // 2) for _ in range(repeat)])
    listed = ", ".join(f"{p:,}: {ms:.1f}" for p, ms in timings.items())
    rows.append(
        row(
            SECTION,
            "seek into the compressed log, worst of 8 positions",
            worst,
            "ms",
            "linear scan to the middle",
            ratio(scan_ms, worst),
            note=f"{label}; target < {SEEK_TARGET_MS:.0f} ms "
            f"({'met' if worst < SEEK_TARGET_MS else 'MISSED'}); ms per sequence: {listed}",
        )
    )
    rows.append(
        row(
            SECTION,
            "seek into the compressed log, median",
            statistics.median(timings.values()),
            "ms",
        )
    )
    rows.append(row(SECTION, "linear scan to the middle (no index)", scan_ms, "ms", note=label))
    return rows


# ---------------------------------------------------------------------------
# database bytes per run, before and after retention


async def _db_size(app: App, vacuum: bool = False) -> tuple[int, int | None]:
    """(database bytes, runs table bytes or None) with the WAL folded in (SQLite)."""
    database = app.database
    repo = app.manager.repo
    if database.dialect == "sqlite":
        async with database.engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    elif vacuum:
        async with database.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sa.text("VACUUM runs"))
    size = await repo.database_size_bytes()
    return size or 0, await repo.runs_table_bytes()


async def db_bytes(
    backend: str, url: str, directory: Path, corpus: list[bytes], runs: int
) -> list[Row]:
    """Make ``runs`` ended runs from the demo corpus, measure, expire them all, measure."""
    settings = Settings(
        data_dir=directory,
        database_url=url,
        worker_concurrency=0,
        maintenance_interval_seconds=0,
    )
    app = await App.open(settings, worker=False)
    try:
        m = app.manager
        drafts = [
            [
                EventDraft(type=event.type, payload=event.payload, created_at=event.created_at)
                for event in map(decode_event, log.split(b"\n")[:-1])
                if event.type not in {"run.queued", "run.completed"}
            ]
            for log in corpus
        ]
        empty_db, empty_table = await _db_size(app)
        for i in range(runs):
            run = await m.create_run("bench", "extract", external=True)
            await m.ingest("bench", "extract", run.id, drafts[i % len(drafts)])
            status = "failed" if i % 5 == 0 else "succeeded"
            await m.ingest(
                "bench",
                "extract",
                run.id,
                [EventDraft(type="run.completed", payload={"status": status})],
            )
        full_db, full_table = await _db_size(app)
        log_bytes = await m.repo.log_bytes_total({LogState.PLAIN, LogState.COMPRESSED})
        started = time.perf_counter()
        report = await retention(m, timedelta(0))
        retention_s = time.perf_counter() - started
        if report.runs != runs or report.errors:
            raise RuntimeError(f"retention expired {report.runs} of {runs}: {report.errors[:3]}")
        after_db, after_table = await _db_size(app)
        vacuum_db, vacuum_table = await _db_size(app, vacuum=True)
    finally:
        await app.close()
    per = lambda total, base: (total - base) / runs  # noqa: E731
    note = f"{runs} demo runs through ingest; bodies {log_bytes / runs / 1024:.0f} KiB per run"
    rows = [
        row(
            SECTION,
            f"{backend}: database bytes per run, before retention",
            per(full_db, empty_db),
            "B",
            note=note,
        ),
        row(
            SECTION,
            f"{backend}: database bytes per run, after retention",
            per(after_db, empty_db),
            "B",
            "before retention",
            ratio(per(after_db, empty_db), per(full_db, empty_db)),
            note="rows and summaries stay (log_state: expired)",
        ),
        row(
            SECTION,
            f"{backend}: retention pass",
            runs / retention_s,
            "runs/s",
            note=f"{runs} bodies deleted, {log_bytes / MB:.1f} MB freed",
        ),
    ]
    if full_table is not None and after_table is not None and empty_table is not None:
        rows.append(
            row(
                SECTION,
                f"{backend}: runs table + indexes bytes per run, before retention",
                per(full_table, empty_table),
                "B",
            )
        )
        rows.append(
            row(
                SECTION,
                f"{backend}: runs table + indexes bytes per run, after retention",
                per(after_table, empty_table),
                "B",
                "before retention",
                ratio(per(after_table, empty_table), per(full_table, empty_table)),
                note="the UPDATE leaves dead row versions until (auto)vacuum",
            )
        )
        if vacuum_table is not None:
            rows.append(
                row(
                    SECTION,
                    f"{backend}: runs table + indexes bytes per run, after VACUUM",
                    per(vacuum_table, empty_table),
                    "B",
                    "before retention",
                    ratio(per(vacuum_table, empty_table), per(full_table, empty_table)),
                    note="space of dead versions reusable; the file does not shrink",
                )
            )
    del vacuum_db
    return rows


# ---------------------------------------------------------------------------


async def _collect(quick: bool) -> list[Row]:
    rows: list[Row] = []
    base = Path(tempfile.mkdtemp(prefix="runevents-bench-compaction-"))
    try:
        try:
            corpus, ratio_rows = await demo_corpus(base / "demo", 30 if quick else 64)
            rows += ratio_rows
        except Exception as exc:
            return [failed_row(SECTION, "demo corpus", exc)]
        try:
            rows += await large_log(base / "large", corpus, quick)
        except Exception as exc:
            rows.append(failed_row(SECTION, "large log", exc))
        finally:
            shutil.rmtree(base / "large", ignore_errors=True)
        runs = 100 if quick else 1000
        try:
            rows += await db_bytes(
                "SQLite", f"sqlite:///{base / 'sqlite.db'}", base / "sqlite", corpus, runs
            )
        except Exception as exc:
            rows.append(failed_row(SECTION, "SQLite: database bytes per run", exc))
        reason = await pg_unreachable_reason()
        if reason is not None:
            rows.append(skipped_row(SECTION, "Postgres: database bytes per run", reason))
        else:
            try:
                async with scratch_pg_database("runevents_bench_compaction") as dsn:
                    rows += await db_bytes("Postgres", dsn, base / "pg", corpus, runs)
            except Exception as exc:
                rows.append(failed_row(SECTION, "Postgres: database bytes per run", exc))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(base)
    return rows


def collect(quick: bool) -> list[Row]:
    """Rows of the compaction section (see the module docstring)."""
    return run_async_isolated(lambda: _collect(quick))


if __name__ == "__main__":
    main(collect)
