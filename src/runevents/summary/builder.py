"""The run summary builder: events in, one summary object out (rules in the package docstring)."""

from __future__ import annotations

import copy
import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

from runevents.exceptions import InvalidEvent
from runevents.masking import MASKED_KEY
from runevents.summary.telemetry import (
    Malformed,
    Validation,
    as_object,
    duration_ms,
    max_severity,
    merge_validations,
    opt_dict,
    opt_int,
    opt_str,
    parse_validation,
    req_str,
    validation_dict,
)

SUMMARY_SCHEMA = "runevents.run_summary/v1"
#: cap of ``console_snippet`` (bytes of UTF-8), the contract's "at most 4 KiB"
SNIPPET_BYTES = 4096

_PHASE_TYPES: dict[str, tuple[str, bool]] = {
    "run.phase.started": ("run", True),
    "run.phase.completed": ("run", False),
    "build.phase.started": ("build", True),
    "build.phase.completed": ("build", False),
}


class _EnvelopeView(msgspec.Struct):
    """The three envelope fields the summary reads; msgspec skips the rest unparsed."""

    type: str
    created_at: str | None = None
    payload: Any = None


_ENVELOPE_DECODER = msgspec.json.Decoder(_EnvelopeView)


# -- per-event state ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Table:
    source_file: str
    row_count: int | None
    validation: Validation | None


@dataclasses.dataclass(slots=True)
class _Phase:
    scope: str
    phase: str
    started_at: str | None
    completed: bool = False
    completed_at: str | None = None
    status: str | None = None
    duration_ms: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Completed:
    created_at: str | None
    status: str | None
    failure: dict[str, Any] | None
    execution: dict[str, Any] | None


def _sum_rows(tables: Iterable[_Table]) -> int | None:
    total = 0
    for table in tables:
        if table.row_count is None:
            return None
        total += table.row_count
    return total


class RunSummaryBuilder:
    """Pure reducer: feed events in sequence order, then :meth:`build`.

    ``build()`` does not change the builder: it may be called at any point (a
    live run's summary so far) and again after more events.
    """

    def __init__(self) -> None:
        self._lines_read = 0
        self._total = 0
        self._by_type: dict[str, int] = {}
        self._ignored = 0
        self._console_lines = 0
        self._by_stream: dict[str, int] = {}
        self._by_level: dict[str, int] = {}
        self._truncated = 0
        #: secret replacements recorded in the events (``payload.masked``, see masking.py)
        self._masked = 0
        #: the latest console messages: just enough to fill SNIPPET_BYTES of UTF-8
        self._snippet: deque[str] = deque()
        #: characters in _snippet, counting one per joining newline
        self._snippet_chars = 0
        self._phases: list[_Phase] = []
        #: (scope, phase) -> indexes into _phases of starts not yet completed
        self._open_phases: dict[tuple[str, str], list[int]] = {}
        self._tables: dict[str, _Table] = {}
        self._validation_summary: Validation | None = None
        self._issues_total = 0
        self._issues_by_severity: dict[str, int] = {}
        self._issues_by_code: dict[str, int] = {}
        self._last_error: dict[str, Any] | None = None
        self._first_started_at: str | None = None
        self._seen_started = False
        self._completed: _Completed | None = None

    # -- input ----------------------------------------------------------------

    def add(self, type: str, created_at: str | None, payload: Any) -> None:
        """Reduce one event. Malformed telemetry is counted in ``events.ignored``, never raised."""
        self._total += 1
        self._by_type[type] = self._by_type.get(type, 0) + 1
        if isinstance(payload, dict) and MASKED_KEY in payload:
            masked = payload[MASKED_KEY]
            # the server writes a positive int; anything else is not a count
            if masked.__class__ is int and masked > 0:
                self._masked += masked
        try:
            phase_kind = _PHASE_TYPES.get(type)
            if phase_kind is not None:
                scope, started = phase_kind
                if started:
                    self._on_phase_started(scope, created_at, as_object(payload))
                else:
                    self._on_phase_completed(scope, created_at, as_object(payload))
                return
            handler = _HANDLERS.get(type)
            if handler is not None:
                handler(self, created_at, payload)
        except Malformed:
            self._ignored += 1

    def add_line(self, line: bytes) -> None:
        """Reduce one NDJSON envelope line; blank lines are skipped.

        Raises InvalidEvent if the line is not a JSON object with a string ``type``.
        """
        self._lines_read += 1
        if not line.strip():
            return
        try:
            envelope = _ENVELOPE_DECODER.decode(line)
        except msgspec.DecodeError as exc:
            raise InvalidEvent(f"not an event envelope: {exc}", line=self._lines_read) from None
        self.add(envelope.type, envelope.created_at, envelope.payload)

    def add_chunk(self, data: bytes) -> None:
        """Reduce a block of complete NDJSON lines (e.g. an ``eventlog`` Chunk's ``data``).

        Lines are split on ``\\n`` only: U+2028 and lone ``\\r`` are JSON-escaped
        inside strings and must never end a line.
        """
        for line in data.split(b"\n"):
            if line:
                self.add_line(line)

    # -- handlers -----------------------------------------------------------------

    def _on_run_started(self, created_at: str | None, payload: Any) -> None:
        if not self._seen_started:
            self._seen_started = True
            self._first_started_at = created_at

    def _on_run_completed(self, created_at: str | None, payload: Any) -> None:
        body = as_object(payload)
        # payload["summary"] is deliberately not read: the server replaces it.
        status = opt_str(body, "status")
        failure = opt_dict(body, "failure")
        execution = opt_dict(body, "execution")
        self._completed = _Completed(
            created_at, status, copy.deepcopy(failure), copy.deepcopy(execution)
        )

    def _on_console_line(self, created_at: str | None, payload: Any) -> None:
        # The hot path (nearly every event of a big log): checks are inlined.
        if not isinstance(payload, dict):
            raise Malformed
        stream = payload.get("stream")
        level = payload.get("level")
        message = payload.get("message")
        scope = payload.get("scope")
        for value in (stream, level, message, scope):
            if value is not None and not isinstance(value, str):
                raise Malformed
        self._console_lines += 1
        if stream is not None:
            self._by_stream[stream] = self._by_stream.get(stream, 0) + 1
        if level is not None:
            self._by_level[level] = self._by_level.get(level, 0) + 1
        # The executor marks lines cut at max_line_bytes with truncated=true.
        if payload.get("truncated") is True:
            self._truncated += 1
        if message is not None:
            self._keep_console(message)

    def _on_phase_started(self, scope: str, created_at: str | None, body: dict[str, Any]) -> None:
        name = req_str(body, "phase")
        self._open_phases.setdefault((scope, name), []).append(len(self._phases))
        self._phases.append(_Phase(scope, name, created_at))

    def _on_phase_completed(self, scope: str, created_at: str | None, body: dict[str, Any]) -> None:
        name = req_str(body, "phase")
        status = opt_str(body, "status")
        duration = opt_int(body, "duration_ms")
        open_starts = self._open_phases.get((scope, name))
        if not open_starts:
            return  # a completion without a start adds no entry
        phase = self._phases[open_starts.pop()]
        phase.completed = True
        phase.completed_at = created_at
        phase.status = status
        phase.duration_ms = duration

    def _on_table_summary(self, created_at: str | None, payload: Any) -> None:
        body = as_object(payload)
        table_id = req_str(body, "table_id")
        source_file = req_str(body, "source_file")
        opt_str(body, "source_sheet")
        opt_int(body, "table_index")
        opt_int(body, "column_count")
        row_count = opt_int(body, "row_count")
        block = opt_dict(body, "validation")
        validation = parse_validation(block) if block is not None else None
        # A later summary of the same table replaces the earlier one.
        self._tables[table_id] = _Table(source_file, row_count, validation)

    def _on_validation_summary(self, created_at: str | None, payload: Any) -> None:
        self._validation_summary = parse_validation(as_object(payload))

    def _on_validation_issue(self, created_at: str | None, payload: Any) -> None:
        body = as_object(payload)
        severity = req_str(body, "severity")
        code = req_str(body, "code")
        opt_str(body, "field")
        opt_str(body, "message")
        self._issues_total += 1
        self._issues_by_severity[severity] = self._issues_by_severity.get(severity, 0) + 1
        self._issues_by_code[code] = self._issues_by_code.get(code, 0) + 1

    def _on_run_error(self, created_at: str | None, payload: Any) -> None:
        body = as_object(payload)
        error = {key: opt_str(body, key) for key in ("stage", "code", "message")}
        opt_str(body, "phase")
        self._last_error = error

    def _keep_console(self, message: str) -> None:
        # Count characters, not bytes, to avoid encoding every line: a character
        # is at least one UTF-8 byte, so messages are only dropped once the ones
        # after them certainly fill the byte window. Encoding happens on read.
        if len(message) >= SNIPPET_BYTES:
            # This message alone fills the window: everything before it is out.
            self._snippet.clear()
            self._snippet_chars = 0
            message = message[-SNIPPET_BYTES:]
        elif self._snippet:
            self._snippet_chars += 1  # the "\n" joining it to the previous message
        self._snippet.append(message)
        self._snippet_chars += len(message)
        snippet = self._snippet
        while len(snippet) > 1 and self._snippet_chars - len(snippet[0]) - 1 >= SNIPPET_BYTES:
            self._snippet_chars -= len(snippet.popleft()) + 1

    # -- output -------------------------------------------------------------------

    @property
    def console_snippet(self) -> str:
        """Tail of the console output (messages joined by ``\\n``), at most 4096 bytes of UTF-8.

        Cut on a character boundary at the start, so it may be a few bytes shorter.
        """
        # "replace": a str may hold a lone surrogate, which UTF-8 cannot encode.
        tail = "\n".join(self._snippet).encode("utf-8", "replace")[-SNIPPET_BYTES:]
        start = 0
        while start < len(tail) and tail[start] & 0xC0 == 0x80:  # UTF-8 continuation byte
            start += 1
        return tail[start:].decode("utf-8")

    def build(self) -> dict[str, Any]:
        """The run summary (contract section 2.1) of the events added so far."""
        completed = self._completed
        status = completed.status if completed else None
        failure = copy.deepcopy(completed.failure) if completed else None
        if failure is None and status == "failed" and self._last_error is not None:
            failure = dict(self._last_error)
        return {
            "schema": SUMMARY_SCHEMA,
            "status": status,
            "failure": failure,
            "execution": self._execution(),
            "events": {
                "total": self._total,
                "by_type": dict(sorted(self._by_type.items())),
                "ignored": self._ignored,
            },
            "console": {
                "lines": self._console_lines,
                "by_stream": dict(sorted(self._by_stream.items())),
                "by_level": dict(sorted(self._by_level.items())),
                "truncated": self._truncated,
                "masked": self._masked,
            },
            "phases": list(self._phase_entries()),
            "tables": self._tables_summary(),
            "validation": self._validation(),
        }

    def _execution(self) -> dict[str, Any]:
        completed = self._completed
        if completed is not None and completed.execution is not None:
            return copy.deepcopy(completed.execution)
        completed_at = completed.created_at if completed else None
        return {
            "exit_code": None,
            "started_at": self._first_started_at,
            "completed_at": completed_at,
            "duration_ms": duration_ms(self._first_started_at, completed_at),
        }

    def _phase_entries(self) -> Iterator[dict[str, Any]]:
        run_end = self._completed.created_at if self._completed else None
        # For each start, the created_at of the next start of the same scope (else the run's end).
        next_start: list[str | None] = [None] * len(self._phases)
        following: dict[str, str | None] = {}
        for index in range(len(self._phases) - 1, -1, -1):
            phase = self._phases[index]
            next_start[index] = following.get(phase.scope, run_end)
            following[phase.scope] = phase.started_at
        for index, phase in enumerate(self._phases):
            if phase.completed:
                duration = phase.duration_ms
                if duration is None:
                    duration = duration_ms(phase.started_at, phase.completed_at)
            else:
                duration = duration_ms(phase.started_at, next_start[index])
            yield {
                "scope": phase.scope,
                "phase": phase.phase,
                "status": phase.status,
                "duration_ms": duration,
            }

    def _tables_summary(self) -> dict[str, Any]:
        by_file: dict[str, list[_Table]] = {}
        for table in self._tables.values():
            by_file.setdefault(table.source_file, []).append(table)
        return {
            "input_file_count": len(by_file),
            "table_count": len(self._tables),
            "row_count": _sum_rows(self._tables.values()),
            "by_file": [
                {
                    "source_file": source_file,
                    "table_count": len(tables),
                    "row_count": _sum_rows(tables),
                    "issues_total": sum(t.validation.issues_total for t in tables if t.validation),
                }
                for source_file, tables in sorted(by_file.items())
            ],
        }

    def _validation(self) -> dict[str, Any]:
        # Precedence: the last run.validation.summary; else the tables' validation
        # blocks summed; else counts of run.validation.issue events; else zeros.
        summary = self._validation_summary
        if summary is not None:
            by_severity = summary.by_severity or {}
            declared = [summary.declared_max] if summary.by_severity is None else []
            return validation_dict(
                summary.issues_total,
                by_severity,
                summary.by_code,
                max_severity(by_severity, declared),
            )
        blocks = [t.validation for t in self._tables.values() if t.validation is not None]
        if blocks:
            return merge_validations(blocks)
        return validation_dict(
            self._issues_total,
            self._issues_by_severity,
            self._issues_by_code,
            max_severity(self._issues_by_severity),
        )


#: an event handler: an unbound method of the builder, given (created_at, payload)
_Handler = Callable[[RunSummaryBuilder, str | None, Any], None]

_HANDLERS: dict[str, _Handler] = {
    "run.started": RunSummaryBuilder._on_run_started,
    "run.completed": RunSummaryBuilder._on_run_completed,
    "console.line": RunSummaryBuilder._on_console_line,
    "run.table.summary": RunSummaryBuilder._on_table_summary,
    "run.validation.summary": RunSummaryBuilder._on_validation_summary,
    "run.validation.issue": RunSummaryBuilder._on_validation_issue,
    "run.error": RunSummaryBuilder._on_run_error,
}


def summarize_lines(lines: Iterable[bytes]) -> dict[str, Any]:
    """The summary of a log given as NDJSON lines (InvalidEvent on a line that is not an event)."""
    builder = RunSummaryBuilder()
    for line in lines:
        builder.add_line(line)
    return builder.build()


def run_fields(summary: dict[str, Any]) -> dict[str, Any]:
    """The run row's fields derived from a summary (contract 2.1, last rule)."""
    tables = summary["tables"]
    return {
        "input_file_count": tables["input_file_count"],
        "table_count": tables["table_count"],
        "row_count": tables["row_count"],
        "max_validation_severity": summary["validation"]["max_severity"],
    }
