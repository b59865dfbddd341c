"""Event routes: the three read forms of ``GET {run}/events``, search, and producer ingest.

Reads (contract section 5 and 4):

* ``stream=true`` -> SSE, replay then live (``api/sse.py``). SSE is served only
  with ``stream=true``; an ``Accept: text/event-stream`` alone gets the JSON page,
  so one URL never changes meaning with a header a proxy may rewrite.
* ``Accept: application/x-ndjson`` (preferred over JSON) -> the log's bytes as
  stored, streamed chunk by chunk.
* otherwise -> a JSON page. Its ``events`` are the stored lines spliced into
  the response, never decoded and re-encoded. A page ends at ``limit`` events
  or at :data:`PAGE_BYTES` (at least one event), whichever comes first;
  ``has_more`` says whether an event exists after it now.

The position is the furthest of ``after_sequence``, ``from_sequence - 1`` and
``Last-Event-ID``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from runevents.api import ingest, schemas
from runevents.api.deps import ConfigurationId, Manager, Reader, RunId, State, WorkspaceId, Writer
from runevents.api.runs import RUN
from runevents.api.schemas import MAX_SEQUENCE, errors
from runevents.api.sse import close_quietly, resolve_position, sse_response
from runevents.eventlog import Chunk
from runevents.manager import RunManager
from runevents.models import Run

router = APIRouter(prefix="/api/v1")

#: a JSON page stops growing past this many bytes of events (the first event always fits)
PAGE_BYTES = 8 * 1024 * 1024
NDJSON = "application/x-ndjson"

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


async def _page(
    manager: RunManager, run: Run, position: int, limit: int
) -> tuple[list[bytes], int, bool]:
    """Up to ``limit`` stored lines after ``position``, their last sequence, and has_more."""
    lines: list[bytes] = []
    size = 0
    last = position
    chunks = manager.read_events(run, position, limit + 1)
    try:
        async for chunk in chunks:
            sequence = chunk.first_sequence
            for line in chunk.data.split(b"\n")[:-1]:
                if sequence > position:
                    if len(lines) >= limit or (lines and size + len(line) > PAGE_BYTES):
                        return lines, last, True
                    lines.append(line)
                    size += len(line) + 1
                    last = sequence
                sequence += 1
    finally:
        await close_quietly(chunks)
    return lines, last, False


def _json_list(key: bytes, lines: list[bytes], next_after: int, has_more: bool) -> bytes:
    return b'{"%s":[%s],"next_after_sequence":%d,"has_more":%s}' % (
        key,
        b",".join(lines),
        next_after,
        b"true" if has_more else b"false",
    )


async def _ndjson_body(first: Chunk, rest: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
    try:
        yield first.data
        async for chunk in rest:
            yield chunk.data
    finally:
        await close_quietly(rest)


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
) -> Response:
    """The events of a run as a JSON page, the NDJSON log, or an SSE stream."""
    position = resolve_position(after_sequence, from_sequence - 1, int(last_event_id))
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
    if wants_ndjson(request.headers.get("accept")):
        chunks = manager.read_events(run, position)
        # the first chunk is read before the answer starts, so a missing log is
        # still an error status rather than a truncated 200
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            return Response(b"", media_type=NDJSON)
        except BaseException:
            await close_quietly(chunks)
            raise
        return StreamingResponse(_ndjson_body(first, chunks), media_type=NDJSON)
    lines, next_after, has_more = await _page(manager, run, position, limit)
    return Response(
        _json_list(b"events", lines, next_after, has_more), media_type="application/json"
    )


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
    body = _json_list(b"matches", [line.rstrip(b"\n") for line in lines], next_after, has_more)
    return Response(body, media_type="application/json")


@router.post(
    RUN + "/events",
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
async def ingest_events(
    request: Request,
    response: Response,
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
            min_length=1,
            max_length=200,
            description="a retried batch with the same key appends nothing, same answer",
        ),
    ] = None,
) -> dict[str, int]:
    """Append a producer's NDJSON batch atomically (contract section 6)."""
    ingest.check_content_type(request.headers.get("content-type"))
    # the body is checked before the run is looked up: one database round trip
    # less per batch (the manager reads the row anyway)
    settings = state.settings
    body = await ingest.read_body(
        request.stream(), request.headers.get("content-length"), settings.max_batch_bytes
    )
    drafts = ingest.parse_batch(
        body,
        workspace_id=workspace_id,
        configuration_id=configuration_id,
        run_id=run_id,
        max_event_bytes=settings.max_event_bytes,
    )
    if settings.fsync == "never":
        # the relaxed setting: the answer must not claim more than it gives (contract 6)
        response.headers["Durability"] = "relaxed"
    return await manager.ingest(
        workspace_id,
        configuration_id,
        run_id,
        drafts,
        idempotency_key=idempotency_key,
        # a key names one batch: the same key with other bytes is refused (422)
        body_sha256=hashlib.sha256(body).hexdigest() if idempotency_key is not None else None,
    )
