"""``GET /api/v1/runs/{run_id}``: a run found by its id alone.

The CLI takes run ids only (``runevents tail RUN_ID``); this route tells it the
run's workspace and configuration, answering the same shape as ``GET {run}``:
``{"run": {...}, "summary": {...} | null}``.

Order of checks: who is calling (401), is the id well-formed (422, before any
row is read), does the run exist *for this caller* (404). A run in a workspace
the caller may not read answers the same 404 as a run that does not exist: a
403 would confirm the id and name the other workspace.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from runevents.api import schemas
from runevents.api.deps import Caller, Manager, RunId
from runevents.api.runs import run_body
from runevents.api.schemas import errors
from runevents.exceptions import RunNotFound

router = APIRouter(prefix="/api/v1")


@router.get(
    "/runs/{run_id}",
    response_model=schemas.RunResponse,
    responses=errors(401, 404, 422, 503),
    tags=["runs"],
)
async def lookup_run(run_id: RunId, who: Caller, manager: Manager) -> dict[str, Any]:
    """One run by its id alone (404 also when it is in a workspace the caller may not read)."""
    run = await manager.lookup_run(run_id)
    if not who.can_read(run.workspace_id):
        # word for word what the repository says for an unknown id
        raise RunNotFound(f"run {run_id} not found")
    return run_body(run)
