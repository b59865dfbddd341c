"""Operations (contract section 13, issue 17): /metrics after a scripted scenario, readiness,
X-Request-ID, and the admin token on /metrics.

The scenario runs against a real uvicorn (an SSE follower needs a real server)
on SQLite and on Postgres: ingest, a failing write through the OS seam, a live
follower, a completed and a reaped run, a compaction; then the scrape must show
each number moved by what happened, no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import httpx
import pytest

from runevents import maintenance
from runevents.api.app import create_app
from runevents.app import App
from runevents.auth import TokenRegistry
from runevents.db.engine import create_engine
from runevents.eventlog.files import DEFAULT_OPS, FileOps
from runevents.metered import MeteredFileOps
from runevents.models import RunStatus, utcnow
from runevents.settings import Settings
from tests.fixtures.app import asgi_client, bearer, serve
from tests.fixtures.metrics import Samples, parse, value
from tests.integration.api.helpers import COMPLETED, console, create_external, ingest, run_path


class FullDisk(FileOps):
    """The disk is full: every write fails."""

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
async def ops_app(api_settings: Settings) -> AsyncIterator[App]:
    """No embedded worker (the reaped run must stay unclaimed), fsync on every flush,
    and the database gauges recounted on every scrape."""
    settings = api_settings.model_copy(
        update={"worker_concurrency": 0, "fsync": "flush", "metrics_refresh_seconds": 0}
    )
    app = await App.open(settings)
    try:
        yield app
    finally:
        await app.close()


async def scrape(http: httpx.AsyncClient, **kw: object) -> Samples:
    response = await http.get("/metrics", **kw)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


async def test_scenario_moves_every_number_it_should(ops_app: App) -> None:
    async with (
        serve(create_app(ops_app.settings, app=ops_app)) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as http,
    ):
        before = await scrape(http)

        # -- ingest: two good batches, one bad
        run = await create_external(http)
        for n in range(2):
            response = await ingest(http, run, *(console(f"line {n}.{i}") for i in range(3)))
            assert response.status_code == 200, response.text
        assert (await ingest(http, run, {"payload": {}})).status_code == 422

        # -- a live follower
        async with http.stream("GET", run_path(run) + "/events?stream=true") as stream:
            chunks = stream.aiter_bytes()
            assert (await anext(chunks)).startswith(b"retry:")
            during = await scrape(http)

            # -- a failing write: the disk fills under the writer (the OS seam), then recovers
            file_ops = ops_app.manager.log.file_ops
            assert isinstance(file_ops, MeteredFileOps)
            file_ops.inner = FullDisk()
            try:
                response = await ingest(http, run, console("refused"))
                # a 200 means durable: a batch the disk refused is 503 and not stored
                assert response.status_code == 503, response.text
            finally:
                file_ops.inner = DEFAULT_OPS
            degraded = await scrape(http)

            # -- completed: the follower's stream ends with the run
            assert (await ingest(http, run, COMPLETED)).status_code == 200
            async with asyncio.timeout(15):
                async for _ in chunks:
                    pass
        await _wait_row(ops_app, run["id"], RunStatus.SUCCEEDED)

        # -- reaped: claimed by a worker that died (its lease runs out, nobody holds the log)
        lost = await ops_app.manager.create_run("acme", "hello")
        assert await ops_app.manager.repo.claim_queued("ghost-worker", 0.05) is not None
        await ops_app.manager.repo.update_run(
            lost.id, status=RunStatus.RUNNING, started_at=utcnow()
        )
        await asyncio.sleep(0.1)
        reaped = await ops_app.manager.reap_expired_leases()
        assert [r.id for r in reaped] in ([lost.id], [])  # [] if the app's own reaper was first
        await _wait_row(ops_app, lost.id, RunStatus.FAILED)

        # -- a compaction of both ended runs
        report = await maintenance.compact(ops_app.manager, timedelta(0))
        assert report.runs == 2 and not report.errors

        after = await scrape(http)
        after_follower = await scrape(http)

    def moved(samples: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    # ingest: 3 + 3 + run.completed; the refused batches (422, 503) append nothing
    assert moved(after, "runevents_events_appended_total", source="ingest") == 7
    # run.queued of both runs, and the reaped run's run.completed
    assert moved(after, "runevents_events_appended_total", source="server") == 3
    assert moved(after, "runevents_ingest_batches_total", outcome="200") == 3
    assert moved(after, "runevents_ingest_batches_total", outcome="422") == 1
    assert moved(after, "runevents_ingest_batches_total", outcome="503") == 1
    assert moved(after, "runevents_ingest_seconds_count") == 5
    assert moved(after, "runevents_bytes_appended_total") > 0
    # fsync=flush: every acknowledged batch that was written was fsynced
    assert moved(after, "runevents_fsync_seconds_count") >= 4
    # the follower
    assert moved(during, "runevents_sse_followers") == 1
    assert moved(after_follower, "runevents_sse_followers") == 0
    assert moved(after, "runevents_notify_wakeups_total", origin="local") > 0
    # the failing write; the refused batch lost nothing, so the row is not degraded
    # (logging_degraded is for an executor's lines, which are buffered and retried)
    assert moved(degraded, "runevents_write_failures_total", operation="write") >= 1
    assert value(degraded, "runevents_runs_degraded", status="running") == 0
    # completed and reaped runs
    assert moved(after, "runevents_runs_completed_total", status="succeeded") == 1
    assert moved(after, "runevents_runs_completed_total", status="failed") == 1
    assert moved(after, "runevents_runs_reaped_total") == 1
    assert moved(after, "runevents_run_duration_seconds_count", status="succeeded") == 1
    # the row gauges count this test's database: exactly its two runs
    assert value(after, "runevents_runs", status="succeeded") == 1
    assert value(after, "runevents_runs", status="failed") == 1
    assert value(after, "runevents_runs", status="running") == 0
    assert value(during, "runevents_runs", status="running") == 1
    assert value(after, "runevents_queue_oldest_age_seconds") == 0
    # the compaction, and the log store operations it made
    assert moved(after, "runevents_maintenance_runs_total", action="compact") == 2
    assert moved(after, "runevents_maintenance_bytes_in_total", action="compact") > 0
    assert moved(after, "runevents_maintenance_bytes_out_total", action="compact") > 0
    assert moved(after, "runevents_maintenance_errors_total", action="compact") == 0
    # (the local store compacts in place; dropping the plain logs goes through the store)
    assert (
        moved(after, "runevents_logstore_request_seconds_count", backend="file", operation="delete")
        >= 2
    )
    assert value(after, "runevents_db_pool_connections", state="idle") >= 1


async def _wait_row(app: App, run_id: str, status: RunStatus) -> None:
    # the row is finished just after the run.completed event is visible
    for _ in range(200):
        if (await app.manager.repo.get_run(run_id)).status is status:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"run {run_id} did not become {status.value}")


async def test_queue_age_counts_the_oldest_queued_run(ops_app: App) -> None:
    await ops_app.manager.create_run("acme", "hello")
    await asyncio.sleep(0.3)
    async with asgi_client(create_app(ops_app.settings, app=ops_app)) as http:
        samples = await scrape(http)
    assert value(samples, "runevents_runs", status="queued") == 1
    assert value(samples, "runevents_queue_oldest_age_seconds") >= 0.3


async def test_metrics_need_an_admin_token_when_tokens_are_configured(
    api_settings: Settings, runevents_app: App, token_registry: TokenRegistry
) -> None:
    async with asgi_client(
        create_app(api_settings, app=runevents_app, tokens=token_registry)
    ) as http:
        assert (await http.get("/metrics")).status_code == 401
        refused = await http.get("/metrics", headers=bearer("tok-write"))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        samples = await scrape(http, headers=bearer("tok-admin"))
        assert ("runevents_runs", frozenset({("status", "queued")})) in samples
        # readiness, like health, is for load balancers: no token
        assert (await http.get("/api/v1/ready")).status_code == 200


async def test_metrics_switched_off_answer_404(api_settings: Settings, runevents_app: App) -> None:
    settings = api_settings.model_copy(update={"metrics_enabled": False})
    async with asgi_client(create_app(settings, app=runevents_app)) as http:
        response = await http.get("/metrics")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_ready_flips_to_503_when_the_database_is_unreachable(
    client: httpx.AsyncClient, runevents_app: App
) -> None:
    ok = await client.get("/api/v1/ready")
    assert ok.status_code == 200
    assert ok.json() == {"status": "ready", "checks": {"database": "ok", "log_store": "ok"}}

    # a Postgres nobody listens on (a closed port): what a stopped database looks like
    with _closed_port() as port:
        down = create_engine(f"postgresql://runevents@127.0.0.1:{port}/runevents")
        real, runevents_app.database = runevents_app.database, down
        try:
            response = await client.get("/api/v1/ready")
            health = await client.get("/api/v1/health")
        finally:
            runevents_app.database = real
            await down.close()
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "not_ready"
    assert error["checks"]["log_store"] == "ok"
    assert error["checks"]["database"].startswith("the database failed")
    assert error["request_id"] == response.headers["x-request-id"]
    assert health.status_code == 200  # alive, just not ready

    assert (await client.get("/api/v1/ready")).status_code == 200  # and back


async def test_ready_is_503_when_the_log_directory_is_gone(
    client: httpx.AsyncClient, runevents_app: App, api_settings: Settings
) -> None:
    data = api_settings.data_dir
    moved = data.with_name("data-unmounted")
    data.rename(moved)
    try:
        response = await client.get("/api/v1/ready")
    finally:
        moved.rename(data)
    assert response.status_code == 503
    assert response.json()["error"]["checks"]["log_store"].startswith("the log store failed")


@contextlib.contextmanager
def _closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    yield port  # bound then released: nothing listens there


async def test_request_id_is_echoed_generated_and_in_error_bodies(
    client: httpx.AsyncClient,
) -> None:
    given = await client.get("/api/v1/health", headers={"X-Request-ID": "lb-1234.abc"})
    assert given.headers["x-request-id"] == "lb-1234.abc"
    made = await client.get("/api/v1/health")
    assert len(made.headers["x-request-id"]) == 32
    # an id that would not be safe in a log line or a header is replaced
    hostile = await client.get("/api/v1/health", headers={"X-Request-ID": "a b\tc"})
    assert hostile.headers["x-request-id"] != "a b\tc"

    missing = await client.get(
        "/api/v1/workspaces/acme/configurations/ext/runs/run_01HZZZZZZZZZZZZZZZZZZZZZZZ",
        headers={"X-Request-ID": "trace-42"},
    )
    assert missing.status_code == 404
    error = missing.json()["error"]
    # the pinned fields stay, the id is one more
    assert error["code"] == "run_not_found" and error["message"]
    assert error["request_id"] == "trace-42" == missing.headers["x-request-id"]


async def test_oversized_ingest_is_counted_as_413_with_a_request_id(
    client: httpx.AsyncClient, api_settings: Settings
) -> None:
    run = await create_external(client)
    before = parse((await client.get("/metrics")).text)
    body = b'{"type": "console.line"}\n' * (api_settings.max_batch_bytes // 20)
    response = await client.post(
        run_path(run) + "/events",
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 413
    assert json.loads(response.text)["error"]["request_id"] == response.headers["x-request-id"]
    after = parse((await client.get("/metrics")).text)
    name = "runevents_ingest_batches_total"
    assert value(after, name, outcome="413") - value(before, name, outcome="413") == 1


async def test_long_poll_waiters_are_counted_while_they_wait(ops_app: App) -> None:
    async with (
        serve(create_app(ops_app.settings, app=ops_app)) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as http,
    ):
        run = await create_external(http)
        waiting = asyncio.create_task(http.get(run_path(run) + "/events?after_sequence=1&wait=5"))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if value(await scrape(http), "runevents_longpoll_waiters") == 1:
                break
        assert value(await scrape(http), "runevents_longpoll_waiters") == 1
        assert (await ingest(http, run, console("wake"))).status_code == 200
        answer = await waiting
        assert answer.status_code == 200 and answer.json()["events"]
        assert value(await scrape(http), "runevents_longpoll_waiters") == 0
