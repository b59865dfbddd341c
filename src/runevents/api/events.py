"""Event routes: the three read forms of ``GET {run}/events``, search, and producer ingest.

Reads (contract section 5 and 4):

* ``stream=true`` -> SSE, replay then live (``api/sse.py``). SSE is served only
  with ``stream=true``; an ``Accept: text/event-stream`` alone gets the JSON page,
  so one URL never changes meaning with a header a proxy may rewrite.
* ``Accept: application/x-ndjson`` (preferred over JSON) -> the log's bytes as
  stored, streamed chunk by chunk.
* otherwise -> a JSON page (``api/pages.py``); with ``wait=S`` a long-poll
  (``api/longpoll.py``).

NDJSON and pages are read up to the log's end when the request came
(``runevents.logview``), carry an ETag, answer ``If-None-Match`` with 304 and
say whether they may be cached for good (``api/caching.py``, contract section
14). ``HEAD`` answers the last sequence and whether the run ended.

The position is the furthest of ``after_sequence``, ``from_sequence - 1`` and
``Last-Event-ID``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from runevents.api import caching, schemas
from runevents.api.deps import ConfigurationId, Manager, Reader, RunId, State, WorkspaceId, Writer
from runevents.api.ingest_route import KEY_MAX, KEY_MIN, IngestRoute, serve_batch
from runevents.api.longpoll import MAX_WAIT, wait_page
from runevents.api.pages import json_list, read_page
from runevents.api.runs import RUN
from runevents.api.schemas import MAX_SEQUENCE, errors
from runevents.api.sse import close_quietly, resolve_position, sse_response
from runevents.eventlog import Chunk
from runevents.logview import LogEnd, log_end
from runevents.manager import RunManager
from runevents.models import Run

router = APIRouter(prefix="/api/v1")

NDJSON = "application/x-ndjson"
#: HEAD {run}/events: the run's last sequence, and whether it ended ("true"/"false")
LAST_SEQUENCE_HEADER = "Runevents-Last-Sequence"
ENDED_HEADER = "Runevents-Ended"

# Not nullable on purpose: 0 means "from the start" and keeps the schema honest
# (a nullable header would be documented as accepting the text "null").
Position = Annotated[
    int,
    Query(ge=0, le=MAX_SEQUENCE, description="return events with a sequence above this"),
]
FromSequence = Annotated[
    int,
    Query(ge=0, le=MAX_SEQUENCE, description="same as after_sequence = from_sequence - 1"),
]
# A header is text: described as the digits an EventSource sends back (the
# ``id:`` of the last event it saw), at most 18 of them so that every value
# the pattern allows is a sequence the server takes (below 2**63).
LastEventId = Annotated[
    str,
    Header(
        alias="Last-Event-ID",
        pattern=r"^(0|[1-9][0-9]{0,17})$",
        description="an EventSource reconnect: resume after this sequence",
    ),
]


def wants_ndjson(accept: str | None) -> bool:
    """True when ``Accept`` prefers application/x-ndjson over application/json."""
    if not accept:
        return False
    best: dict[str, float] = {}
    for order, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        # earlier entries win ties, as a client listing them in order means
        best.setdefault(media.lower(), quality - order * 1e-6)
    ndjson = best.get(NDJSON, 0.0)
    return ndjson > 0 and ndjson >= best.get("application/json", 0.0)


async def _ndjson_body(first: Chunk, rest: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
    try:
        yield first.data
        async for chunk in rest:
            yield chunk.data
    finally:
        await close_quietly(rest)


Wait = Annotated[
    float,
    Query(
        # 0 is "do not wait": the page as it is now (contract 14 bounds it above only)
        ge=0,
        le=MAX_WAIT,
        description="long-poll (JSON page form): wait up to this many seconds for events "
        "after the position when there are none yet. SSE waits anyway and the NDJSON form "
        "is what the log holds now: both ignore it",
    ),
]


@router.get(
    RUN + "/events",
    response_model=schemas.EventsPage,
    responses={
        200: {
            "description": "a JSON page; the NDJSON log (`Accept: application/x-ndjson`); "
            "or, with `stream=true`, SSE",
            "content": {
                **schemas.ndjson_content(schemas.EventEnvelope),
                **schemas.sse_content(schemas.EventEnvelope),
            },
        },
        204: {"description": "`stream=true` and the position is already past run.completed"},
        304: {"description": "`If-None-Match` names the answer's ETag"},
        **errors(401, 403, 404, 410, 422, 503),
    },
    tags=["events"],
)
async def read_events(
    request: Request,
    workspace_id: WorkspaceId,
    configuration_id: ConfigurationId,
    run_id: RunId,
    _who: Reader,
    state: State,
    manager: Manager,
    stream: Annotated[bool, Query(description="SSE: replay, then live")] = False,
    after_sequence: Position = 0,
    from_sequence: FromSequence = 0,
    limit: Annotated[int, Query(ge=1, le=5000, description="JSON page size")] = 500,
    last_event_id: LastEventId = "0",
    wait: Wait | None = None,
) -> Response:
    """The events of a run as a JSON page, the NDJSON log, or an SSE stream."""
    position = resolve_position(after_sequence, from_sequence - 1, int(last_event_id))
    ndjson = wants_ndjson(request.headers.get("accept"))
    run = await manager.open_events(workspace_id, configuration_id, run_id)
    if stream:
        if run.status.ended and position >= run.event_count:
            # past run.completed: 204 tells an EventSource to stop reconnecting
            return Response(status_code=204)
        return sse_response(
            manager.follow_events(run, position),
            position,
            keepalive_seconds=state.settings.keepalive_seconds,
            send_timeout=state.settings.sse_send_timeout_seconds,
        )
    end = await log_end(manager, run)
    if_none_match = request.headers.get("if-none-match")
    if ndjson:
        return await _ndjson(manager, run, end, position, if_none_match)
    kind = f"json{limit}"
    if wait and not end.ended and position >= end.last_sequence:
        page = (await wait_page(manager, run, position, limit, wait, request)).page
    else:
        stop = end.last_sequence
        # the page will hold position+1 .. last, and has_more says whether stop is past it
        last, more = min(stop, position + limit), stop > position + limit
        tag = caching.etag(run.id, end, kind, position, last, more=more)
        if caching.matches(if_none_match, tag):
            return caching.not_modified(tag, end.ended or more)
        page = await read_page(manager, run, position, limit, stop)
    # a page is final when the run ended or events exist after it
    complete = end.ended or page.has_more
    tag = caching.etag(run.id, end, kind, position, page.last, more=page.has_more)
    return Response(
        json_list(b"events", page.lines, page.last, page.has_more),
        media_type="application/json",
        headers=caching.headers(tag, complete),
    )


@router.head(RUN + "/events", responses=errors(401, 403, 404, 410, 422, 503), tags=["events"])
async def events_head(
    workspace_id: WorkspaceId,
    configuration_id: ConfigurationId,
    run_id: RunId,
    _who: Reader,
    manager: Manager,
) -> Response:
    """The run's last sequence and whether it ended, in headers, without a body."""
    run = await manager.open_events(workspace_id, configuration_id, run_id)
    end = await log_end(manager, run)
    return Response(
        status_code=200,
        # a HEAD answers the headers a GET would: the default read form is a JSON page
        media_type="application/json",
        headers={
            LAST_SEQUENCE_HEADER: str(end.last_sequence),
            ENDED_HEADER: "true" if end.ended else "false",
            "Cache-Control": caching.NO_STORE,
        },
    )


async def _ndjson(
    manager: RunManager, run: Run, end: LogEnd, position: int, if_none_match: str | None
) -> Response:
    """The log after ``position`` up to its end when the request came, as stored."""
    stop = end.last_sequence
    tag = caching.etag(run.id, end, "ndjson", position, max(stop, position))
    # the whole rest of the log: final only once the run ended
    headers = caching.headers(tag, end.ended)
    if caching.matches(if_none_match, tag):
        return caching.not_modified(tag, end.ended)
    if stop <= position:
        return Response(b"", media_type=NDJSON, headers=headers)
    chunks = manager.read_events(run, position, stop - position)
    # the first chunk is read before the answer starts, so a missing log is
    # still an error status rather than a truncated 200
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        return Response(b"", media_type=NDJSON, headers=headers)
    except BaseException:
        await close_quietly(chunks)
        raise
    return StreamingResponse(_ndjson_body(first, chunks), media_type=NDJSON, headers=headers)


@router.get(
    RUN + "/search",
    response_model=schemas.SearchPage,
    responses=errors(401, 403, 404, 410, 422, 503),
    tags=["events"],
)
async def search_events(
    workspace_id: WorkspaceId,
    configuration_id: ConfigurationId,
    run_id: RunId,
    _who: Reader,
    manager: Manager,
    q: Annotated[str | None, Query(max_length=1000, description="case-insensitive")] = None,
    stream: Annotated[Literal["stdout", "stderr"] | None, Query()] = None,
    level: Annotated[Literal["debug", "info", "warning", "error"] | None, Query()] = None,
    after_sequence: Position = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> Response:
    """console.line events whose message contains ``q``, optionally one stream and level."""
    run = await manager.open_events(workspace_id, configuration_id, run_id)
    lines, next_after, has_more = await manager.search_events(
        run,
        q=q or None,
        stream=stream,
        level=level,
        after_sequence=after_sequence,
        limit=limit,
    )
    body = json_list(b"matches", [line.rstrip(b"\n") for line in lines], next_after, has_more)
    return Response(body, media_type="application/json")


async def ingest_events(
    request: Request,
    workspace_id: WorkspaceId,
    configuration_id: ConfigurationId,
    run_id: RunId,
    _who: Writer,
    state: State,
    manager: Manager,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=KEY_MIN,
            max_length=KEY_MAX,
            description="a retried batch with the same key appends nothing, same answer",
        ),
    ] = None,
) -> Response:
    """Append a producer's NDJSON batch atomically (contract section 6)."""
    # A plainly valid request never gets here: IngestRoute serves it with the
    # same serve_batch. This signature is the route's contract (OpenAPI, and the
    # errors FastAPI answers for every other request).
    ids = (workspace_id, configuration_id, run_id)
    return await serve_batch(request, state, manager, ids, idempotency_key)


router.add_api_route(
    RUN + "/events",
    ingest_events,
    methods=["POST"],
    route_class_override=IngestRoute,
    response_model=schemas.IngestAnswer,
    responses=errors(401, 403, 404, 409, 413, 415, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": 'one event per line: {"type": ..., "payload": {...}} with '
            "optional created_at (RFC 3339) and source; all lines are appended or none; "
            "run.completed, if sent, is the last line and ends the run",
            "content": schemas.ndjson_content(
                schemas.IngestLine,
                min_lines=1,
                example='{"type": "run.phase.started", "payload": {"phase": "load"}}\n'
                '{"type": "console.line", "payload": {"stream": "stdout", "message": "hello"}}\n',
            ),
        }
    },
    tags=["events"],
)
