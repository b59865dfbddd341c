"""Pydantic models of the HTTP edge: request bodies, responses, OpenAPI documentation.

These exist for validation and for an accurate OpenAPI schema. Hot paths
(event pages, NDJSON, SSE) do not build these models: they splice the stored
NDJSON lines into the response bytes, and the models only describe the shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from runevents.api.ingest import MAX_DEPTH, json_depth

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


class CreateRunRequest(BaseModel):
    """Body of ``POST .../runs``; every field is optional."""

    mode: str = Field(default="execute", min_length=1, max_length=64)
    options: dict[str, Any] = Field(default_factory=dict)
    external: bool = Field(
        default=False,
        description="a producer-driven run: nothing is executed, events come over HTTP ingest",
    )

    @field_validator("options")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        # options are written into the run.queued event: same nesting bound as events
        if json_depth(value) >= MAX_DEPTH:
            raise ValueError(f"options are nested deeper than {MAX_DEPTH} levels")
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


class SessionRequest(BaseModel):
    """Body of ``POST /api/v1/session``."""

    token: str = Field(min_length=1, max_length=4096)


class SessionOut(BaseModel):
    """The signed-in principal."""

    name: str
    role: Literal["read", "write", "admin"]
    workspaces: list[str]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses, all with :class:`ErrorBody`."""
    text = {
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
    return {s: {"model": ErrorBody, "description": text.get(s, "Error")} for s in statuses}


#: OpenAPI content of a raw text stream
TEXT_STREAM = {"schema": {"type": "string"}}


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
