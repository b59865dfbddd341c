"""The machinery of ``bench_cluster.py``: replica processes, HTTP helpers, probes.

Each replica is a ``runevents serve`` process in its own process group with its
own data dir; :func:`cluster_env` gives the several-machines layout (Postgres +
S3, so ``live_tier=auto`` is on), :func:`base_env` the one-machine one (SQLite +
``file://``). The probes read what a round cost: CPU seconds per process
(``/proc/<pid>/stat``), the whole machine's busy share (``/proc/stat``), the
bench database's Postgres backends, and its WAL (:class:`WalMeter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from common import free_port, start_server, stop_servers, wait_server

NDJSON = {"Content-Type": "application/x-ndjson"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
COMPLETED = b'{"type":"run.completed","payload":{"status":"succeeded"}}\n'


def progress(message: str) -> None:
    print(f"[bench_cluster] {message}", file=sys.stderr, flush=True)


def forwarding_available() -> bool:
    """Whether this code forwards a batch to the replica holding the run (issue 14)."""
    from runevents.settings import Settings

    return "advertise_url" in Settings.model_fields


@dataclass
class Replica:
    """One ``runevents serve`` process in its own process group."""

    name: str
    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_servers([self.proc])
        # the logs go with the temporary directory: show a server's errors before that
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if "Traceback" in text or "ERROR" in text:
            progress(f"replica {self.name} logged errors:\n{text[-6000:]}")


def spawn(name: str, data_dir: Path, env: dict[str, str], logs: Path) -> Replica:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    argv = [
        sys.executable, "-m", "runevents", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data_dir), "--workers", "0", "--log-level", "warning",
    ]  # fmt: skip
    env = dict(env)
    env["RUNEVENTS_ADVERTISE_URL"] = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = start_server(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Replica(name, f"http://127.0.0.1:{port}", data_dir, proc, log_path)


def wait_healthy(replicas: list[Replica], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    for rep in replicas:

        def failure(rep: Replica = rep) -> str:
            tail = rep.log_path.read_text(errors="replace")[-1500:]
            return f"replica {rep.name} did not start: ...{tail}"

        wait_server(rep.url, rep.proc, deadline, failure)


@contextlib.contextmanager
def start_replicas(
    specs: list[tuple[str, Path, dict[str, str]]], logs: Path
) -> Iterator[list[Replica]]:
    """Start every server of ``specs`` (name, data dir, environment) at once; stop them after."""
    started: list[Replica] = []
    try:
        for name, data_dir, env in specs:
            started.append(spawn(name, data_dir, env, logs))
        wait_healthy(started)
        yield started
    finally:
        for rep in started:
            rep.stop()


def base_env() -> dict[str, str]:
    # the servers get only our settings (nothing from the caller's RUNEVENTS_*)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNEVENTS_", "AWS_"))}
    env["RUNEVENTS_MAINTENANCE_INTERVAL_SECONDS"] = "0"
    env["RUNEVENTS_WORKER_CONCURRENCY"] = "0"
    env["RUNEVENTS_METRICS_ENABLED"] = "true"
    return env


def cluster_env(dsn: str, s3: Any, prefix: str) -> dict[str, str]:
    env = base_env()
    env["RUNEVENTS_DATABASE_URL"] = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    env["RUNEVENTS_STORAGE_URL"] = s3.url(prefix)
    env["RUNEVENTS_LIVE_TIER"] = "auto"
    env["AWS_ENDPOINT_URL"] = s3.endpoint_url
    env["AWS_ACCESS_KEY_ID"] = s3.access_key_id
    env["AWS_SECRET_ACCESS_KEY"] = s3.secret_access_key
    env["AWS_REGION"] = s3.region
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def client_session(url: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        url,
        timeout=aiohttp.ClientTimeout(total=None, sock_read=300),
        connector=aiohttp.TCPConnector(limit=64),
    )


async def post(session: aiohttp.ClientSession, run_path: str, body: bytes) -> None:
    for attempt in range(20):
        async with session.post(run_path + "/events", data=body, headers=NDJSON) as r:
            if r.status == 503 and attempt < 19:  # contract 10: retry after Retry-After
                await r.read()
                await asyncio.sleep(min(2.0, float(r.headers.get("Retry-After", "1"))))
                continue
            if r.status >= 400:
                raise RuntimeError(f"POST {run_path}/events: {r.status} {await r.text()}")
            await r.read()
            return


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def pg_snapshot(conn: Any, db: str) -> dict[str, Any]:
    pids = [r["pid"] for r in await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", db
    )]  # fmt: skip
    return {
        "machine": machine_busy(),
        "cpu": {pid: cpu_seconds(pid) for pid in pids},
    }


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / CLK_TCK, sum(fields) / CLK_TCK


def pg_cpu(before: dict[str, Any], after: dict[str, Any]) -> float:
    # a backend that appeared meanwhile started from 0; one gone meanwhile is lost (rare:
    # the replicas keep their pools)
    return sum(cpu - before["cpu"].get(pid, 0.0) for pid, cpu in after["cpu"].items())


class WalMeter:
    """WAL bytes of the bench database's relations, and all WAL bytes, over a block.

    The Postgres server is shared, so ``pg_walinspect`` picks our records out of the
    stream (commit records carry no relation and are left out: some 40 bytes a
    transaction). It reads the WAL every second as it is written: a range read only at
    the end may already be recycled by a checkpoint.
    """

    def __init__(self, dsn: str, db: str) -> None:
        self.dsn, self.db = dsn, db
        self.ours: int | None = 0  # None: part of the range could not be read
        self.all = 0
        self._stop = asyncio.Event()

    async def __aenter__(self) -> WalMeter:
        import asyncpg

        self._conn = await asyncpg.connect(self.dsn)
        oid = await self._conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", self.db)
        self._pattern = f"%rel %/{oid}/%"
        self._start = self._last = await self._lsn()
        self._task = asyncio.create_task(self._loop())
        return self

    async def _lsn(self) -> str:
        return str(await self._conn.fetchval("SELECT pg_current_wal_flush_lsn()::text"))

    async def _step(self) -> None:
        now = await self._lsn()
        if now == self._last:
            return
        if self.ours is not None:
            try:
                got = await self._conn.fetchval(
                    "SELECT coalesce(sum(record_length), 0)"
                    " FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)"
                    " WHERE block_ref LIKE $3",
                    self._last, now, self._pattern,
                )  # fmt: skip
                self.ours += int(got)
            except Exception as exc:  # recycled meanwhile: say unknown, never a wrong sum
                progress(f"WAL of the bench database unknown: {exc}")
                self.ours = None
        self._last = now

    async def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)
            await self._step()

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            await self._task
            self.all = int(
                await self._conn.fetchval(
                    "SELECT $2::text::pg_lsn - $1::text::pg_lsn", self._start, self._last
                )
            )
        finally:
            await self._conn.close()


def busy(before: dict[str, Any], after: dict[str, Any]) -> float:
    busy = after["machine"][0] - before["machine"][0]
    total = after["machine"][1] - before["machine"][1]
    return busy / total if total else float("nan")
