"""Several machines (contract 10): three replicas sharing only Postgres and S3.

Real ``runevents serve`` processes, each with its own empty data dir, on one
scratch Postgres database and one SeaweedFS bucket (``s3://``, so
``live_tier=auto`` turns the shared live tier on), all on this machine:

1. **Cross-replica live tail.** A producer appends to replica A (HTTP ingest,
   100 batches/s of 10 events, each event carrying its send time); two SSE
   followers (``GET {run}/events?stream=true``, ``Accept: text/event-stream``)
   of the same run, one on A and one on B, note when each event arrives:
   p50/p99 append-to-delivery latency on another replica next to the same
   replica. Send and arrival times come from one clock (this process).
2. **Ingest through 3 replicas vs through 1** (durable, default settings,
   1,000-event NDJSON batches, one external run per producer): all producers
   to A; each producer sticking to one of A, B, C; and, when the forwarding of
   issue 14 is in the code (``Settings.advertise_url``), round-robin (each
   producer's successive batches to A, B, C in turn, the non-owners relaying).
   Next to Postgres COPY of the same events (``synchronous_commit=on``, one
   session per producer). Per round: CPU seconds of each replica, of the
   bench database's Postgres backends and of this client (``/proc``), and
   ``pg_stat_wal`` deltas (WAL bytes, WAL syncs; cluster-wide, so other users
   of the Postgres server add a little).
3. **Reading an ended run** (100,000 events; 10,000 quick): time to the first
   body byte and to the last of the NDJSON read, from a replica started
   after the run ended with an empty data dir (it reads the sealed log from
   S3), from the replica that wrote it, and from a single-process
   ``runevents serve`` (SQLite + ``file://``, the one-machine layout) holding
   the same events.
4. **Live-tier size**: ``SELECT count(*), sum(size), sum(length(data)) FROM
   live_chunks`` sampled every 0.25 s during 100 runs of 100,000 events (5 of
   10,000 quick; several runs at once, spread over the replicas), its peak,
   and after every run ended: zero bytes per ended run once sealed.

``python bench/bench_cluster.py [--quick]`` (quick: < 60 s, small sizes, for CI;
also part of ``bench/run.py``). Full mode also writes ``bench/results/cluster.md``.
The processes, HTTP helpers and probes live in ``cluster_common.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from cluster_common import (
    COMPLETED,
    Replica,
    WalMeter,
    base_env,
    busy,
    client_session,
    cluster_env,
    cpu_seconds,
    forwarding_available,
    pct,
    pg_cpu,
    pg_snapshot,
    post,
    progress,
    start_replicas,
)
from common import (
    BATCH,
    RESULTS_DIR,
    CopySessions,
    Row,
    batch_bodies,
    create_run,
    failed_row,
    machine_description,
    main,
    pg_unreachable_reason,
    ratio,
    render_markdown,
    row,
    scratch_pg_database,
    skipped_row,
)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # tests.fixtures.s3 (SeaweedFS) when run as a script
    sys.path.insert(1, str(REPO))

SECTION = "Several machines"
SSE = {"Accept": "text/event-stream"}


@dataclass(frozen=True)
class Sizes:
    tail_seconds: float  # length of the timed live tail
    producers: int  # concurrent producers of the ingest rounds
    per_producer: int  # events each producer sends per round
    rounds: int  # each ingest layout is measured this often (best kept)
    read_events: int  # events of the ended run read back
    tier_runs: int  # runs of the live-tier size section
    tier_events: int  # events per such run
    tier_concurrency: int  # of those runs written at once


FULL = Sizes(
    tail_seconds=30.0,
    producers=6,
    per_producer=50_000,
    rounds=2,
    read_events=100_000,
    tier_runs=100,
    tier_events=100_000,
    tier_concurrency=6,
)
QUICK = Sizes(
    tail_seconds=3.0,
    producers=3,
    per_producer=4_000,
    rounds=1,
    read_events=10_000,
    tier_runs=5,
    tier_events=10_000,
    tier_concurrency=3,
)
TAIL_RATE = 100  # batches per second
TAIL_BATCH = 10  # events per batch


# ---------------------------------------------------------------------------- processes


# ---------------------------------------------------------------------------- HTTP helpers


# ---------------------------------------------------------------------------- 1. live tail


async def _follow(url: str, run_path: str, arrivals: list[float], ready: asyncio.Event) -> None:
    """SSE follower: the latency of every timed event (its payload's ``t``)."""
    async with (
        client_session(url) as session,
        session.get(run_path + "/events?stream=true&after_sequence=0", headers=SSE) as r,
    ):
        r.raise_for_status()
        loads = orjson.loads
        async for line in r.content:
            if not line.startswith(b"data: "):
                continue
            now = time.perf_counter()
            event = loads(line[6:])
            if event["type"] == "run.completed":
                return
            sent = event["payload"].get("t")
            if sent is None:
                ready.set()  # the warm-up event: the stream is live
            elif sent > 0:
                arrivals.append(now - sent)


@dataclass
class Tail:
    """One timed live tail: latencies (s) per follower, POST round trips, batches/s sent."""

    latencies: list[list[float]]
    posts: list[float]
    rate: float
    expected: int


async def _tail(writer: str, followers: list[str], seconds: float) -> Tail:
    """Append through ``writer`` at TAIL_RATE; one SSE follower of the run per URL."""
    async with client_session(writer) as session:
        run_path = await create_run(session, "tail")
        warm = orjson.dumps({"type": "bench.tick", "payload": {"warm": True}}) + b"\n"
        await post(session, run_path, warm)  # the writer holds the run from here
        lat: list[list[float]] = [[] for _ in followers]
        ready = [asyncio.Event() for _ in followers]
        tasks = [
            asyncio.create_task(_follow(url, run_path, lat[i], ready[i]))
            for i, url in enumerate(followers)
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 30)
        posts: list[float] = []
        n = int(seconds * TAIL_RATE)
        dumps = orjson.dumps

        async def send(i: int) -> None:
            t = time.perf_counter()
            body = b"".join(
                dumps({"type": "bench.tick", "payload": {"t": t, "i": i, "k": k}}) + b"\n"
                for k in range(TAIL_BATCH)
            )
            await post(session, run_path, body)
            posts.append(time.perf_counter() - t)

        # open loop: a batch leaves at its time whether or not the one before was answered
        # (batches of one run are still appended one at a time, in arrival order)
        sends = []
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / TAIL_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sends.append(asyncio.create_task(send(i)))
        rate = max(1, n - 1) / (time.perf_counter() - start)
        await asyncio.gather(*sends)
        await post(session, run_path, COMPLETED)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return Tail(lat, posts, rate, n * TAIL_BATCH)


def _ms(values: list[float], q: float) -> float:
    return pct(values, q) * 1000


async def _live_tail(a: Replica, b: Replica, local: Replica, seconds: float) -> list[Row]:
    cluster = await _tail(a.url, [b.url, a.url], seconds)
    # the same load on the one-machine layout (SQLite + file://, fsync per group commit)
    one = await _tail(local.url, [local.url], seconds)
    on_b, on_a = cluster.latencies
    on_local = one.latencies[0]
    rows = []
    for where, got, t in (("B", on_b, cluster), ("A", on_a, cluster), ("local", on_local, one)):
        if len(got) != t.expected:
            rows.append(failed_row(SECTION, f"live tail, follower on {where}",
                                   f"{len(got)} of {t.expected} events delivered"))  # fmt: skip

    def load(t: Tail, where: str) -> str:
        return (f"{t.rate:.0f} batches/s of {TAIL_BATCH} events for {seconds:.0f} s through "
                f"{where}, open loop; POST p50 {_ms(t.posts, 0.5):.1f} ms, "
                f"p99 {_ms(t.posts, 0.99):.1f} ms")  # fmt: skip

    def spread(got: list[float]) -> str:
        return f"p50 {_ms(got, 0.5):.1f} ms, max {max(got, default=0) * 1000:.0f} ms"

    p99_b, p99_a, p99_l = _ms(on_b, 0.99), _ms(on_a, 0.99), _ms(on_local, 0.99)
    rows += [
        row(SECTION, "live tail, follower on another replica: p99 append-to-delivery", p99_b, "ms",
            "target 100 ms", ratio(p99_b, 100.0),
            f"{spread(on_b)}; {load(cluster, 'A')}; SSE on B (woken by Postgres NOTIFY, "
            "pulls the chunks); send time in the event, arrival at the client, one clock"),
        row(SECTION, "live tail, follower on the same replica: p99 append-to-delivery", p99_a,
            "ms", "another replica", ratio(p99_a, p99_b),
            f"{spread(on_a)}; the same run and events as the row above, at the same time"),
        row(SECTION, "live tail, one machine (SQLite + file://): p99 append-to-delivery", p99_l,
            "ms", "another replica", ratio(p99_l, p99_b),
            f"{spread(on_local)}; {load(one, 'the one server')}; right after, same load"),
    ]  # fmt: skip
    return rows


# ---------------------------------------------------------------------------- 2. ingest


@dataclass
class Round:
    label: str
    events: int
    wall: float
    cpu: dict[str, float] = field(default_factory=dict)
    wal_bytes: int | None = 0  # WAL records touching the bench database's relations
    wal_all: int = 0  # all WAL written meanwhile (every database of the server)
    machine_busy: float = 0.0  # fraction of all the machine's cores busy (anyone's work)

    @property
    def rate(self) -> float:
        return self.events / self.wall


async def _ingest_round(
    layout: str,
    replicas: list[Replica],
    bodies: list[list[bytes]],
    pg: Any,
    dsn: str,
    db: str,
) -> Round:
    """One round of ``len(bodies)`` producers; ``layout``: one | sticky | round-robin."""
    sessions = [client_session(rep.url) for rep in replicas]
    try:
        home = [0 if layout == "one" else i % len(replicas) for i in range(len(bodies))]
        paths = [await create_run(sessions[home[i]], "ingest") for i in range(len(bodies))]

        def target(i: int, k: int) -> int:
            if layout == "round-robin":
                return (home[i] + k) % len(replicas)
            return home[i]

        async def produce(i: int) -> None:
            for k, body in enumerate(bodies[i]):
                await post(sessions[target(i, k)], paths[i], body)

        before_pg = await pg_snapshot(pg, db)
        before = {rep.name: cpu_seconds(rep.pid) for rep in replicas}
        client0 = time.process_time()
        async with WalMeter(dsn, db) as wal:
            start = time.perf_counter()
            await asyncio.gather(*(produce(i) for i in range(len(bodies))))
            wall = time.perf_counter() - start
        client = time.process_time() - client0
        cpu = {rep.name: cpu_seconds(rep.pid) - before[rep.name] for rep in replicas}
        after_pg = await pg_snapshot(pg, db)
        cpu["postgres"] = pg_cpu(before_pg, after_pg)
        cpu["client"] = client
        # end the runs (not timed) so the next round starts with an empty live tier
        for i, path in enumerate(paths):
            await post(sessions[home[i]], path, COMPLETED)
    finally:
        for s in sessions:
            await s.close()
    events = sum(len(b) for b in bodies) * BATCH
    return Round(layout, events, wall, cpu, wal.ours, wal.all, busy(before_pg, after_pg))


async def _copy_round(dsn: str, pg: Any, db: str, producers: int, per: int) -> Round:
    """``producers`` concurrent COPY sessions (synchronous_commit=on) of the same events."""
    async with CopySessions(dsn, [100 + i for i in range(producers)], per) as copies:
        before_pg = await pg_snapshot(pg, db)
        client0 = time.process_time()
        async with WalMeter(dsn, db) as wal:
            wall = await copies.run()
        client = time.process_time() - client0
        after_pg = await pg_snapshot(pg, db)
    return Round("copy", copies.events, wall,
                 {"postgres": pg_cpu(before_pg, after_pg), "client": client},
                 wal.ours, wal.all, busy(before_pg, after_pg))  # fmt: skip


def _cpu_note(r: Round) -> str:
    per_m = 1e6 / r.events
    parts = [f"{name} {sec * per_m:.1f}" for name, sec in r.cpu.items()]
    ours = sum(r.cpu.values()) / r.wall
    cores = os.cpu_count() or 1
    # what the CPU would allow on an idle machine: all of it on the cores, and the busiest
    # process (one event loop: about one core) alone
    total = sum(r.cpu.values()) / r.events
    busiest, most = max(r.cpu.items(), key=lambda kv: kv[1])
    wal = "unknown"
    if r.wal_bytes is not None:
        wal = f"{r.wal_bytes / r.events:,.0f} B/event, {r.wal_bytes / r.wall / 1e6:.1f} MB/s"
    return (f"CPU s per 1M events: {', '.join(parts)}; these use {ours:.2f} cores, the "
            f"machine's {cores} cores were {r.machine_busy:.0%} busy (anyone's work); "
            f"CPU-bound ceilings: {cores / total:,.0f} events/s on {cores} idle cores, "
            f"{r.events / most:,.0f} events/s for {busiest} on one core; "
            f"WAL of the bench database {wal}; "
            f"server-wide {r.wal_all / r.wall / 1e6:.1f} MB/s")  # fmt: skip


async def _ingest(replicas: list[Replica], dsn: str, db: str, sizes: Sizes) -> list[Row]:
    import asyncpg

    layouts = ["one", "sticky"]
    if forwarding_available():
        layouts.append("round-robin")
    bodies = [batch_bodies(sizes.per_producer, seed=100 + i) for i in range(sizes.producers)]
    pg = await asyncpg.connect(dsn)
    await pg.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
    best: dict[str, Round] = {}
    try:
        for n in range(sizes.rounds):
            for layout in [*layouts, "copy"]:
                progress(f"ingest round {n + 1}/{sizes.rounds}: {layout}")
                if layout == "copy":
                    r = await _copy_round(dsn, pg, db, sizes.producers, sizes.per_producer)
                else:
                    r = await _ingest_round(layout, replicas, bodies, pg, dsn, db)
                progress(f"  {r.rate:,.0f} events/s; {_cpu_note(r)}")
                if layout not in best or r.rate > best[layout].rate:
                    best[layout] = r
    finally:
        await pg.close()
    copy = best["copy"].rate
    what = (f"{sizes.producers} producers x {sizes.per_producer:,} events, 1,000-event batches, "
            f"own external run each; best of {sizes.rounds}")  # fmt: skip
    one = best["one"]
    rows = [
        row(SECTION, "durable ingest through 1 replica (A)", one.rate, "events/s",
            "COPY, synchronous_commit=on", ratio(one.rate, copy), f"{what}; {_cpu_note(one)}"),
        row(SECTION, "durable ingest through 3 replicas, each producer sticks to one",
            best["sticky"].rate, "events/s", "through 1 replica",
            ratio(best["sticky"].rate, one.rate), _cpu_note(best["sticky"])),
    ]  # fmt: skip
    if "round-robin" in best:
        rr = best["round-robin"]
        rows.append(row(SECTION, "durable ingest through 3 replicas, round-robin batches",
                        rr.rate, "events/s", "through 1 replica", ratio(rr.rate, one.rate),
                        "each producer's batches to A, B, C in turn: 2 of 3 forwarded to the "
                        f"run's owner; {_cpu_note(rr)}"))  # fmt: skip
    else:
        rows.append(skipped_row(SECTION, "durable ingest through 3 replicas, round-robin batches",
                                "no forwarding in this code (issue 14: i14-forward)"))  # fmt: skip
    c = best["copy"]
    rows.append(row(SECTION, "Postgres COPY, synchronous_commit=on, same events", copy,
                    "events/s", note=f"{sizes.producers} sessions, 1,000-row transactions, "
                    f"jsonb rows; {_cpu_note(c)}"))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------- 3. reads


async def _wait_sealed(session: aiohttp.ClientSession, run_path: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(run_path) as r:
            r.raise_for_status()
            state = str((await r.json())["run"]["log_state"])
        if state != "live" or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.1)


async def _timed_read(url: str, run_path: str) -> tuple[float, float, int, str]:
    """(seconds to first body byte, seconds to the last, bytes, sha256) of one NDJSON read."""
    async with client_session(url) as session:
        digest = hashlib.sha256()
        size = 0
        start = time.perf_counter()
        first = float("nan")
        async with session.get(
            run_path + "/events", headers={"Accept": "application/x-ndjson"}
        ) as r:
            r.raise_for_status()
            async for data in r.content.iter_any():
                if size == 0:
                    first = time.perf_counter() - start
                size += len(data)
                digest.update(data)
        return first, time.perf_counter() - start, size, digest.hexdigest()


async def _write_run(url: str, cfg: str, bodies: list[bytes]) -> str:
    async with client_session(url) as session:
        path = await create_run(session, cfg)
        for body in bodies:
            await post(session, path, body)
        await post(session, path, COMPLETED)
        await _wait_sealed(session, path)
    return path


def _read_rows(label: str, reads: list[tuple[float, float, int, str]], events: int,
               base: tuple[float, float] | None, note: str) -> list[Row]:  # fmt: skip
    first = statistics.median(r[0] for r in reads) * 1000
    full = statistics.median(r[1] for r in reads)
    size = reads[0][2]
    vs = "local (file://, one process)" if base else None
    return [
        row(SECTION, f"ended run read from {label}: first byte", first, "ms", vs,
            ratio(first, base[0]) if base else None, note),
        row(SECTION, f"ended run read from {label}: full NDJSON read", events / full,
            "events/s", vs, ratio(events / full, base[1]) if base else None,
            f"{size / 1e6:.1f} MB in {full * 1000:.0f} ms ({size / 1e6 / full:.0f} MB/s)"),
    ]  # fmt: skip


def _files_of(data_dir: Path, run_id: str) -> list[Path]:
    """The files of a run in a replica's data dir (its local copy, if any)."""
    return [p for p in data_dir.rglob("*") if p.is_file() and run_id in str(p)]


async def _reads(
    writer: Replica, local: Replica, env: dict[str, str], tmp: Path, logs: Path, sizes: Sizes
) -> list[Row]:
    n = sizes.read_events
    bodies = batch_bodies(n, seed=7)
    progress(f"reads: writing an ended run of {n:,} events through A")
    path = await _write_run(writer.url, "read", bodies)
    run_id = path.rsplit("/", 1)[1]
    local_copy = [str(p.relative_to(writer.data_dir)) for p in _files_of(writer.data_dir, run_id)]
    # the one-machine layout: SQLite + file://, one process
    local_path = await _write_run(local.url, "read", bodies)
    local_reads = [await _timed_read(local.url, local_path) for _ in range(3)]
    base_first = statistics.median(r[0] for r in local_reads) * 1000
    base_full = n / statistics.median(r[1] for r in local_reads)
    progress("reads: a replica started now with an empty data dir")
    with start_replicas([("fresh", tmp / "fresh", env)], logs) as (fresh,):
        cold = await _timed_read(fresh.url, path)
        warm = [await _timed_read(fresh.url, path) for _ in range(3)]
        fresh_files = len(_files_of(fresh.data_dir, run_id))
    own = [await _timed_read(writer.url, path) for _ in range(3)]
    same = cold[3] == warm[0][3] == own[0][3]
    rows: list[Row] = []
    if not same:
        rows.append(failed_row(SECTION, "ended run read", "replicas sent different bytes"))
    base = (base_first, base_full)
    rows += _read_rows("a fresh replica (S3), its first request", [cold], n, base,
                       "process started after the run ended, empty data dir: the sealed log "
                       f"comes from S3; byte-identical to the writer's: {same}; "
                       f"files of the run in its data dir after: {fresh_files}")  # fmt: skip
    rows += _read_rows("a fresh replica (S3), later requests", warm, n, base,
                       "median of 3, same process")  # fmt: skip
    rows += _read_rows("the replica that wrote it", own, n, base,
                       f"median of 3; files of the run in its data dir after the seal: "
                       f"{local_copy or 'none'}")  # fmt: skip
    rows += _read_rows("local (file://, one process)", local_reads, n, None,
                       "runevents serve with SQLite + file:// (the one-machine layout), the same "
                       "events; median of 3")  # fmt: skip
    return rows


# ---------------------------------------------------------------------------- 4. tier size

_SIZE = "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(length(data)), 0) FROM live_chunks"


async def _tier(replicas: list[Replica], dsn: str, sizes: Sizes) -> list[Row]:
    import asyncpg

    pg = await asyncpg.connect(dsn)
    sampler_conn = await asyncpg.connect(dsn)
    bodies = batch_bodies(sizes.tier_events, seed=11)
    peak = (0, 0, 0)
    samples = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak, samples
        while not stop.is_set():
            got = [int(x) for x in await sampler_conn.fetchrow(_SIZE)]
            samples += 1
            if got[1] > peak[1]:
                peak = (got[0], got[1], got[2])
            await asyncio.sleep(0.25)

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(sizes.tier_runs):
        queue.put_nowait(i)
    chunks_at_ack: list[int] = []
    ended: list[str] = []
    pg_lock = asyncio.Lock()  # one asyncpg connection serves one query at a time

    async def producer(j: int) -> None:
        rep = replicas[j % len(replicas)]
        async with client_session(rep.url) as session:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                path = await create_run(session, "tier")
                for body in bodies:
                    await post(session, path, body)
                await post(session, path, COMPLETED)
                run_id = path.rsplit("/", 1)[1]
                async with pg_lock:
                    left = await pg.fetchval(
                        "SELECT count(*) FROM live_chunks WHERE run_id = $1", run_id
                    )
                chunks_at_ack.append(int(left))
                ended.append(run_id)
                if len(ended) % 10 == 0:
                    progress(f"tier: {len(ended)} of {sizes.tier_runs} runs ended")

    sampler: asyncio.Task[None] | None = None
    try:
        rel_before = int(await pg.fetchval("SELECT pg_total_relation_size('live_chunks')"))
        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        try:
            await asyncio.gather(*(producer(j) for j in range(sizes.tier_concurrency)))
        finally:
            stop.set()
        wall = time.perf_counter() - start
        # sealing may finish after the completion's answer: wait for the table to empty
        drain0 = time.perf_counter()
        while True:
            count, raw, stored = (int(x) for x in await pg.fetchrow(_SIZE))
            if count == 0 or time.perf_counter() - drain0 > 120:
                break
            await asyncio.sleep(0.1)
        drained = time.perf_counter() - drain0
        await sampler
        states = await pg.fetch(
            "SELECT log_state, count(*) AS n FROM runs WHERE id = ANY($1::text[]) "
            "GROUP BY log_state", ended
        )  # fmt: skip
        rel_after = int(await pg.fetchval("SELECT pg_total_relation_size('live_chunks')"))
    finally:
        stop.set()
        if sampler is not None and not sampler.done():
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        await sampler_conn.close()
        await pg.close()
    events = sizes.tier_runs * sizes.tier_events
    state_text = ", ".join(f"{r['log_state']}: {r['n']}" for r in states)
    with_chunks = sum(1 for c in chunks_at_ack if c)
    what = (f"{sizes.tier_runs} runs x {sizes.tier_events:,} events, {sizes.tier_concurrency} "
            f"at a time over {len(replicas)} replicas, {events / wall:,.0f} events/s")  # fmt: skip
    return [
        row(SECTION, "live tier at its peak, during the runs: log bytes held", peak[1] / 1e6,
            "MB", note=f"{what}; {peak[0]} chunks, {peak[2] / 1e6:.1f} MB stored (zstd); "
            f"{samples} samples of count(*), sum(size), sum(length(data)) FROM live_chunks"),
        row(SECTION, "live tier after all runs ended: log bytes held", raw / 1e6, "MB",
            note=f"{count} chunks, {stored} bytes stored: {raw / max(1, len(ended)):.0f} bytes "
            f"per ended run; runs' log_state: {state_text}; chunks left at the completion's "
            f"answer: {with_chunks} of {len(ended)} runs; empty {drained:.1f} s after the last; "
            f"pg_total_relation_size(live_chunks) {rel_before / 1e6:.1f} -> "
            f"{rel_after / 1e6:.1f} MB (dead tuples until vacuum)"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- collect


async def _collect(sizes: Sizes, tmp: Path) -> list[Row]:
    reason = await pg_unreachable_reason()
    if reason:
        return [skipped_row(SECTION, "several machines", reason)]
    from tests.fixtures.s3 import SeaweedUnavailable, seaweedfs_running

    logs = tmp / "logs"
    logs.mkdir()
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        try:
            s3 = stack.enter_context(seaweedfs_running())
        except SeaweedUnavailable as exc:
            return [skipped_row(SECTION, "several machines", str(exc))]
        async with scratch_pg_database("runevents_bench_cluster") as dsn:
            db = dsn.rsplit("/", 1)[1]
            env = cluster_env(dsn, s3, f"cluster-{os.getpid()}")
            # A first (it migrates the database), then B and C together, and the
            # one-machine server of the reads (SQLite + file://, idle until then)
            with (
                start_replicas([("A", tmp / "a", env)], logs) as (a,),
                start_replicas(
                    [
                        ("B", tmp / "b", env),
                        ("C", tmp / "c", env),
                        ("local", tmp / "local", base_env()),
                    ],
                    logs,
                ) as (b, c, local),
            ):
                for name, step in (
                    ("live tail", lambda: _live_tail(a, b, local, sizes.tail_seconds)),
                    ("ingest", lambda: _ingest([a, b, c], dsn, db, sizes)),
                    ("reads", lambda: _reads(a, local, env, tmp, logs, sizes)),
                    ("live tier size", lambda: _tier([a, b, c], dsn, sizes)),
                ):
                    progress(name)
                    t0 = time.perf_counter()
                    try:
                        rows += await step()
                    except Exception as exc:
                        rows.append(failed_row(SECTION, name, exc))
                    progress(f"{name}: {time.perf_counter() - t0:.1f} s")
    return rows


def collect(quick: bool) -> list[Row]:
    sizes = QUICK if quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="runevents-bench-cluster-") as tmp:
        try:
            rows = asyncio.run(_collect(sizes, Path(tmp)))
        except Exception as exc:
            rows = [failed_row(SECTION, "several machines", exc)]
    if not quick:
        machine = machine_description()
        machine["mode"] = "full"
        machine["command"] = "python bench/bench_cluster.py"
        machine["duration_s"] = time.perf_counter() - started
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "cluster.md").write_text(render_markdown(rows, machine))
    return rows


if __name__ == "__main__":
    main(collect)
