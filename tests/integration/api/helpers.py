"""Small helpers shared by the API integration tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

NDJSON = {"Content-Type": "application/x-ndjson"}


def run_path(run: dict[str, Any]) -> str:
    """``{run}`` of a run object."""
    return (
        f"/api/v1/workspaces/{run['workspace_id']}/configurations/"
        f"{run['configuration_id']}/runs/{run['id']}"
    )


def ndjson(*events: dict[str, Any]) -> bytes:
    """An NDJSON body."""
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def console(message: str, stream: str = "stdout", level: str = "info") -> dict[str, Any]:
    """A producer's console.line event."""
    return {
        "type": "console.line",
        "payload": {"scope": "run", "stream": stream, "level": level, "message": message},
    }


COMPLETED = {"type": "run.completed", "payload": {"status": "succeeded"}}


async def create_external(
    client: httpx.AsyncClient, ws: str = "acme", cfg: str = "ext", **kw: Any
) -> dict[str, Any]:
    """Create an external run; returns the run object."""
    response = await client.post(
        f"/api/v1/workspaces/{ws}/configurations/{cfg}/runs", json={"external": True}, **kw
    )
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()["run"]
    return run


async def ingest(
    client: httpx.AsyncClient, run: dict[str, Any], *events: dict[str, Any], **kw: Any
) -> httpx.Response:
    """POST a batch of events to a run."""
    headers = {**NDJSON, **kw.pop("headers", {})}
    return await client.post(
        run_path(run) + "/events", content=ndjson(*events), headers=headers, **kw
    )


async def wait_ended(
    client: httpx.AsyncClient, run: dict[str, Any], timeout: float = 30
) -> dict[str, Any]:
    """Poll ``GET {run}`` until the run ended; returns the answer."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body: dict[str, Any] = (await client.get(run_path(run))).json()
        if body["run"]["status"] in {"succeeded", "failed", "cancelled"}:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"run did not end: {body['run']['status']}")
        await asyncio.sleep(0.05)


def sse_events(body: bytes) -> list[dict[str, str]]:
    """Dispatched events of an SSE body (spec parsing: lines end at CRLF, LF or CR)."""
    text = body.decode()
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    data: list[str] = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if raw == "":
            if data:
                current["data"] = "\n".join(data)
                events.append(current)
            current, data = {}, []
            continue
        if raw.startswith(":"):
            continue
        name, _, value = raw.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        else:
            current[name] = value
    return events
