"""``GET /api/v1/workspaces/{ws}/search``: search across a workspace's runs (contract 12).

The answer streams: hit lines as they are found (newest runs first), then a
``done`` line. Everything that can be wrong with the request -- the pattern
(422 ``invalid_regex``), the cursor, the filters -- is checked before the
first byte, so a bad request is an error status, never a truncated 200.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import WithJsonSchema

from runevents.api import schemas
from runevents.api.deps import NAME_PATTERN, Manager, Reader, Timestamp, WorkspaceId
from runevents.api.runs import WS
from runevents.api.schemas import errors
from runevents.models import RunStatus
from runevents.search import Filters, Pattern, SearchRequest
from runevents.search.engine import DEFAULT_LIMIT, MAX_LIMIT
from runevents.search.pattern import MAX_QUERY

router = APIRouter(prefix="/api/v1")
NDJSON = "application/x-ndjson"


class NDJSONResponse(StreamingResponse):
    """A streamed ``application/x-ndjson`` answer (so OpenAPI documents that media type)."""

    media_type = NDJSON


@router.get(
    WS + "/search",
    response_class=NDJSONResponse,
    responses={
        200: {
            "description": "NDJSON: one `SearchHit` per line, newest runs first, "
            "then one `SearchDone` line",
            # described per line (itemSchema), as the ingest body is
            "content": schemas.ndjson_content(
                schemas.SearchLine, min_lines=1, example=str(schemas.SEARCH_EXAMPLE["example"])
            ),
        },
        # documented as JSON explicitly: a "model" would take the route's NDJSON type
        **{
            status: {
                "description": answer["description"],
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                },
            }
            for status, answer in errors(401, 403, 422, 503).items()
        },
    },
    tags=["search"],
)
async def search_runs(
    workspace_id: WorkspaceId,
    _who: Reader,
    manager: Manager,
    q: Annotated[
        str,
        Query(
            min_length=1,
            max_length=MAX_QUERY,
            description="plain text (case-insensitive), or an RE2 pattern with regex=true",
        ),
    ],
    regex: Annotated[bool, Query(description="q is an RE2 regular expression")] = False,
    configuration_id: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    status: Annotated[list[RunStatus] | None, Query(description="repeatable")] = None,
    # the runs list's parameter type: RFC 3339 only, as there (contract 12)
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
    stream: Annotated[Literal["stdout", "stderr"] | None, Query()] = None,
    level: Annotated[Literal["debug", "info", "warning", "error"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="hits")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        # no pattern: the server checks the cursor's checksum anyway (422), and a bare
        # format lets a generator that knows it produce real cursors (as the runs list)
        Query(max_length=600, description="the previous answer's `cursor`, unchanged"),
        WithJsonSchema({"type": "string", "format": schemas.SEARCH_CURSOR_FORMAT}),
    ] = None,
) -> NDJSONResponse:
    """Console lines of the workspace's runs matching ``q``: hits, then a done record."""
    request = SearchRequest(
        workspace_id=workspace_id,
        pattern=Pattern(q, regex=regex),
        filters=Filters(stream=stream, level=level),
        statuses=frozenset(status or ()),
        configuration_id=configuration_id,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
    )
    return NDJSONResponse(await manager.search_runs(request))
