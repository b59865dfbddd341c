"""A database whose network drops packets: statements fail with 503, they never hang."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runevents.api.app import create_app
from runevents.app import App
from runevents.exceptions import DatabaseError
from runevents.settings import Settings
from tests.fixtures.app import asgi_client
from tests.fixtures.tcpproxy import TcpProxy, proxied

pytestmark = pytest.mark.postgres

TIMEOUT = 2.0


async def test_creating_a_run_while_the_database_drops_packets_is_503_not_a_hang(
    pg_database_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    """With Postgres behind a black hole (connections open, no bytes through), creating
    a run waited 70-150 s and more on a pooled connection, with no answer, and the run
    appeared once the network came back. A statement now fails after
    ``database_timeout_seconds``: 503 with the JSON error."""
    url = proxied(pg_database_url, pg_proxy)
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        repair_interval_seconds=0,
        database_timeout_seconds=TIMEOUT,
    )
    app = await App.open(settings, worker=False)
    try:
        await app.manager.create_run("acme", "ext", external=True)  # the pool is warm
        pg_proxy.hang()
        started = time.monotonic()
        with pytest.raises(DatabaseError):
            await app.manager.create_run("acme", "ext", external=True)
        assert time.monotonic() - started < 4 * TIMEOUT + 10  # (+ a new connection's 10 s)
        async with asgi_client(create_app(settings, app=app)) as client:
            started = time.monotonic()
            answer = await client.post(
                "/api/v1/workspaces/acme/configurations/ext/runs", json={"external": True}
            )
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == DatabaseError.code
            assert time.monotonic() - started < 4 * TIMEOUT + 10
    finally:
        pg_proxy.resume()
        await app.close()
