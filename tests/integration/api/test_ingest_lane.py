"""A batch the ingest fast lane declines still gets FastAPI's exact answer (api/ingest_route.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from runevents.api import events as events_routes
from runevents.api.app import create_app
from runevents.app import App
from runevents.settings import Settings
from tests.fixtures.app import asgi_client
from tests.integration.api.helpers import (
    NDJSON,
    console,
    create_external,
    ingest,
    ndjson,
    run_path,
)

RUN = "run_01M971R2QHWMGKVAH0MGJA1X7H"


async def test_a_declined_request_gets_fastapis_answer(client: httpx.AsyncClient) -> None:
    # too long a key: the lane declines, FastAPI's header validation answers 422
    response = await client.post(
        f"/api/v1/workspaces/ws/configurations/cfg/runs/{RUN}/events",
        content=b'{"type": "x"}\n',
        headers={"Content-Type": "application/x-ndjson", "Idempotency-Key": "k" * 201},
    )
    assert response.status_code == 422
    body = response.json()
    assert body["error"]["code"] == "invalid_input"
    assert "Idempotency-Key" in body["error"]["message"]


async def test_a_plain_batch_takes_the_lane_with_the_declared_answer(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The declared endpoint (api/events.py) reaches serve_batch through its own
    # module's name: counting calls there tells FastAPI's path from the lane's.
    declared: list[str] = []
    served = events_routes.serve_batch

    async def counting(request: Any, *args: Any) -> Any:
        declared.append(request.url.path)
        return await served(request, *args)

    monkeypatch.setattr(events_routes, "serve_batch", counting)
    run = await create_external(client)
    response = await ingest(client, run, console("a"), console("b"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"first_sequence": 2, "last_sequence": 3}
    assert declared == []  # served by the lane
    # the same batch with a bad key goes to FastAPI, which refuses it
    bad = await client.post(
        run_path(run) + "/events",
        content=b'{"type": "console.line", "payload": {}}\n',
        headers={**NDJSON, "Idempotency-Key": ""},
    )
    assert bad.status_code == 422
    assert declared == []  # FastAPI refused it before the endpoint ran


async def test_ingest_memory_had_no_overall_bound(
    api_settings: Settings, runevents_app: App
) -> None:
    # Defect (outside probe): every batch was bounded, but not how many were read and
    # decoded at once: 30 producers with 16 MiB batches took a server to 3.2 GB. A batch
    # now reserves its Content-Length in a budget first; when the budget is spent it
    # waits (its body left in the socket), then gets an honest 503 with Retry-After
    settings = api_settings.model_copy(
        update={"max_inflight_batch_bytes": 64 * 1024, "inflight_wait_seconds": 0.3}
    )
    asgi = create_app(settings, app=runevents_app)
    async with asgi_client(asgi) as client:
        run = await create_external(client)
        url = run_path(run) + "/events"
        body = ndjson(*(console("x" * 500) for _ in range(100)))  # ~60 KiB
        assert 48 * 1024 < len(body) <= 64 * 1024
        release = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            yield body[:100]
            await release.wait()  # the first batch holds the budget while it is read
            yield body[100:]

        headers = {**NDJSON, "Content-Length": str(len(body))}
        first = asyncio.create_task(client.post(url, content=slow_body(), headers=headers))
        await asyncio.sleep(0.05)
        refused = await client.post(url, content=body, headers=NDJSON)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        # a batch that waits for room gets it as soon as the first one is answered
        waiting = asyncio.create_task(client.post(url, content=body, headers=NDJSON))
        await asyncio.sleep(0.05)
        release.set()
        assert (await first).status_code == 200
        assert (await waiting).status_code == 200
        assert asgi.state.api.ingest_budget.used == 0
        page = (await client.get(url, params={"limit": 1000})).json()
        assert len(page["events"]) == 1 + 200  # run.queued + two batches: nothing of the 503


async def test_a_batch_larger_than_the_whole_budget_runs_alone(
    api_settings: Settings, runevents_app: App
) -> None:
    settings = api_settings.model_copy(update={"max_inflight_batch_bytes": 4096})
    asgi = create_app(settings, app=runevents_app)
    async with asgi_client(asgi) as client:
        run = await create_external(client)
        body = ndjson(*(console("y" * 200) for _ in range(100)))
        assert len(body) > 4096
        response = await client.post(run_path(run) + "/events", content=body, headers=NDJSON)
        assert response.status_code == 200, response.text


async def test_a_keyed_replay_answer_had_other_bytes_on_postgres(client: httpx.AsyncClient) -> None:
    # Defect (outside probe): Postgres' jsonb stores keys sorted by length, so a keyed
    # retry's answer came back {"last_sequence":..,"first_sequence":..}: the same
    # values, other bytes (contract 6: a retry returns the same answer)
    run = await create_external(client)
    headers = {**NDJSON, "Idempotency-Key": "replay-bytes"}
    body = ndjson(console("one"), console("two"))
    first = await client.post(run_path(run) + "/events", content=body, headers=headers)
    again = await client.post(run_path(run) + "/events", content=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
