"""Postgres LISTEN/NOTIFY bridge for the live-notification seam.

With several processes on one Postgres database (an API server and standalone
workers, or several API replicas), a run's writer and its SSE readers live in
different processes. Readers already poll the log every ``poll_interval_ms``;
this bridge makes them wake at once instead: every local ``notify(run_id)`` is
sent as ``NOTIFY runevents_log, '<run ids>'`` and every notification received
wakes that run's local waiters. The payload is only run ids -- the log stays
the only data path, so a lost notification costs latency, never events.

Notifies are coalesced: a writer flushing 20 times a second for a run sends at
most one NOTIFY per run per ``COALESCE_SECONDS``, batched into few statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from runevents import metrics

log = logging.getLogger(__name__)

CHANNEL = "runevents_log"
#: how long local notifies are gathered before one NOTIFY goes out (seconds)
COALESCE_SECONDS = 0.01
#: Postgres caps a NOTIFY payload at 8000 bytes; stay well below
MAX_PAYLOAD = 7000
#: wait before reconnecting a lost LISTEN connection (seconds)
RECONNECT_SECONDS = 1.0


def asyncpg_dsn(url: str) -> str | None:
    """The asyncpg DSN for a Postgres database URL, or None for other databases."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in {"postgresql", "postgres"}:
        return None
    return f"postgresql://{rest}"


class PostgresBridge:
    """Sends local notifies to other processes and wakes local waiters for theirs."""

    def __init__(self, dsn: str, wake: Callable[[str], None]) -> None:
        self.dsn = dsn
        self._wake = wake
        self._pending: set[str] = set()
        self._sending: set[asyncio.Future[None]] = set()
        self._send_lock = asyncio.Lock()
        self._flush_scheduled = False
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._connected = asyncio.Event()

    async def start(self) -> None:
        """Connect and LISTEN; keep reconnecting in the background if the link drops."""
        self._task = asyncio.create_task(self._keep_listening(), name="pg notify bridge")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 5.0)

    async def _keep_listening(self) -> None:
        while not self._closed.is_set():
            try:
                conn = await asyncpg.connect(self.dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notification)
                self._conn = conn
                self._connected.set()
                closed = asyncio.create_task(self._closed.wait())
                dropped = asyncio.create_task(lost.wait())
                await asyncio.wait({closed, dropped}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                dropped.cancel()
            except (OSError, asyncpg.PostgresError) as exc:
                # readers still poll the log, so a broken bridge only costs latency
                log.warning("LISTEN/NOTIFY bridge unavailable (%s); retrying", exc)
            finally:
                conn_, self._conn = self._conn, None
                self._connected.clear()
                if conn_ is not None:
                    with contextlib.suppress(Exception):
                        await conn_.close(timeout=2)
            if not self._closed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), RECONNECT_SECONDS)

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        run_ids = [run_id for run_id in payload.split(",") if run_id]
        metrics.notify_wakeup("postgres", len(run_ids))
        for run_id in run_ids:
            self._wake(run_id)

    def publish(self, run_id: str) -> None:
        """Queue ``run_id`` for the next coalesced NOTIFY (called on every local notify)."""
        if self._closed.is_set():
            return
        self._pending.add(run_id)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(COALESCE_SECONDS, self._schedule_send)

    def _schedule_send(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            task = asyncio.ensure_future(self._send())
            # keep a reference until done: the loop holds tasks only weakly
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self) -> None:
        # One NOTIFY at a time on the connection: asyncpg refuses a second operation
        # while one is in progress, and the overlapping one was dropped (durability
        # issue, defect 12). A send that waited here takes everything pending by then.
        async with self._send_lock:
            await self._send_pending()

    async def _send_pending(self) -> None:
        if not self._pending:
            return
        ids, self._pending = sorted(self._pending), set()
        conn = self._conn
        if conn is None:
            return
        batches: list[str] = []
        current = ""
        for run_id in ids:
            if current and len(current) + len(run_id) + 1 > MAX_PAYLOAD:
                batches.append(current)
                current = ""
            current = f"{current},{run_id}" if current else run_id
        if current:
            batches.append(current)
        try:
            for payload in batches:
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.debug("NOTIFY failed (%s); readers fall back to polling", exc)

    async def close(self) -> None:
        """Stop listening and close the connection."""
        self._closed.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
