"""Search across runs (issue 16): the n-gram index against ripgrep on the same logs.

The corpus: ``RUNS`` ended runs of console lines (about 1 MB of NDJSON each,
``TOTAL_BYTES`` in all; ``--quick``: 60 runs, ~12 MB), written as sealed plain
logs with their rows, then compacted by ``RunManager.compact_run`` as the
server does (zstd frames + frame index + the search index). A hard link of
every plain log is kept in a separate directory before compaction: that is
what ``rg`` searches, uncompressed, with a warm page cache. Messages are drawn
from a pool made by the suite's console-line generator (``common.py``), so
each frame has a realistic mix of text and numbers; three runs get one line
with a rare term.

Rows:

- rare term (in 3 runs), all hits: the search engine (``WorkspaceSearch``, as
  the route runs it) with the filters not cached (index files read from the
  page cache, as a new process does) and cached (a server's steady state), vs
  ``rg -i -F`` over the plain NDJSON (warm page cache, output captured, best
  of 3). Goal: <= 0.1x rg.
- the same search with the index ignored (every frame decompressed and scanned).
- common term: first page of 100 hits. Goal: < 0.5 s.
- index size as a share of the compressed logs (goal < 10 %), and the extra
  compaction time (the index builder's own time inside compaction, measured
  by wrapping it) over the whole compaction.
- memory: RSS growth of the process during all the searches (goal < 100 MB);
  the event loop meanwhile (goal < 50 ms): the longest CPU time of one loop
  callback, and the longest lateness of a 5 ms ticker (wall clock).

Sizes can be changed with ``RUNEVENTS_BENCH_SEARCH_RUNS`` and
``RUNEVENTS_BENCH_SEARCH_MB`` (total plain MB).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import psutil

from common import Row, iter_console_events, main, ratio, row, server_process, skipped_row

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from runevents.app import App  # noqa: E402
from runevents.eventlog import ngrams  # noqa: E402
from runevents.ids import new_run_id  # noqa: E402
from runevents.models import LogState, Run, RunStatus, utcnow  # noqa: E402
from runevents.search import Pattern, SearchRequest, WorkspaceSearch  # noqa: E402
from runevents.search.filters import FilterCache  # noqa: E402
from runevents.settings import Settings  # noqa: E402
from runevents.upkeep import run_ref  # noqa: E402

SECTION = "search"
WS = "bench"
RARE = "XQZWK-4412 ConnectionResetError while rebalancing"
RARE_QUERY = "xqzwk-4412"
COMMON_QUERY = "batch"
#: rounds of rg then the rare-term searches (not cached, cached), taking turns
ROUNDS = 5
MB = 1e6


def _say(message: str) -> None:
    print(f"[bench_search] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# the corpus

_LINE = (
    '{"type":"console.line","event_id":"evt_%s","created_at":"%s","sequence":%d,'
    '"source":"worker","workspace_id":"' + WS + '","configuration_id":"%s","run_id":"%s",'
    '"build_id":null,"payload":{"scope":"run","stream":"%s","level":"%s","message":%s}}\n'
)
_EDGE = (
    '{"type":"%s","event_id":"evt_%s","created_at":"%s","sequence":%d,"source":"worker",'
    '"workspace_id":"' + WS + '","configuration_id":"%s","run_id":"%s","build_id":null,'
    '"payload":%s}\n'
)


def _pool(n: int) -> list[tuple[str, str, str]]:
    """(stream, level, message as JSON) of ``n`` generated console lines."""
    out = []
    for event in iter_console_events(n, size=420, seed=16):
        p = event["payload"]
        out.append((p["stream"], p["level"], orjson.dumps(p["message"]).decode()))
    return out


def _log(
    run_id: str, cfg: str, nbytes: int, pool: list[tuple[str, str, str]], rng: random.Random,
    rare: bool,
) -> tuple[bytes, int]:  # fmt: skip
    """One run's NDJSON (run.queued, console lines, run.completed) of about ``nbytes``.

    Envelopes as the server writes them: unique event ids, increasing timestamps.
    """
    prefix = run_id[4:14]
    clock = rng.randrange(3600 * 10) * 1_000_000  # microseconds after 06:00

    def stamp() -> str:
        s, us = divmod(clock, 1_000_000)
        return f"2026-11-24T{6 + s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{us:06d}Z"

    def event_id() -> str:
        return f"{prefix}{rng.getrandbits(64):016X}"

    parts = [_EDGE % ("run.queued", event_id(), stamp(), 1, cfg, run_id, '{"status":"queued"}')]
    size = len(parts[0])
    seq = 1
    rare_at = rng.randrange(2, max(3, nbytes // 500)) if rare else -1
    randrange = rng.randrange
    while size < nbytes:
        seq += 1
        clock += 50 + randrange(3000)
        stream, level, message = pool[randrange(len(pool))]
        if seq == rare_at:
            stream, level, message = "stderr", "error", orjson.dumps(RARE).decode()
        line = _LINE % (event_id(), stamp(), seq, cfg, run_id, stream, level, message)
        parts.append(line)
        size += len(line)
    seq += 1
    completed = '{"status":"succeeded"}'
    parts.append(_EDGE % ("run.completed", event_id(), stamp(), seq, cfg, run_id, completed))
    return "".join(parts).encode(), seq


async def build_corpus(
    app: App, runs: int, total: int, plain_dir: Path
) -> tuple[list[Run], int, float]:
    """Write ``runs`` sealed plain logs and their rows; hard-link each into ``plain_dir``."""
    m = app.manager
    pool = _pool(60_000 if total > 100 * MB else 20_000)
    rng = random.Random(16)
    rare_runs = {runs // 10, runs // 2, runs - 1 - runs // 10}
    created = utcnow() - timedelta(days=1)
    out: list[Run] = []
    plain = 0
    started = time.perf_counter()
    for i in range(runs):
        run_id = new_run_id()
        cfg = ("etl", "load", "report")[i % 3]
        nbytes = int(total / runs * (0.3 + 1.4 * rng.random()))
        data, count = _log(run_id, cfg, nbytes, pool, rng, i in rare_runs)
        created += timedelta(seconds=10)
        run = Run(
            id=run_id,
            workspace_id=WS,
            configuration_id=cfg,
            status=RunStatus.SUCCEEDED,
            external=True,
            created_at=created,
            started_at=created,
            completed_at=created + timedelta(seconds=5),
            updated_at=created,
            event_count=count,
            events_bytes=len(data),
            log_state=LogState.PLAIN,
        )
        path = m.log.keys(run_ref(run)).live
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.link(path, plain_dir / f"{run_id}.ndjson")
        run = run.evolve(events_path=str(path))
        await m.repo.insert_run(run)
        out.append(run)
        plain += len(data)
        if i % 500 == 499:
            _say(f"{i + 1} runs, {plain / MB:.0f} MB written")
    return out, plain, time.perf_counter() - started


# ---------------------------------------------------------------------------
# measuring


class Sampler:
    """Peak RSS (sampled every 5 ms) and how long the event loop was held.

    Two figures for the loop: the longest wall-clock lateness of a 5 ms ticker
    (it includes waiting for the CPU on a busy shared machine and for the GIL),
    and the longest CPU time one loop callback used (``time.thread_time`` around
    every ``Handle._run``): what the code itself holds the loop for.
    """

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.base = self.process.memory_info().rss
        self.peak = self.base
        self.stall = 0.0
        self.callback_cpu = 0.0
        self.callback = ""
        #: longest garbage collection pause (any thread)
        self.gc_pause = 0.0
        #: what is running (set by the caller), and the longest stall in each
        self.phase = ""
        self.stalls: dict[str, float] = {}
        #: the longest stall minus the loop thread's wait for a CPU (Linux schedstat;
        #: nan elsewhere): what this process did to its loop (callbacks, GIL, GC)
        self.own_stall = 0.0 if _schedstat_path() is not None else float("nan")
        self._gc_started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._original = asyncio.events.Handle._run

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    async def ticker(self) -> None:
        loop = asyncio.get_running_loop()
        schedstat = _schedstat_path()
        while not self._stop.is_set():
            before = loop.time()
            waited = _runqueue_wait(schedstat)
            await asyncio.sleep(0.005)
            late = loop.time() - before - 0.005
            self.stall = max(self.stall, late)
            self.stalls[self.phase] = max(self.stalls.get(self.phase, 0.0), late)
            if schedstat is not None:
                # minus the time the OS kept the loop's thread off a CPU it was ready for
                own = late - (_runqueue_wait(schedstat) - waited)
                self.own_stall = max(self.own_stall, own)

    def start(self) -> asyncio.Task[None]:
        original = self._original
        sampler = self

        def timed_run(handle: asyncio.Handle) -> None:
            started = time.thread_time()
            original(handle)
            used = time.thread_time() - started
            if used > sampler.callback_cpu:
                sampler.callback_cpu = used
                sampler.callback = repr(handle)[:160]

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
        gc.callbacks.append(self._gc)
        self._thread.start()
        return asyncio.create_task(self.ticker())

    async def stop(self, task: asyncio.Task[None]) -> None:
        self._stop.set()
        await task
        self._thread.join()
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]
        gc.callbacks.remove(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause = max(self.gc_pause, time.perf_counter() - self._gc_started)


def _schedstat_path() -> str | None:
    path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
    return path if os.path.exists(path) else None


def _runqueue_wait(path: str | None) -> float:
    """Seconds the calling thread has waited on a run queue (Linux), 0 elsewhere."""
    if path is None:
        return 0.0
    with open(path, "rb") as f:
        return int(f.read().split()[1]) / 1e9


async def search(
    app: App, q: str, *, limit: int, cache: FilterCache
) -> tuple[float, float, dict[str, Any]]:
    """(seconds to the first hit, seconds to the done record, the done record)."""
    request = SearchRequest(workspace_id=WS, pattern=Pattern(q, regex=False), limit=limit)
    started = time.perf_counter()
    first = None
    done: dict[str, Any] = {}
    async for line in WorkspaceSearch(
        app.manager.repo, app.manager.log, request, cache=cache
    ).lines():
        record = orjson.loads(line)
        if record.get("done"):
            done = record
        elif first is None:
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    return first if first is not None else total, total, done


def rg_once(rg: str, directory: Path, term: str) -> tuple[float, int]:
    """Seconds of one ``rg -i -F term`` over ``directory``; and its hit count."""
    argv = [rg, "--no-ignore", "-i", "-F", term, str(directory)]
    # output captured (not /dev/null: rg would stop at the first match there)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False)
    return time.perf_counter() - started, done.stdout.count(b"\n")


async def best_of(
    n: int, fn: Callable[[], Awaitable[tuple[float, float, dict[str, Any]]]]
) -> tuple[float, float, dict[str, Any]]:
    results = [await fn() for _ in range(n)]
    return min(results, key=lambda r: r[1])


# ---------------------------------------------------------------------------


async def measure(quick: bool) -> list[Row]:
    runs = int(os.environ.get("RUNEVENTS_BENCH_SEARCH_RUNS", 60 if quick else 5000))
    total = float(os.environ.get("RUNEVENTS_BENCH_SEARCH_MB", 12 if quick else 5100)) * MB
    rg = shutil.which("rg")
    keep = os.environ.get("RUNEVENTS_BENCH_SEARCH_CORPUS")
    if keep:  # a corpus kept between runs (building 5 GB takes minutes)
        tmp = Path(keep) / f"{runs}-runs-{total / MB:.0f}-mb"
        tmp.mkdir(parents=True, exist_ok=True)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="runevents-bench-search-"))
    plain_dir = tmp / "plain"
    marker = tmp / "corpus.json"
    settings = Settings(data_dir=tmp / "data", worker_concurrency=0, maintenance_interval_seconds=0)
    rows: list[Row] = []
    if not marker.exists():
        shutil.rmtree(plain_dir, ignore_errors=True)
        shutil.rmtree(tmp / "data", ignore_errors=True)
        plain_dir.mkdir()
    app = await App.open(settings, worker=False)
    # as the server does once started (api/app.py lifespan): what exists now lives
    # as long as the process, and the collector never walks it again
    gc.freeze()
    try:
        if marker.exists():
            built = orjson.loads(marker.read_bytes())
            _say(f"corpus reused from {tmp} (built {built['built_at']})")
            built_note = f"; measured when the corpus was built ({built['built_at']})"
        else:
            built = await _build(app, runs, int(total), plain_dir)
            if keep:
                marker.write_bytes(orjson.dumps(built))
            built_note = ""
        run_ids = [run_id for run_id, _ in built["runs"]]
        plain_bytes, compressed = built["plain_bytes"], built["compressed"]
        index_bytes, index_time, compact_s = (
            built["index_bytes"], built["index_time"], built["compact_s"]
        )  # fmt: skip
        size_note = (
            f"{runs} runs, {plain_bytes / MB:.0f} MB NDJSON, {compressed / MB:.0f} MB compressed"
        )
        rows.append(
            row(
                SECTION,
                "index size / compressed logs",
                100 * index_bytes / compressed,
                "%",
                note=f"{index_bytes / MB:.1f} MB of n-gram filters; {size_note}; goal < 10 %"
                + built_note,
            )
        )
        rows.append(
            row(
                SECTION,
                "extra compaction time for the index",
                100 * index_time / (compact_s - index_time),
                "%",
                note=f"index builder {index_time:.1f} s inside {compact_s:.1f} s of compact_run "
                f"({plain_bytes / MB / compact_s:.0f} MB/s)" + built_note,
            )
        )

        # process warm-up (statement compilation, imports): not part of any figure
        await search(app, "warm-up", limit=1, cache=FilterCache(max_bytes=0))
        # timed without the sampler (its thread and ticker would slow the searches);
        # rg and the searches take turns, round by round, so that both meet the same
        # load (on a shared machine it changes within seconds): best of each
        warm_cache = FilterCache()
        await search(app, RARE_QUERY, limit=1000, cache=warm_cache)  # fills the cache
        if rg is not None:
            rg_once(rg, plain_dir, RARE_QUERY)  # the page cache warmed
        rounds: list[tuple[float, Any, Any]] = []
        for _ in range(ROUNDS):
            rg_round = float("nan")
            if rg is not None:
                rg_round, rg_hits = rg_once(rg, plain_dir, RARE_QUERY)
                assert rg_hits == 3, rg_hits
            cold_round = await search(app, RARE_QUERY, limit=1000, cache=FilterCache())
            warm_round = await search(app, RARE_QUERY, limit=1000, cache=warm_cache)
            rounds.append((rg_round, cold_round, warm_round))
        rg_s = min(r[0] for r in rounds)
        cold_first, cold, cold_done = min((r[1] for r in rounds), key=lambda r: r[1])
        _, warm, warm_done = min((r[2] for r in rounds), key=lambda r: r[1])
        paired = ", ".join(f"{r[2][1] / r[0]:.3f}" for r in rounds)
        paired_cold = ", ".join(f"{r[1][1] / r[0]:.2f}" for r in rounds)
        common_first, common, common_done = await best_of(
            3, lambda: search(app, COMMON_QUERY, limit=100, cache=warm_cache)
        )
        scan_cache = FilterCache(max_bytes=0)  # nothing cached: every run without an index
        for run_id in run_ids:  # the index ignored: the same search scans every frame
            scan_cache.put(run_id, None)
        _, scan, scan_done = await search(app, RARE_QUERY, limit=1000, cache=scan_cache)
        # the same searches again, for memory and the event loop only
        sampler = Sampler()
        ticker = sampler.start()
        for sampler.phase, q, limit, cache in (
            ("rare, not cached", RARE_QUERY, 1000, FilterCache()),
            ("rare, cached", RARE_QUERY, 1000, warm_cache),
            ("common", COMMON_QUERY, 100, warm_cache),
            ("index ignored", RARE_QUERY, 1000, scan_cache),
        ):
            await search(app, q, limit=limit, cache=cache)
        await sampler.stop(ticker)
        assert cold_done["hits"] == warm_done["hits"] == scan_done["hits"] == 3, (
            cold_done,
            scan_done,
        )
        assert common_done["hits"] == 100

        if rg is None:
            rows.append(
                skipped_row(SECTION, "rg -i -F, rare term", "rg not on PATH (apt install ripgrep)")
            )
        else:
            rows.append(
                row(
                    SECTION,
                    "rg -i -F, rare term, plain NDJSON (warm cache)",
                    rg_s * 1000,
                    "ms",
                    note=f"{plain_bytes / MB:.0f} MB in {runs} files, best of {ROUNDS} "
                    "(taking turns with the searches below)",
                )
            )
        skipped = cold_done["bytes_skipped"] / max(
            1, cold_done["bytes_skipped"] + cold_done["bytes_scanned"]
        )
        rows.append(
            row(
                SECTION,
                "rare term (3 runs), all hits, filters not cached",
                cold * 1000,
                "ms",
                vs="rg",
                ratio=ratio(cold, rg_s),
                note=f"{cold_done['runs_scanned']} runs, "
                f"{100 * skipped:.2f} % of bytes skipped unread; "
                f"first hit {cold_first * 1000:.0f} ms; best of {ROUNDS}, a new process's "
                f"first search (filter files in the page cache); x rg round by round: "
                f"{paired_cold}",
            )
        )
        rows.append(
            row(
                SECTION,
                "rare term (3 runs), all hits, filters cached",
                warm * 1000,
                "ms",
                vs="rg",
                ratio=ratio(warm, rg_s),
                note=f"best of {ROUNDS}; x rg round by round: {paired}; goal <= 0.1x rg",
            )
        )
        rows.append(
            row(
                SECTION,
                "rare term, index ignored (every frame scanned)",
                scan * 1000,
                "ms",
                vs="rg",
                ratio=ratio(scan, rg_s),
                note=f"{scan_done['bytes_scanned'] / MB:.0f} MB decompressed and matched",
            )
        )
        rows.append(
            row(
                SECTION,
                f"common term ({COMMON_QUERY!r}): first 100 hits",
                common * 1000,
                "ms",
                note=f"first hit {common_first * 1000:.1f} ms; best of 3; goal < 500 ms",
            )
        )
        rows.append(
            row(
                SECTION,
                "RSS growth during the searches",
                (sampler.peak - sampler.base) / 2**20,
                "MiB",
                note="peak over all searches above; goal < 100 MiB",
            )
        )
        rows.append(
            row(
                SECTION,
                "longest event loop callback during the searches (CPU)",
                sampler.callback_cpu * 1000,
                "ms",
                note="thread CPU time of one loop callback: what search holds the loop for "
                f"(longest garbage collection meanwhile {sampler.gc_pause * 1000:.0f} ms; "
                f"the callback: {sampler.callback}); goal < 50 ms",
            )
        )
        rows.append(
            row(
                SECTION,
                "longest event loop stall, less the wait for a CPU",
                sampler.own_stall * 1000,
                "ms",
                note="the same ticker, each lateness minus the time the OS kept the loop's "
                "thread runnable but off a CPU (/proc schedstat): what the search process "
                "itself held the loop for (callbacks, the GIL, GC); goal < 50 ms",
            )
        )
        rows.append(
            row(
                SECTION,
                "longest event loop stall during the searches (wall)",
                sampler.stall * 1000,
                "ms",
                note="lateness of a 5 ms ticker: includes waiting for a CPU (load average "
                f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores) and for the GIL; by search: "
                + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in sampler.stalls.items()),
            )
        )
        rows.extend(served(tmp / "data"))
    finally:
        await app.close()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


async def _build(app: App, runs: int, total: int, plain_dir: Path) -> dict[str, Any]:
    """Write and compact the corpus; what the rows need of it (kept as ``corpus.json``)."""
    corpus, plain_bytes, write_s = await build_corpus(app, runs, total, plain_dir)
    _say(f"corpus: {runs} runs, {plain_bytes / MB:.0f} MB in {write_s:.0f} s; compacting")

    # compaction, with the index builder's own time measured inside it
    index_time = 0.0
    original = ngrams.IndexBuilder.add_frame

    def timed_add(self: ngrams.IndexBuilder, first: int, raw: bytes) -> None:
        nonlocal index_time
        started = time.perf_counter()
        original(self, first, raw)
        index_time += time.perf_counter() - started

    ngrams.IndexBuilder.add_frame = timed_add  # type: ignore[method-assign]
    started = time.perf_counter()
    compressed = 0
    try:
        for i, run in enumerate(corpus):
            result = await app.manager.compact_run(run)
            assert result is not None, run.id
            compressed += result[1]
            if i % 500 == 499:
                _say(f"{i + 1} runs compacted")
    finally:
        ngrams.IndexBuilder.add_frame = original  # type: ignore[method-assign]
    compact_s = time.perf_counter() - started
    index_bytes = 0
    for run in corpus:
        path = app.manager.log.store.local_path(app.manager.log.keys(run_ref(run)).ngram_index)
        assert path is not None
        index_bytes += path.stat().st_size
    return {
        "built_at": utcnow().strftime("%Y-%m-%d %H:%M UTC"),
        "runs": [[run.id, run.configuration_id] for run in corpus],
        "plain_bytes": plain_bytes,
        "compressed": compressed,
        "index_bytes": index_bytes,
        "index_time": index_time,
        "compact_s": compact_s,
    }


# ---------------------------------------------------------------------------
# the same searches through a server process, probed from outside


#: a regex with no literal of 3+ characters: the index cannot help, every frame is read
NO_LITERAL = r"XQ.W.-4"


def served(data_dir: Path) -> list[Row]:
    """Searches through ``runevents serve`` on the corpus, its loop probed from outside.

    A client thread asks ``GET /api/v1/health`` every 10 ms meanwhile: its
    latency is what any other request (a follower, an ingest batch) waits for
    the server's event loop, plus the HTTP round trip (measured idle first).
    The server's RSS is sampled too.
    """
    import httpx

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    argv = [
        sys.executable, "-m", "runevents", "serve", "--host", "127.0.0.1", "--data-dir",
        str(data_dir), "--workers", "0", "--log-level", "warning", "--port",
    ]  # fmt: skip
    with server_process(lambda port: [*argv, str(port)], env=env, quiet=True) as (url, pid):
        server = psutil.Process(pid)
        client = httpx.Client(base_url=url, timeout=300)

        def one(q: str, limit: int, regex: bool = False) -> dict[str, Any]:
            params: dict[str, Any] = {"q": q, "limit": limit}
            if regex:
                params["regex"] = "true"
            with client.stream("GET", f"/api/v1/workspaces/{WS}/search", params=params) as r:
                r.raise_for_status()
                lines = [line for line in r.iter_lines() if line]
            done: dict[str, Any] = orjson.loads(lines[-1])
            return done

        phase = ["idle"]
        latencies: dict[str, list[float]] = {}
        stop = threading.Event()
        peak = [server.memory_info().rss]

        # the server's event loop runs on its main thread
        server_loop = f"/proc/{pid}/task/{pid}/schedstat"
        server_loop = server_loop if os.path.exists(server_loop) else None
        own: dict[str, list[float]] = {}

        def probe() -> None:
            mine = _schedstat_path()
            with httpx.Client(base_url=url, timeout=30) as health:
                while not stop.is_set():
                    server_waited, waited = _runqueue_wait(server_loop), _runqueue_wait(mine)
                    started = time.perf_counter()
                    health.get("/api/v1/health").raise_for_status()
                    latency = time.perf_counter() - started
                    # the larger of the two waits (they may overlap): an under-correction
                    cpu_wait = max(
                        _runqueue_wait(server_loop) - server_waited, _runqueue_wait(mine) - waited
                    )
                    latencies.setdefault(phase[0], []).append(latency)
                    own.setdefault(phase[0], []).append(latency - cpu_wait)
                    peak[0] = max(peak[0], server.memory_info().rss)
                    stop.wait(0.01)

        # imports, statement caches; no filter loaded (no literal of 3+ characters: the
        # index is not used), and found in the newest run (one frame read)
        one(COMMON_QUERY[:2] + "." + COMMON_QUERY[3:], 1, regex=True)
        base = server.memory_info().rss
        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        time.sleep(3.0)
        try:
            phase[0] = "rare, filters not cached"
            cold = one(RARE_QUERY, 1000)
            phase[0] = "rare, cached"
            for _ in range(3):
                one(RARE_QUERY, 1000)
            phase[0] = "common"
            for _ in range(3):
                one(COMMON_QUERY, 100)
            phase[0] = "no literal (every frame read)"
            scan = one(NO_LITERAL, 1000, regex=True)
        finally:
            stop.set()
            thread.join()
            client.close()
    assert cold["hits"] == scan["hits"] == 3, (cold, scan)
    idle = latencies.pop("idle")
    own_idle = own.pop("idle")
    during = [x for values in latencies.values() for x in values]
    own_during = [x for values in own.values() for x in values]
    worst = {k: max(v) for k, v in latencies.items() if v}
    own_worst = {k: max(v) for k, v in own.items() if v}
    return [
        row(
            SECTION,
            "served: longest /health wait during searches, less waits for a CPU",
            max(own_during) * 1000 if server_loop else float("nan"),
            "ms",
            note="each wait minus the time the OS kept the server's loop thread or the "
            "asking thread (the longer) runnable but off a CPU (/proc schedstat): what the server "
            "held its loop for, plus the HTTP round trip "
            f"(idle max {max(own_idle) * 1000:.1f} ms); "
            "by search: "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in own_worst.items())
            + "; goal < 50 ms",
        ),
        row(
            SECTION,
            "served: longest /health wait during searches",
            max(during) * 1000,
            "ms",
            note=f"a client asking GET /api/v1/health every 10 ms while the server searches "
            f"({len(during)} asks; idle: median {statistics.median(idle) * 1000:.1f} ms, "
            f"max {max(idle) * 1000:.1f} ms; during: median "
            f"{statistics.median(during) * 1000:.1f} ms, 99th percentile "
            f"{_percentile(during, 0.99) * 1000:.1f} ms, 99.9th "
            f"{_percentile(during, 0.999) * 1000:.1f} ms; longest by search: "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in worst.items())
            + "); goal < 50 ms",
        ),
        row(
            SECTION,
            "served: server RSS growth during searches",
            (peak[0] - base) / 2**20,
            "MiB",
            note="sampled every 10 ms from outside; goal < 100 MiB",
        ),
    ]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def collect(quick: bool) -> list[Row]:
    return asyncio.run(measure(quick))


if __name__ == "__main__":
    main(collect)
