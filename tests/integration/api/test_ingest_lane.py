"""A batch the ingest fast lane declines still gets FastAPI's exact answer (api/ingest_route.py)."""

from __future__ import annotations

import httpx

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
