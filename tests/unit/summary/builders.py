"""Builders of summary test input: events as ``(type, created_at, payload)`` tuples,
their envelopes, and hypothesis strategies of well-formed-looking and junk events.

Shared by the summary tests and the held-run fold tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from runevents.events import Event
from runevents.summary import RunSummaryBuilder

T0 = datetime(2026, 11, 24, 6, 0, 0, tzinfo=UTC)


def ts(ms: int) -> str:
    """RFC 3339 UTC ``ms`` milliseconds after T0."""
    return (T0 + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Ev = tuple[str, str | None, Any]


def summarize(events: Iterable[Ev]) -> dict[str, Any]:
    builder = RunSummaryBuilder()
    for type_, created_at, payload in events:
        builder.add(type_, created_at, payload)
    return builder.build()


def completed(at: int = 10_000, status: str = "succeeded", **payload: Any) -> Ev:
    return ("run.completed", ts(at), {"status": status, **payload})


def console(message: str = "x", stream: str = "stdout", level: str = "info", **extra: Any) -> Ev:
    payload = {"scope": "run", "stream": stream, "level": level, "message": message, **extra}
    return ("console.line", ts(0), payload)


def table(table_id: str, source_file: str, row_count: Any = 1, **extra: Any) -> Ev:
    payload = {
        "table_id": table_id,
        "source_file": source_file,
        "source_sheet": None,
        "table_index": 0,
        "row_count": row_count,
        "column_count": 3,
        **extra,
    }
    return ("run.table.summary", ts(0), payload)


def issue(severity: str = "error", code: str = "missing") -> Ev:
    return ("run.validation.issue", ts(0), {"severity": severity, "code": code, "row": 2})


def envelope(seq: int, type_: str, created_at: str | None, payload: Any) -> bytes:
    event = {
        "type": type_,
        "event_id": f"evt_{seq}",
        "created_at": created_at,
        "sequence": seq,
        "source": "worker",
        "workspace_id": "acme",
        "configuration_id": "etl",
        "run_id": "run_01JAAAAAAAAAAAAAAAAAAAAAAA",
        "build_id": None,
        "payload": payload,
    }
    return json.dumps(event).encode() + b"\n"


def event(seq: int, type_: str, created_at: str | None, payload: Any) -> Event:
    return Event(
        type=type_,
        event_id=f"evt_{seq}",
        created_at=created_at,  # type: ignore[arg-type]  # None: a producer's odd input, kept
        sequence=seq,
        source="producer",
        workspace_id="acme",
        configuration_id="etl",
        run_id="run_01JAAAAAAAAAAAAAAAAAAAAAAA",
        build_id=None,
        payload=payload,
    )


def events_of(items: Iterable[Ev]) -> list[Event]:
    return [event(i + 1, *item) for i, item in enumerate(items)]


# -- strategies ---------------------------------------------------------------------------

TYPES = [
    "run.queued",
    "run.started",
    "run.completed",
    "console.line",
    "run.phase.started",
    "run.phase.completed",
    "build.phase.started",
    "build.phase.completed",
    "run.table.summary",
    "run.validation.summary",
    "run.validation.issue",
    "run.error",
    "custom.thing",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
small_names = st.sampled_from(["a", "b", "info", "warning", "error", "critical", "x"])
counts = st.dictionaries(small_names, st.integers(0, 5), max_size=3)
validation_blocks = st.fixed_dictionaries(
    {},
    optional={
        "issues_total": st.integers(0, 9),
        "issues_by_severity": counts,
        "issues_by_code": counts,
        "max_severity": small_names | st.none(),
    },
)
# Well-formed-looking payloads, so the interesting branches are reached, mixed with junk.
field_values = {
    "phase": small_names,
    "status": st.sampled_from(["succeeded", "failed", "cancelled"]),
    "duration_ms": st.integers(0, 10_000) | st.none(),
    "table_id": small_names,
    "source_file": small_names,
    "row_count": st.integers(0, 100) | st.none(),
    "validation": validation_blocks,
    "severity": small_names,
    "code": small_names,
    "stream": st.sampled_from(["stdout", "stderr"]),
    "level": st.sampled_from(["info", "warning"]),
    "message": st.text(max_size=20),
    "truncated": st.booleans(),
    "stage": small_names,
}
shaped_payloads = st.fixed_dictionaries(
    {}, optional={key: value | json_values for key, value in field_values.items()}
)
timestamps = st.none() | st.text(max_size=10) | st.integers(0, 10**7).map(ts)
events_strategy = st.lists(
    st.tuples(st.sampled_from(TYPES), timestamps, shaped_payloads | json_values), max_size=25
)
