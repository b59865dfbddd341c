"""A batch the ingest fast lane declines still gets FastAPI's exact answer (api/ingest_route.py)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from runevents.api import events as events_routes
from tests.integration.api.helpers import NDJSON, console, create_external, ingest, run_path

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
