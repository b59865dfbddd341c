"""Typed views of what the server answers: runs, pages, and events (contract sections 2, 4).

Every object keeps the JSON it was built from in ``raw``, so a field that this
client version does not know yet is still reachable (``event.raw["new_field"]``
or ``event["new_field"]``), and nothing is lost when an object is printed or
stored again.

Events are typed by their ``type``: :class:`ConsoleLine`, :class:`RunCompleted`,
:class:`RunError`, :class:`PhaseEvent`, else :class:`Event`. :func:`parse_event`
picks the class; ``isinstance`` tells them apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runevents.client.checks import checked_name, checked_run_id

#: statuses of a run that has ended
ENDED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class Run:
    """A run row (``GET {run}``'s ``run``), with its summary when the server sent it."""

    id: str
    workspace_id: str
    configuration_id: str
    status: str
    exit_code: int | None
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    event_count: int
    log_state: str | None
    summary: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, run: Mapping[str, Any], summary: Any = None) -> Run:
        """A Run from the server's run object (and the answer's ``summary``)."""
        return cls(
            id=str(run["id"]),
            workspace_id=str(run["workspace_id"]),
            configuration_id=str(run["configuration_id"]),
            status=str(run.get("status", "")),
            exit_code=_int(run.get("exit_code")),
            created_at=_str(run.get("created_at")),
            started_at=_str(run.get("started_at")),
            completed_at=_str(run.get("completed_at")),
            event_count=_int(run.get("event_count")) or 0,
            log_state=_str(run.get("log_state")),
            summary=summary if isinstance(summary, dict) else None,
            raw=dict(run),
        )

    @property
    def ended(self) -> bool:
        """The run has ended (succeeded, failed or cancelled)."""
        return self.status in ENDED_STATUSES

    @property
    def path(self) -> str:
        """``{run}``: the run's URL path on the server."""
        return run_path(self.workspace_id, self.configuration_id, self.id)


def run_path(workspace_id: str, configuration_id: str, run_id: str) -> str:
    """``/api/v1/workspaces/{ws}/configurations/{cfg}/runs/{run_id}``.

    Each part is checked (ClientError otherwise): a run given as a mapping, or
    an answer of a server that is not what it seems, must not name another route.
    """
    workspace_id = checked_name(workspace_id, "workspace_id")
    configuration_id = checked_name(configuration_id, "configuration_id")
    run_id = checked_run_id(run_id)
    return f"/api/v1/workspaces/{workspace_id}/configurations/{configuration_id}/runs/{run_id}"


@dataclass(frozen=True, slots=True)
class RunPage:
    """A page of the runs list, newest first; ``next_cursor`` continues it (None: the end)."""

    items: list[Run]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Event:
    """One event envelope. ``event["field"]`` and ``event.get`` read the raw envelope."""

    type: str
    sequence: int
    event_id: str
    created_at: str
    source: str | None
    run_id: str
    workspace_id: str
    configuration_id: str
    payload: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        """A field of the raw envelope, or ``default``."""
        return self.raw.get(key, default)


@dataclass(frozen=True, slots=True)
class ConsoleLine(Event):
    """A ``console.line``: one line of output (``message`` is raw text, ANSI kept)."""

    @property
    def message(self) -> str:
        return str(self.payload.get("message", ""))

    @property
    def stream(self) -> str:
        """``stdout`` or ``stderr``."""
        return str(self.payload.get("stream", "stdout"))

    @property
    def level(self) -> str:
        """``debug``, ``info``, ``warning`` or ``error``."""
        return str(self.payload.get("level", "info"))

    @property
    def logger(self) -> str | None:
        return _str(self.payload.get("logger"))


@dataclass(frozen=True, slots=True)
class RunCompleted(Event):
    """``run.completed``: always the last event of a run."""

    @property
    def status(self) -> str:
        """``succeeded``, ``failed`` or ``cancelled``."""
        return str(self.payload.get("status", ""))

    @property
    def failure(self) -> dict[str, Any] | None:
        """``{stage, code, message}`` of a failed run (the summary's when the payload has none)."""
        failure = self.payload.get("failure") or (self.summary or {}).get("failure")
        return failure if isinstance(failure, dict) else None

    @property
    def exit_code(self) -> int | None:
        execution = self.payload.get("execution")
        return _int(execution.get("exit_code")) if isinstance(execution, dict) else None

    @property
    def summary(self) -> dict[str, Any] | None:
        summary = self.payload.get("summary")
        return summary if isinstance(summary, dict) else None


@dataclass(frozen=True, slots=True)
class RunError(Event):
    """``run.error``: a producer's structured error."""

    @property
    def code(self) -> str | None:
        return _str(self.payload.get("code"))

    @property
    def message(self) -> str | None:
        return _str(self.payload.get("message"))


@dataclass(frozen=True, slots=True)
class PhaseEvent(Event):
    """``run.phase.*`` / ``build.phase.*``: a producer-defined phase began or ended."""

    @property
    def phase(self) -> str | None:
        return _str(self.payload.get("phase"))


_TYPES: dict[str, type[Event]] = {
    "console.line": ConsoleLine,
    "run.completed": RunCompleted,
    "run.error": RunError,
    "run.phase.started": PhaseEvent,
    "run.phase.completed": PhaseEvent,
    "build.phase.started": PhaseEvent,
    "build.phase.completed": PhaseEvent,
}


def parse_event(envelope: Mapping[str, Any]) -> Event:
    """The typed event of a decoded envelope."""
    kind = str(envelope.get("type", ""))
    payload = envelope.get("payload")
    cls = _TYPES.get(kind, Event)
    return cls(
        type=kind,
        sequence=_int(envelope.get("sequence")) or 0,
        event_id=str(envelope.get("event_id", "")),
        created_at=str(envelope.get("created_at", "")),
        source=_str(envelope.get("source")),
        run_id=str(envelope.get("run_id", "")),
        workspace_id=str(envelope.get("workspace_id", "")),
        configuration_id=str(envelope.get("configuration_id", "")),
        payload=payload if isinstance(payload, dict) else {},
        raw=dict(envelope),
    )


@dataclass(frozen=True, slots=True)
class EventPage:
    """A JSON page of events; ``next_after_sequence`` is the cursor of the next page."""

    events: list[Event]
    next_after_sequence: int
    has_more: bool


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The sequences a batch got (``POST {run}/events``)."""

    first_sequence: int
    last_sequence: int
