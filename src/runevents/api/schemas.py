"""Pydantic models of the HTTP edge: request bodies, responses, OpenAPI documentation.

These exist for validation and for an accurate OpenAPI schema. Hot paths
(event pages, NDJSON, SSE, ingest) do not build these models: they splice the
stored NDJSON lines into the response bytes (or parse ingest lines with
msgspec), and the models only describe the shape.

Request bodies derive from :class:`RequestModel` (strict types: what the schema
says is what the server takes). Streams are described per item, the way
OpenAPI 3.2 does for sequential media types (:func:`sse_content`,
:func:`ndjson_content`); ``api/openapi.py`` adds the error responses every
operation shares.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from runevents.api.ingest import MAX_DEPTH, NDJSON, json_depth, json_problem

#: the largest sequence number a position parameter may name (fits a signed 64-bit int)
MAX_SEQUENCE = 2**63 - 1


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(description="stable machine name, e.g. run_not_found")
    message: str = Field(description="human readable reason")
    line: int | None = Field(
        default=None, description="ingest: the first bad NDJSON line (1-based)"
    )
    details: list[dict[str, Any]] | None = Field(
        default=None, description="request validation: every failing field"
    )


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class RunOut(BaseModel):
    """A run (contract section 4, "Run fields")."""

    model_config = ConfigDict(extra="allow")

    id: str
    workspace_id: str
    configuration_id: str
    status: Literal["queued", "building", "running", "succeeded", "failed", "cancelled"]
    exit_code: int | None
    created_at: str
    started_at: str | None
    completed_at: str | None
    updated_at: str
    events_path: str | None
    output_paths: list[str]
    input_file_count: int | None
    table_count: int | None
    row_count: int | None
    max_validation_severity: str | None
    last_console_snippet: str | None
    logging_degraded: bool
    event_count: int
    events_bytes: int
    log_state: Literal["live", "plain", "compressed", "expired"]


class RunResponse(BaseModel):
    """``GET {run}``, and the answer of create (201) and cancel (202)."""

    run: RunOut
    summary: dict[str, Any] | None = Field(description="the run summary once the run ended")


class RunList(BaseModel):
    """A page of the runs list, newest first."""

    items: list[RunOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class RequestModel(BaseModel):
    """Base of every JSON request body: strict types.

    Pydantic's lax mode would take ``0`` for a boolean or ``"5"`` for an
    integer, which the published schema forbids; a client generated from the
    schema would never send them, and a server that takes them anyway
    disagrees with its own description (schemathesis ST201).
    """

    model_config = ConfigDict(strict=True)


class CreateRunRequest(RequestModel):
    """Body of ``POST .../runs``; every field is optional."""

    mode: str = Field(default="execute", min_length=1, max_length=64)
    options: dict[str, Any] = Field(default_factory=dict)
    external: bool = Field(
        default=False,
        description="a producer-driven run: nothing is executed, events come over HTTP ingest",
    )
    rerun_of: str | None = Field(
        default=None,
        pattern=r"^run_[0-9A-HJKMNP-TV-Z]{26}$",
        description="the run this one re-runs (kept in its run.queued event's payload)",
    )

    @field_validator("options")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        # options are written into the run.queued event: same nesting bound as events
        if json_depth(value) >= MAX_DEPTH:
            raise ValueError(f"options are nested deeper than {MAX_DEPTH} levels")
        # refused here, before the log or the row is touched: Postgres refused the
        # run.queued JSON after its log was written (503 and a log without a row), and
        # SQLite stored infinity as null
        problem = json_problem(value)
        if problem is not None:
            raise ValueError(f"options: {problem}")
        return value


class EventEnvelope(BaseModel):
    """One stored event (contract section 2)."""

    model_config = ConfigDict(extra="allow")

    type: str
    event_id: str
    created_at: str
    sequence: int
    source: str
    workspace_id: str
    configuration_id: str
    run_id: str
    build_id: str | None
    payload: dict[str, Any]


class EventsPage(BaseModel):
    """``GET {run}/events`` as JSON."""

    events: list[EventEnvelope]
    next_after_sequence: int = Field(description="pass as `after_sequence` for the next page")
    has_more: bool = Field(description="more events exist after this page now")


class SearchPage(BaseModel):
    """``GET {run}/search``: console lines matching the query."""

    matches: list[EventEnvelope]
    next_after_sequence: int = Field(description="pass as `after_sequence` to continue")
    has_more: bool


def _server_assigned(description: str) -> Any:
    # readOnly: OpenAPI's word for "the server's": a request need not (and a
    # generated one will not) send it; one that does is checked or ignored as said
    return Field(default=None, description=description, json_schema_extra={"readOnly": True})


class IngestLine(BaseModel):
    """One line of an ingest batch (contract section 6).

    Only documents the shape: ``events.parse_draft`` reads the lines. Keys not
    listed here are kept out of the stored event, and ignored.
    """

    model_config = ConfigDict(extra="allow")

    type: str = Field(min_length=1, description="e.g. console.line, run.completed (last line)")
    payload: dict[str, Any] = Field(default_factory=dict, description="shape depends on type")
    created_at: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="RFC 3339; converted to UTC. Default: the server's clock",
    )
    source: str | None = None
    build_id: str | None = None
    workspace_id: str | None = _server_assigned("taken from the path; if sent, must equal it")
    configuration_id: str | None = _server_assigned("taken from the path; if sent, must equal it")
    run_id: str | None = _server_assigned("taken from the path; if sent, must equal it")
    sequence: int | None = _server_assigned("assigned by the server; ignored if sent")
    event_id: str | None = _server_assigned("assigned by the server; ignored if sent")


class IngestAnswer(BaseModel):
    """``POST {run}/events``: the sequences the server assigned to the batch."""

    first_sequence: int
    last_sequence: int


class ConfigurationOut(BaseModel):
    """A configuration registered on the server."""

    model_config = ConfigDict(extra="allow")

    workspace_id: str
    configuration_id: str


class ConfigurationList(BaseModel):
    """The configurations the caller may see."""

    items: list[ConfigurationOut]


class WorkspaceOut(BaseModel):
    """A workspace (has runs or configurations)."""

    workspace_id: str


class WorkspaceList(BaseModel):
    """The workspaces the caller may see."""

    items: list[WorkspaceOut]


class Health(BaseModel):
    """``GET /api/v1/health``."""

    status: Literal["ok"]


class SessionRequest(RequestModel):
    """Body of ``POST /api/v1/session``."""

    token: str = Field(min_length=1, max_length=4096)


class SessionOut(BaseModel):
    """The signed-in principal."""

    name: str
    role: Literal["read", "write", "admin"]
    workspaces: list[str]


#: the description of each error status in the document
ERROR_TEXT = {
    400: "Bad request",
    401: "No token, or an unknown one",
    403: "The token may not do this (workspace or role), or a cookie request lacks Origin",
    404: "Not found",
    409: "Conflict with the run's state (e.g. it already ended)",
    410: "The run's events were removed by retention",
    413: "Too large",
    415: "Unsupported content type",
    422: "Invalid input",
    503: "Storage unavailable",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses, all with :class:`ErrorBody`."""
    return {s: {"model": ErrorBody, "description": ERROR_TEXT.get(s, "Error")} for s in statuses}


#: OpenAPI content of a raw text stream (prefer :func:`sse_content` / :func:`ndjson_content`;
#: ``api/openapi.py`` reads it under an NDJSON or SSE media type as "any line", "any event")
TEXT_STREAM = {"schema": {"type": "string"}}
#: one SSE event of unknown content (the fields a client's parser gives)
ANY_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "event": {"type": "string"},
        "data": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
    "required": ["data"],
}

#: ``format`` of list cursors: a value the server issued as ``next_cursor``
#: (a checksum guards it, which no pattern can state; generators need a strategy)
CURSOR_FORMAT = "runevents-cursor"
#: ``format`` of search cursors (a runs-list cursor, ``.``, a sequence)
SEARCH_CURSOR_FORMAT = "runevents-search-cursor"
#: the SSE event name of every stored event (contract section 5)
SSE_EVENT = "ade.event"
#: models that hand-written content (streams, shared errors) refers to; ``api/openapi.py``
#: adds them to the document's components whether or not a route names them
DOCUMENT_MODELS: tuple[type[BaseModel], ...] = (ErrorBody, EventEnvelope, IngestLine)


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A ``$ref`` to ``model`` in the document's components."""
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def sse_content(
    data: type[BaseModel] = EventEnvelope,
    event: str = SSE_EVENT,
    id_pattern: str = r"^[1-9][0-9]*$",
) -> dict[str, Any]:
    """OpenAPI ``content`` of an SSE answer whose events each carry one ``data`` JSON document.

    Each event is described the way OpenAPI 3.2 describes event streams
    (``itemSchema``; FastAPI and schemathesis read it in a 3.1 document too):
    ``id`` is the event's sequence, ``event`` is always ``event``
    (``ade.event``), ``data`` is one ``data`` document (one stored line).
    Comments (keepalives) and the opening ``retry:`` are not events.
    """
    return {
        "text/event-stream": {
            "itemSchema": {
                "type": "object",
                "properties": {
                    "id": {
                        "type": "string",
                        "pattern": id_pattern,
                        "description": "the event's position; sent back as Last-Event-ID",
                    },
                    "event": {"const": event},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": ref(data),
                    },
                    "retry": {"type": "integer", "minimum": 0},
                },
                "required": ["id", "event", "data"],
            }
        }
    }


def ndjson_content(
    line: type[BaseModel], *, min_lines: int = 0, example: str | None = None
) -> dict[str, Any]:
    """OpenAPI ``content`` of an ``application/x-ndjson`` body, one ``line`` per line.

    As in OpenAPI 3.2 for sequential media types: ``itemSchema`` describes one
    line, ``schema`` the whole body read as an array of lines (what generators
    such as schemathesis build a body from; a serializer writes one line each).
    """
    media: dict[str, Any] = {
        "schema": {"type": "array", "items": ref(line), "minItems": min_lines},
        "itemSchema": ref(line),
    }
    if example is not None:
        media["example"] = example
    return {NDJSON: media}


class SearchHit(BaseModel):
    """``GET /workspaces/{ws}/search``: one line per hit (contract section 12)."""

    run_id: str
    configuration_id: str
    sequence: int
    created_at: str
    message: str
    match: list[tuple[int, int]] = Field(
        description="[start, end) of each match, in Unicode code points of `message`"
    )


class SearchDone(BaseModel):
    """The last line of a search answer."""

    done: Literal[True]
    hits: int = Field(description="hits in this answer")
    runs_scanned: int = Field(description="runs looked at (by their index or by reading)")
    bytes_scanned: int = Field(description="plain log bytes read and matched")
    bytes_skipped: int = Field(description="plain log bytes the search index ruled out unread")
    elapsed_ms: float
    cursor: str | None = Field(
        description="set when `limit` was reached: repeat the request with it to continue"
    )


class SearchLine(RootModel[SearchHit | SearchDone]):
    """One line of the NDJSON search answer: a hit, or the final done record."""


#: example of the search answer (NDJSON: hits, then the done record)
SEARCH_EXAMPLE = {
    "schema": {"$ref": "#/components/schemas/SearchLine"},
    "example": '{"run_id":"run_01J...","configuration_id":"etl","sequence":17,'
    '"created_at":"2026-11-24T06:00:00.123456Z","message":"ConnectionResetError: peer",'
    '"match":[[0,20]]}\n{"done":true,"hits":1,"runs_scanned":40,"bytes_scanned":1048576,'
    '"bytes_skipped":52428800,"elapsed_ms":12.5,"cursor":null}\n',
}

# the search answer is described per line (ndjson_content refers to SearchLine by $ref)
DOCUMENT_MODELS = (*DOCUMENT_MODELS, SearchLine, SearchHit, SearchDone)
