"""Every run's log as a read-only Durable Stream in JSON mode (contract section 14).

``/ds/v1/workspaces/{ws}/runs/{run_id}`` follows the Durable Streams protocol
(``PROTOCOL.md`` of github.com/durable-streams/durable-streams): ``HEAD`` for
the tail offset and closure, ``GET ?offset=O`` catch-up, ``&live=long-poll``
and ``&live=sse``. Each event envelope is one JSON message; a read answers a
JSON array of the stored lines, spliced as stored (never re-encoded).

* **Offsets** are the sequence of the last event before the position,
  zero-padded to 20 digits (opaque to clients, sortable as strings, never the
  sentinels ``-1`` / ``now``). ``-1`` is the start, ``now`` the current tail.
* **Closed** is "the run has ended": ``Stream-Closed: true`` (``streamClosed``
  in SSE control events) once a read reaches the end of an ended run's log.
* **Caching** follows the contract, not the protocol's ``max-age=60``
  suggestion: a range that can no longer change is ``private, max-age=31536000,
  immutable``; the open tail of a live run ``no-store``. ETags are
  ``"{run_id}:{start}:{end}"`` plus ``:c`` once closed, and ``If-None-Match``
  answers 304.
* **Long-poll and SSE** wait on the run's live tail through
  ``RunManager.follow_events``, like SSE followers and the events long-poll.

Where the protocol and the contract differ (writes, error statuses, caching)
is listed in ``docs/durable-streams.md``.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from runevents.api import caching
from runevents.api.deps import Manager, Reader, RunId, State, WorkspaceId
from runevents.api.durable_sse import DS_SSE_HEADERS, ds_frames
from runevents.api.longpoll import wait_page
from runevents.api.pages import Page, read_page
from runevents.api.schemas import errors
from runevents.api.stream import EventStream
from runevents.exceptions import InvalidInput, RunNotFound
from runevents.logview import LogEnd, log_end
from runevents.manager import RunManager
from runevents.models import Run

router = APIRouter(prefix="/ds/v1")

PATH = "/workspaces/{workspace_id}/runs/{run_id}"
#: digits of an offset: enough for any sequence (contract: at most 2**63 - 1)
OFFSET_DIGITS = 20
#: messages (events) in one catch-up or long-poll answer at most
DS_LIMIT = 1000
#: how long a long-poll waits for data before 204 (seconds)
LONG_POLL_SECONDS = 20.0
#: interval of the CDN-collapsing cursor (protocol: 20 s from 2024-10-09T00:00:00Z)
CURSOR_INTERVAL = 20
CURSOR_EPOCH = 1728432000

STREAM_NEXT_OFFSET = "Stream-Next-Offset"
STREAM_UP_TO_DATE = "Stream-Up-To-Date"
STREAM_CLOSED = "Stream-Closed"
STREAM_CURSOR = "Stream-Cursor"
#: on every answer (protocol section 12.7)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff"}

Offset = Annotated[
    str | None,
    Query(
        # the pattern is exactly what the server takes: the schema and the server agree
        pattern=rf"^(-1|now|[0-9]{{{OFFSET_DIGITS}}})$",
        description="-1 (start, the default), now (the tail), or an offset",
    ),
]
Live = Annotated[Literal["long-poll", "sse"] | None, Query(description="live mode")]
Cursor = Annotated[str | None, Query(max_length=64, description="the last Stream-Cursor")]


def encode_offset(sequence: int) -> str:
    """The offset after the event ``sequence`` (0: the start of the stream)."""
    return f"{sequence:0{OFFSET_DIGITS}d}"


def decode_offset(offset: str | None, end: LogEnd) -> int:
    """The sequence after which a read starts (InvalidInput for a malformed offset)."""
    if offset is None or offset == "-1":
        return 0
    if offset == "now":
        return end.last_sequence
    if len(offset) != OFFSET_DIGITS or not offset.isascii() or not offset.isdigit():
        raise InvalidInput(f"offset {offset!r} is not -1, now or an offset this server gave")
    return int(offset)


def next_cursor(client: str | None, now: float | None = None) -> str:
    """The protocol's interval cursor; always past the client's (no CDN cache loops)."""
    interval = int(((time.time() if now is None else now) - CURSOR_EPOCH) // CURSOR_INTERVAL)
    if client is not None and client.isascii() and client.isdigit() and len(client) < 19:
        mine = int(client)
        if mine >= interval:
            # the protocol's 1-3600 s of jitter, in whole intervals: at least one
            jitter_seconds = 1 + secrets.randbelow(3600)
            return str(mine + max(1, -(-jitter_seconds // CURSOR_INTERVAL)))
    return str(interval)


async def _open(manager: RunManager, workspace_id: str, run_id: str) -> Run:
    """The run under ``workspace_id`` whose events may be read (404, 410)."""
    found = await manager.lookup_run(run_id)
    if found.workspace_id != workspace_id:
        raise RunNotFound(f"no run {run_id} in workspace {workspace_id}")
    return await manager.open_events(workspace_id, found.configuration_id, run_id)


def _body(page: Page) -> bytes:
    return b"[" + b",".join(page.lines) + b"]"


def _stream_headers(
    run: Run, start: int, page: Page, end: LogEnd, *, stop: int, live: bool, cursor: str | None
) -> dict[str, str]:
    """The protocol headers of a read that returned ``page`` (events up to ``stop`` exist)."""
    up_to_date = page.last >= stop
    closed = end.ended and up_to_date
    tag = f'"{run.id}:{encode_offset(start)}:{encode_offset(page.last)}{":c" if closed else ""}"'
    # final: the run ended, or events exist after this range (contract section 14)
    complete = closed or not up_to_date
    headers = {
        **SECURITY_HEADERS,
        "ETag": tag,
        "Cache-Control": caching.IMMUTABLE if complete else caching.NO_STORE,
        STREAM_NEXT_OFFSET: encode_offset(page.last),
    }
    if up_to_date:
        headers[STREAM_UP_TO_DATE] = "true"
    if closed:
        headers[STREAM_CLOSED] = "true"
    elif live or cursor is not None:
        headers[STREAM_CURSOR] = next_cursor(cursor)
    return headers


@router.head(PATH, responses=errors(401, 403, 404, 410, 422, 503), tags=["durable-streams"])
async def ds_head(
    workspace_id: WorkspaceId, run_id: RunId, _who: Reader, manager: Manager
) -> Response:
    """The stream's tail offset and whether it is closed (the run ended); no body."""
    run = await _open(manager, workspace_id, run_id)
    end = await log_end(manager, run)
    headers = {
        **SECURITY_HEADERS,
        "Content-Type": "application/json",
        "Cache-Control": caching.NO_STORE,
        STREAM_NEXT_OFFSET: encode_offset(end.last_sequence),
    }
    if end.ended:
        headers[STREAM_CLOSED] = "true"
    return Response(status_code=200, headers=headers)


@router.get(
    PATH,
    responses={
        200: {
            "description": "a JSON array of event envelopes, or an SSE stream (live=sse)",
            "content": {
                "application/json": {"schema": {"type": "array", "items": {}}},
                # the protocol's SSE: `data` events (a JSON array of envelopes) and
                # `control` events (offsets, cursor, closed), no ids
                "text/event-stream": {
                    "itemSchema": {
                        "type": "object",
                        "properties": {
                            "event": {"enum": ["data", "control"]},
                            "data": {"type": "string"},
                        },
                        "required": ["event", "data"],
                    }
                },
            },
        },
        204: {"description": "long-poll: nothing arrived in time, or the stream is closed"},
        304: {"description": "`If-None-Match` names the answer's ETag"},
        **errors(401, 403, 404, 410, 422, 503),
    },
    tags=["durable-streams"],
)
async def ds_read(
    request: Request,
    workspace_id: WorkspaceId,
    run_id: RunId,
    _who: Reader,
    state: State,
    manager: Manager,
    offset: Offset = None,
    live: Live = None,
    cursor: Cursor = None,
) -> Response:
    """Catch-up (no ``live``), long-poll or SSE read of a run's log from ``offset``."""
    run = await _open(manager, workspace_id, run_id)
    end = await log_end(manager, run)
    start = decode_offset(offset, end)
    if live == "sse":
        return EventStream(
            ds_frames(
                manager.follow_events(run, start),
                start,
                end,
                encode_offset=encode_offset,
                next_cursor=lambda: next_cursor(cursor),
            ),
            headers={**DS_SSE_HEADERS, **SECURITY_HEADERS},
            keepalive_seconds=state.settings.keepalive_seconds,
            send_timeout=state.settings.sse_send_timeout_seconds,
        )
    if offset == "now" and live is None:
        # the tail itself: no data, not cacheable, no ETag (protocol section 8)
        headers = {
            **SECURITY_HEADERS,
            "Cache-Control": caching.NO_STORE,
            STREAM_NEXT_OFFSET: encode_offset(start),
            STREAM_UP_TO_DATE: "true",
        }
        if end.ended:
            headers[STREAM_CLOSED] = "true"
        return Response(b"[]", media_type="application/json", headers=headers)
    stop = end.last_sequence
    if live == "long-poll" and start >= stop:
        if end.ended:
            return _no_content(start, cursor, closed=True)  # EOF at once, never a wait
        waited = await wait_page(manager, run, start, DS_LIMIT, LONG_POLL_SECONDS, request)
        if not waited.page.lines:
            return _no_content(start, cursor, closed=waited.ended)
        page, stop = waited.page, waited.stop
        if waited.ended:
            # the wait brought run.completed: the stream is closed at this offset
            end = LogEnd(stop, True, end.form)
    else:
        page = await read_page(manager, run, start, DS_LIMIT, stop)
    headers = _stream_headers(
        run, start, page, end, stop=stop, live=live is not None, cursor=cursor
    )
    if caching.matches(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return Response(_body(page), media_type="application/json", headers=headers)


def _no_content(start: int, cursor: str | None, *, closed: bool) -> Response:
    """Long-poll: nothing arrived in time, or (closed) the run ended at ``start``."""
    headers = {
        **SECURITY_HEADERS,
        "Cache-Control": caching.NO_STORE,
        STREAM_NEXT_OFFSET: encode_offset(start),
        STREAM_UP_TO_DATE: "true",
    }
    if closed:
        headers[STREAM_CLOSED] = "true"
    else:
        headers[STREAM_CURSOR] = next_cursor(cursor)
    return Response(status_code=204, headers=headers)
