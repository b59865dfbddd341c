"""Domain models: immutable, with explicit converters.

``Run`` mirrors one row of the ``runs`` table. Pydantic models live only at the
HTTP edge (``api/schemas.py``); everything below works with these.
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import UTC, datetime
from typing import Any

import msgspec


class RunStatus(enum.StrEnum):
    """Lifecycle of a run: queued -> building -> running -> succeeded|failed|cancelled."""

    #: created, waiting for a worker (or for its external producer)
    QUEUED = "queued"
    #: the configuration's build step is running
    BUILDING = "building"
    #: the command (or the external producer) is running
    RUNNING = "running"
    #: ended with run.completed status=succeeded
    SUCCEEDED = "succeeded"
    #: ended with run.completed status=failed
    FAILED = "failed"
    #: ended with run.completed status=cancelled
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in ENDED_STATUSES


ENDED_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})

#: allowed status moves; an ended run never moves again
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.BUILDING, RunStatus.RUNNING, *ENDED_STATUSES}),
    RunStatus.BUILDING: frozenset({RunStatus.RUNNING, *ENDED_STATUSES}),
    RunStatus.RUNNING: frozenset(ENDED_STATUSES),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}


class LogState(enum.StrEnum):
    """Where a run's event log body is."""

    #: a writer may still append (run not ended)
    LIVE = "live"
    #: sealed plain NDJSON
    PLAIN = "plain"
    #: compacted into independent zstd frames (events.ndjson.zst)
    COMPRESSED = "compressed"
    #: body deleted by retention; the row and summary remain
    EXPIRED = "expired"


def utcnow() -> datetime:
    """The server clock, timezone-aware UTC."""
    return datetime.now(UTC)


def parse_timestamp(value: str) -> datetime:
    """An envelope timestamp (RFC 3339) as an aware UTC datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def rfc3339(value: datetime | None) -> str | None:
    """Format a datetime as RFC 3339 UTC with microseconds and a ``Z`` suffix."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Run:
    """One run: metadata, summary and pointers (never the events)."""

    id: str
    workspace_id: str
    configuration_id: str
    status: RunStatus
    external: bool = False
    mode: str = "execute"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    exit_code: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime
    events_path: str | None = None
    output_paths: list[str] = dataclasses.field(default_factory=list)
    summary: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    input_file_count: int | None = None
    table_count: int | None = None
    row_count: int | None = None
    max_validation_severity: str | None = None
    last_console_snippet: str | None = None
    logging_degraded: bool = False
    event_count: int = 0
    events_bytes: int = 0
    log_state: LogState = LogState.LIVE
    #: set by POST .../cancel; the owning worker acts on it
    cancel_requested: bool = False
    #: worker lease (None when not claimed)
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None

    def evolve(self, **changes: Any) -> Run:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The contract's run object (section 4, "Run fields")."""
        return {
            "id": self.id,
            "workspace_id": self.workspace_id,
            "configuration_id": self.configuration_id,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "created_at": rfc3339(self.created_at),
            "started_at": rfc3339(self.started_at),
            "completed_at": rfc3339(self.completed_at),
            "updated_at": rfc3339(self.updated_at),
            "events_path": self.events_path,
            "output_paths": list(self.output_paths),
            "input_file_count": self.input_file_count,
            "table_count": self.table_count,
            "row_count": self.row_count,
            "max_validation_severity": self.max_validation_severity,
            "last_console_snippet": self.last_console_snippet,
            "logging_degraded": self.logging_degraded,
            "event_count": self.event_count,
            "events_bytes": self.events_bytes,
            "log_state": self.log_state.value,
            "external": self.external,
            "mode": self.mode,
            "failure": self.failure,
            "cancel_requested": self.cancel_requested,
        }


class RunHead(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a search across runs reads of a run row (``RunRepository.list_run_heads``).

    A msgspec struct rather than a dataclass: a search builds thousands per
    request, and a frozen dataclass costs ~2 us each (``object.__setattr__``
    per field) where this costs a tenth; ``gc=False`` because it only holds
    strings, numbers and enum members, so the collector never walks them.
    """

    id: str
    workspace_id: str
    configuration_id: str
    #: ``created_at`` as the database gave it: an aware datetime, or SQLite's naive
    #: UTC text, parsed only when asked for (a search lists thousands of rows and
    #: needs the time of one or two)
    created: datetime | str
    status: RunStatus
    log_state: LogState
    event_count: int

    @property
    def created_at(self) -> datetime:
        """The row's ``created_at``, aware UTC."""
        if isinstance(self.created, str):
            return datetime.fromisoformat(self.created).replace(tzinfo=UTC)
        return self.created.astimezone(UTC)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RunQuery:
    """Filters and page position of the runs list (newest first)."""

    workspace_id: str
    statuses: frozenset[RunStatus] = frozenset()
    configuration_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    #: page size, 1..500
    limit: int = 50
    #: opaque keyset cursor returned as ``next_cursor`` by the previous page
    cursor: str | None = None
