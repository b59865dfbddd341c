"""Read-only helper routes of the run page (issue 19), beside the contract's event reads.

* ``GET {run}/outline``: the events the page folds the console and lists errors
  by (``runevents.outline``), paged like a search: ``{"events", "next_after_sequence",
  "has_more"}``.
* ``GET {run}/search/count``: how many console lines the search would match in the
  whole log: ``{"total", "scanned_to"}`` (the page adds live matches after ``scanned_to``).
* ``GET {run}/text``: the raw log as plain text (console messages, ANSI removed);
  ``?download=true`` makes it an attachment ``{run_id}.log``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from runevents.api.deps import ConfigurationId, Manager, Reader, RunId, WorkspaceId
from runevents.api.events import Position
from runevents.api.runs import RUN
from runevents.api.schemas import errors
from runevents.api.sse import close_quietly
from runevents.outline import console_text, count_matches, outline_events

router = APIRouter(prefix="/api/v1")


@router.get(RUN + "/outline", responses=errors(401, 403, 404, 410, 422, 503), tags=["events"])
async def read_outline(
    workspace_id: WorkspaceId,
    configuration_id: ConfigurationId,
    run_id: RunId,
    _who: Reader,
    manager: Manager,
    after_sequence: Position = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 5000,
) -> Response:
    """Phase and section markers, run.error, run.completed and error lines, in order."""
    run = await manager.open_events(workspace_id, configuration_id, run_id)
    chunks = manager.read_events(run, after_sequence)
    try:
        lines, next_after, has_more = await outline_events(
            chunks, after_sequence=after_sequence, limit=limit
        )
    finally:
        await close_quietly(chunks)
    body = b'{"events":[%s],"next_after_sequence":%d,"has_more":%s}' % (
        b",".join(lines),
        next_after,
        b"true" if has_more else b"false",
    )
    return Response(body, media_type="application/json")


@router.get(RUN + "/search/count", responses=errors(401, 403, 404, 410, 422, 503), tags=["events"])
async def search_count(
    workspace_id: WorkspaceId,
    configuration_id: ConfigurationId,
    run_id: RunId,
    _who: Reader,
    manager: Manager,
    q: Annotated[str | None, Query(max_length=1000)] = None,
    stream: Annotated[Literal["stdout", "stderr"] | None, Query()] = None,
    level: Annotated[Literal["debug", "info", "warning", "error"] | None, Query()] = None,
) -> dict[str, int]:
    """The number of console lines the search would match, over the whole log."""
    run = await manager.open_events(workspace_id, configuration_id, run_id)
    chunks = manager.read_events(run, 0)
    try:
        total, scanned_to = await count_matches(chunks, q=q or None, stream=stream, level=level)
    finally:
        await close_quietly(chunks)
    return {"total": total, "scanned_to": scanned_to}


@router.get(
    RUN + "/text",
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **errors(401, 403, 404, 410, 422, 503),
    },
    tags=["events"],
)
async def read_text(
    workspace_id: WorkspaceId,
    configuration_id: ConfigurationId,
    run_id: RunId,
    _who: Reader,
    manager: Manager,
    download: bool = False,
) -> Response:
    """The console output as plain text, as a raw log (what the log holds now)."""
    run = await manager.open_events(workspace_id, configuration_id, run_id)
    headers = {"X-Content-Type-Options": "nosniff"}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{run.id}.log"'

    async def body() -> AsyncIterator[bytes]:
        chunks = manager.read_events(run, 0)
        try:
            async for part in console_text(chunks):
                yield part
        finally:
            await close_quietly(chunks)

    return StreamingResponse(body(), media_type="text/plain; charset=utf-8", headers=headers)
