"""Run routes: create, list, get, cancel; configurations, workspaces, health.

``{run}`` is ``/api/v1/workspaces/{workspace_id}/configurations/{configuration_id}/runs/{run_id}``.
Create (201), get and cancel (202) all answer the same shape,
``{"run": {...}, "summary": {...} | null}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import WithJsonSchema

from runevents.api import schemas
from runevents.api.deps import (
    NAME_PATTERN,
    Caller,
    ConfigurationId,
    Manager,
    Reader,
    RunId,
    State,
    Timestamp,
    WorkspaceId,
    Writer,
)
from runevents.api.schemas import errors
from runevents.api.sse import sse_response
from runevents.exceptions import UnsupportedMediaType
from runevents.models import Run, RunQuery, RunStatus

router = APIRouter(prefix="/api/v1")

WS = "/workspaces/{workspace_id}"
RUNS = WS + "/configurations/{configuration_id}/runs"
RUN = RUNS + "/{run_id}"


def run_body(run: Run) -> dict[str, Any]:
    """The JSON of a run answer."""
    return {"run": run.to_dict(), "summary": run.summary}


async def require_json(request: Request) -> None:
    """415 for a body sent with a content type other than JSON (no content type is fine)."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(f"send the body as application/json, not {media or '?'}")


@router.get("/health", response_model=schemas.Health, tags=["meta"])
async def health() -> dict[str, str]:
    """Liveness; needs no token."""
    return {"status": "ok"}


@router.get(
    "/workspaces",
    response_model=schemas.WorkspaceList,
    responses=errors(401, 503),
    tags=["runs"],
)
async def list_workspaces(who: Caller, manager: Manager) -> dict[str, Any]:
    """Workspaces with runs or configurations, filtered to the caller's."""
    names = await manager.list_workspaces()
    return {"items": [{"workspace_id": ws} for ws in who.visible(names)]}


@router.get(
    "/configurations",
    response_model=schemas.ConfigurationList,
    responses=errors(401),
    tags=["runs"],
)
async def list_configurations(who: Caller, manager: Manager) -> dict[str, Any]:
    """The configurations registered on the server, filtered to the caller's workspaces."""
    scope = None if who.all_workspaces else who.workspaces
    items = [c.to_dict() for c in manager.list_configurations(scope)]
    return {"items": [c for c in items if who.can_read(c["workspace_id"])]}


@router.post(
    RUNS,
    status_code=201,
    response_model=schemas.RunResponse,
    responses={
        200: {
            "description": "`stream=true`: the new run's events as SSE until run.completed",
            "content": schemas.sse_content(schemas.EventEnvelope),
        },
        **errors(401, 403, 404, 413, 415, 422, 503),
    },
    dependencies=[Depends(require_json)],
    tags=["runs"],
)
async def create_run(
    workspace_id: WorkspaceId,
    configuration_id: ConfigurationId,
    _who: Writer,
    state: State,
    manager: Manager,
    body: Annotated[schemas.CreateRunRequest | None, Body()] = None,
    stream: Annotated[bool, Query(description="answer with the run's SSE stream")] = False,
) -> Response:
    """Create a run; ``{"external": true}`` for a producer-driven one (404: no such config)."""
    request = body or schemas.CreateRunRequest()
    run = await manager.create_run(
        workspace_id,
        configuration_id,
        mode=request.mode,
        options=request.options,
        external=request.external,
        rerun_of=request.rerun_of,
    )
    if stream:
        return sse_response(
            manager.follow_events(run, 0),
            0,
            keepalive_seconds=state.settings.keepalive_seconds,
            send_timeout=state.settings.sse_send_timeout_seconds,
        )
    return JSONResponse(run_body(run), status_code=201)


@router.get(
    WS + "/runs",
    response_model=schemas.RunList,
    responses=errors(401, 403, 422, 503),
    tags=["runs"],
)
async def list_runs(
    workspace_id: WorkspaceId,
    _who: Reader,
    manager: Manager,
    status: Annotated[list[RunStatus] | None, Query(description="repeatable")] = None,
    configuration_id: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None,
        # no pattern: the cursor's checksum is checked anyway (422), and a bare
        # format lets a generator that knows the format produce real cursors
        Query(description="next_cursor of the previous page, unchanged (it carries a checksum)"),
        WithJsonSchema({"type": "string", "format": schemas.CURSOR_FORMAT}),
    ] = None,
) -> dict[str, Any]:
    """Runs of a workspace, newest first, with filters and a keyset cursor."""
    query = RunQuery(
        workspace_id=workspace_id,
        statuses=frozenset(status or ()),
        configuration_id=configuration_id,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
    )
    runs, next_cursor = await manager.list_runs(query)
    return {"items": [r.to_dict() for r in runs], "next_cursor": next_cursor}


@router.get(
    RUN,
    response_model=schemas.RunResponse,
    responses=errors(401, 403, 404, 422, 503),
    tags=["runs"],
)
async def get_run(
    workspace_id: WorkspaceId,
    configuration_id: ConfigurationId,
    run_id: RunId,
    _who: Reader,
    manager: Manager,
) -> dict[str, Any]:
    """One run and, once it ended, its summary."""
    return run_body(await manager.get_run(workspace_id, configuration_id, run_id))


@router.post(
    RUN + "/cancel",
    status_code=202,
    response_model=schemas.RunResponse,
    responses=errors(401, 403, 404, 409, 422, 503),
    tags=["runs"],
)
async def cancel_run(
    workspace_id: WorkspaceId,
    configuration_id: ConfigurationId,
    run_id: RunId,
    _who: Writer,
    manager: Manager,
) -> JSONResponse:
    """Cancel a run (409 if it already ended)."""
    run = await manager.cancel_run(workspace_id, configuration_id, run_id)
    return JSONResponse(run_body(run), status_code=202)
