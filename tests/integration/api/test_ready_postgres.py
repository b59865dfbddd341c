"""Readiness flips when Postgres stops and comes back (issue 17).

A real server stopping is simulated by a TCP proxy in front of the test
Postgres: the app's pool and LISTEN connection go through it; "stopping"
closes the port and drops every connection (what the app sees when Postgres
shuts down), "starting" listens on the same port again.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from runevents.api.app import create_app
from runevents.app import App
from runevents.settings import Settings
from tests.fixtures.app import asgi_client
from tests.fixtures.services import PG_HOST, PG_PORT, PG_USER


class StoppablePostgres:
    """A loopback TCP proxy to the test Postgres that can be stopped and started."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _connect(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(PG_HOST, PG_PORT)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)


async def test_ready_follows_postgres_going_down_and_up(
    pg_database_url: str, tmp_path: Path
) -> None:
    proxy = StoppablePostgres()
    await proxy.start()
    name = pg_database_url.rsplit("/", 1)[1]
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"postgresql://{PG_USER}@127.0.0.1:{proxy.port}/{name}",
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        session_secret="test-session-secret-0123456789abcdef",
    )
    app = await App.open(settings)
    try:
        async with asgi_client(create_app(settings, app=app)) as http:
            assert (await http.get("/api/v1/ready")).status_code == 200

            await proxy.stop()
            down = await http.get("/api/v1/ready")
            assert down.status_code == 503, down.text
            checks = down.json()["error"]["checks"]
            assert checks["database"] != "ok" and checks["log_store"] == "ok"
            assert (await http.get("/api/v1/health")).status_code == 200

            await proxy.start()
            for _ in range(50):  # the pool reconnects on its next pre-ping
                if (await http.get("/api/v1/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("ready did not come back after Postgres did")
    finally:
        await app.close()
        await proxy.stop()
