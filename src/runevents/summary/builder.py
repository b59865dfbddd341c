"""The run summary builder: events in, one bounded summary out (rules: the package docstring)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from runevents.events import Event
from runevents.exceptions import InvalidEvent
from runevents.masking import MASKED_KEY
from runevents.summary.bounds import (
    MAX_ENTRIES,
    MAX_MESSAGE_CHARS,
    Counts,
    bounded_block,
    cap_str,
    fit_summary,
    storable,
)
from runevents.summary.phases import Phases
from runevents.summary.snippet import ConsoleSnippet
from runevents.summary.tables import Tables, ValidationSums, keyed_block
from runevents.summary.telemetry import (
    Malformed,
    as_object,
    clamp,
    duration_ms,
    opt_dict,
    opt_int,
    opt_str,
    parse_validation,
    req_str,
)

SUMMARY_SCHEMA = "runevents.run_summary/v1"
_FAILURE_KEYS = ("stage", "code", "message")
_EXECUTION_KEYS = ("exit_code", "started_at", "completed_at", "duration_ms")
#: the row's exit_code column is a 32-bit INTEGER (on Postgres)
_EXIT_CODE_MIN, _EXIT_CODE_MAX = -(2**31), 2**31 - 1

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
class _Completed:
    created_at: str | None
    status: str | None
    failure: dict[str, Any] | None
    execution: dict[str, Any] | None


class RunSummaryBuilder:
    """Pure reducer: feed events in sequence order, then :meth:`build`.

    ``build()`` does not change the builder: it may be called at any point (a
    live run's summary so far) and again after more events. Memory is bounded
    whatever the run produced (see ``summary/bounds.py`` and ``summary/tables.py``).
    """

    def __init__(self, *, max_entries: int = MAX_ENTRIES) -> None:
        #: entries each list or map keeps (the contract's 1,000; smaller in tests)
        self._max_entries = max_entries
        self._lines_read = 0
        self._total = 0
        self._by_type = Counts(max_entries)
        self._ignored = 0
        self._console_lines = 0
        self._by_stream = Counts(max_entries)
        self._by_level = Counts(max_entries)
        self._truncated = 0
        #: secret replacements recorded in the events (``payload.masked``, see masking.py)
        self._masked = 0
        #: the latest console messages: just enough to fill 4 KiB of UTF-8
        self._snippet = ConsoleSnippet()
        self._phases = Phases(max_entries)
        self._tables = Tables(max_entries)
        self._validation_summary: ValidationSums | None = None
        self._issues = ValidationSums(max_entries)
        self._last_error: dict[str, Any] | None = None
        self._first_started_at: str | None = None
        self._seen_started = False
        self._completed: _Completed | None = None

    # -- input ----------------------------------------------------------------

    def add(self, type: str, created_at: str | None, payload: Any) -> None:
        """Reduce one event. Malformed telemetry is counted in ``events.ignored``, never raised."""
        self._total += 1
        kept_types = self._by_type.kept
        # kept holds only names that are their own key: a hit on a raw name is exact
        if type in kept_types:
            kept_types[type] += 1
        else:
            self._by_type.add_name(type)
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

    def add_events(self, events: Sequence[Event]) -> None:
        """Reduce a batch of events (the live path: each durable batch as it is appended).

        Same result as :meth:`add` of each, faster: console lines (nearly every
        event) are counted inline and only the batch's last 4 KiB of messages
        reach the snippet.
        """
        streams = self._by_stream.kept
        levels = self._by_level.kept
        messages: list[str] = []
        keep = messages.append
        lines = cut_lines = 0
        try:
            for event in events:
                payload = event.payload
                if event.type != "console.line":
                    self.add(event.type, event.created_at, payload)
                    continue
                if payload.__class__ is not dict:
                    self._add_console_slowly(payload, messages)
                    continue
                stream = payload.get("stream")
                level = payload.get("level")
                message = payload.get("message")
                if (
                    stream.__class__ is not str
                    or level.__class__ is not str
                    or message.__class__ is not str
                    or payload.get("scope").__class__ is not str
                ):
                    self._add_console_slowly(payload, messages)  # a None, or a wrong type
                    continue
                # The common line, inlined: this runs for nearly every event of a run.
                # (try: one dict lookup for a kept name, and free when it does not raise)
                lines += 1
                # (kept holds only names that are their own key: a hit on a raw name is exact)
                try:
                    streams[stream] += 1
                except KeyError:
                    self._by_stream.add_name(stream)
                try:
                    levels[level] += 1
                except KeyError:
                    self._by_level.add_name(level)
                if len(payload) != 4:
                    # only the four keys read above: no truncated flag, no masked count
                    if payload.get("truncated") is True:
                        cut_lines += 1
                    masked = payload.get(MASKED_KEY)
                    if masked is not None and masked.__class__ is int and masked > 0:
                        self._masked += masked
                keep(message)
        finally:
            # Also on an unexpected error: the lines counted so far are in the state.
            if lines:
                self._total += lines
                self._by_type.add("console.line", lines)
                self._console_lines += lines
                self._truncated += cut_lines
            self._snippet.keep_tail(messages)

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

    def copy(self) -> RunSummaryBuilder:
        """An independent builder in the same state (cost: O(kept entries), not O(events))."""
        twin = copy.copy(self)  # the scalars; every mutable container is replaced below
        twin._by_type = self._by_type.copy()
        twin._by_stream = self._by_stream.copy()
        twin._by_level = self._by_level.copy()
        twin._snippet = self._snippet.copy()
        twin._phases = self._phases.copy()
        twin._tables = self._tables.copy()
        # _validation_summary is replaced, never changed, once built; _last_error and
        # _completed likewise: sharing them is safe.
        twin._issues = self._issues.copy()
        return twin

    def with_events(self, pending: Sequence[Event]) -> RunSummaryBuilder:
        """A copy with ``pending`` added; this builder is unchanged (for its snippet too)."""
        twin = self.copy()
        twin.add_events(pending)
        return twin

    def preview(self, pending: Sequence[Event]) -> dict[str, Any]:
        """``build()`` as if ``pending`` were added, without changing this builder.

        For completion: the summary goes into ``run.completed`` before the commit;
        if the commit fails, nothing here has moved.
        """
        return self.with_events(pending).build()

    # -- handlers -----------------------------------------------------------------

    def _on_run_started(self, created_at: str | None, payload: Any) -> None:
        if not self._seen_started:
            self._seen_started = True
            self._first_started_at = created_at

    def _on_run_completed(self, created_at: str | None, payload: Any) -> None:
        body = as_object(payload)
        # payload["summary"] is deliberately not read: the server replaces it.
        status = opt_str(body, "status")
        failure = bounded_block(body.get("failure"), _FAILURE_KEYS)
        execution = bounded_block(body.get("execution"), _EXECUTION_KEYS)
        status = None if status is None else cap_str(status)
        self._completed = _Completed(created_at, status, failure, execution)

    def _add_console_slowly(self, payload: Any, messages: list[str]) -> None:
        self._total += 1
        self._by_type.add("console.line")
        if isinstance(payload, dict):
            masked = payload.get(MASKED_KEY)
            if masked.__class__ is int and masked > 0:
                self._masked += masked
        try:
            message = self._count_console(payload)
        except Malformed:
            self._ignored += 1
            return
        if message is not None:
            messages.append(message)

    def _on_console_line(self, created_at: str | None, payload: Any) -> None:
        message = self._count_console(payload)
        if message is not None:
            self._snippet.keep(message)

    def _count_console(self, payload: Any) -> str | None:
        """Count one console.line; its message (None if none). The hot path: checks inlined."""
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
        # kept holds only names that are their own key: a hit on a raw name is exact
        if stream is not None:
            kept = self._by_stream.kept
            if stream in kept:
                kept[stream] += 1
            else:
                self._by_stream.add_name(stream)
        if level is not None:
            kept = self._by_level.kept
            if level in kept:
                kept[level] += 1
            else:
                self._by_level.add_name(level)
        # The executor marks lines cut at max_line_bytes with truncated=true.
        if payload.get("truncated") is True:
            self._truncated += 1
        return message  # checked above: str or None

    def _on_phase_started(self, scope: str, created_at: str | None, body: dict[str, Any]) -> None:
        self._phases.start(scope, req_str(body, "phase"), created_at)

    def _on_phase_completed(self, scope: str, created_at: str | None, body: dict[str, Any]) -> None:
        name = req_str(body, "phase")
        status = opt_str(body, "status")
        duration = opt_int(body, "duration_ms")
        self._phases.complete(scope, name, created_at, status, duration)

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
        self._tables.add(table_id, source_file, row_count, validation)

    def _on_validation_summary(self, created_at: str | None, payload: Any) -> None:
        sums = ValidationSums(self._max_entries)
        sums.add_block(keyed_block(parse_validation(as_object(payload))))
        self._validation_summary = sums

    def _on_validation_issue(self, created_at: str | None, payload: Any) -> None:
        body = as_object(payload)
        severity = req_str(body, "severity")
        code = req_str(body, "code")
        opt_str(body, "field")
        opt_str(body, "message")
        self._issues.add_issue(severity, code)

    def _on_run_error(self, created_at: str | None, payload: Any) -> None:
        body = as_object(payload)
        error: dict[str, Any] = {}
        for key in _FAILURE_KEYS:
            value = opt_str(body, key)
            limit = MAX_MESSAGE_CHARS if key == "message" else 256
            error[key] = None if value is None else cap_str(value, limit)
        opt_str(body, "phase")
        self._last_error = error

    # -- output -------------------------------------------------------------------

    @property
    def console_snippet(self) -> str:
        """Tail of the console output (messages joined by ``\\n``), at most 4096 bytes of UTF-8.

        Cut on a character boundary at the start, so it may be a few bytes shorter
        (``summary/snippet.py``).
        """
        return self._snippet.text

    def build(self) -> dict[str, Any]:
        """The run summary (contract section 2.1) of the events added so far, at most 256 KiB."""
        truncated: dict[str, int] = {}
        completed = self._completed
        status = completed.status if completed else None
        failure = copy.deepcopy(completed.failure) if completed else None
        if failure is None and status == "failed" and self._last_error is not None:
            failure = dict(self._last_error)
        for path, counts in (
            ("events.by_type", self._by_type),
            ("console.by_stream", self._by_stream),
            ("console.by_level", self._by_level),
        ):
            cut = counts.cut()
            if cut:
                truncated[path] = cut
        if self._phases.cut():
            truncated["phases"] = self._phases.cut()
        tables, table_validation = self._tables.output(
            truncated, with_validation=self._validation_summary is None
        )
        # Precedence: the last run.validation.summary; else the tables' validation
        # blocks summed; else counts of run.validation.issue events (zeros if none).
        validation = self._validation_summary or table_validation or self._issues
        summary = {
            "schema": SUMMARY_SCHEMA,
            "status": status,
            "failure": failure,
            "execution": self._execution(),
            "events": {
                "total": self._total,
                "by_type": self._by_type.as_dict(),
                "ignored": self._ignored,
            },
            "console": {
                "lines": self._console_lines,
                "by_stream": self._by_stream.as_dict(),
                "by_level": self._by_level.as_dict(),
                "truncated": self._truncated,
                "masked": clamp(self._masked),
            },
            "phases": list(self._phases.entries(completed.created_at if completed else None)),
            "tables": tables,
            "validation": validation.output(truncated),
        }
        summary["truncated"] = dict(sorted(truncated.items()))
        return fit_summary(summary)

    def _execution(self) -> dict[str, Any]:
        completed = self._completed
        if completed is not None and completed.execution is not None:
            return copy.deepcopy(completed.execution)
        completed_at = completed.created_at if completed else None
        started_at = self._first_started_at
        return {
            "exit_code": None,
            # the envelope's own strings: RFC 3339 from the server, but a log is any text
            "started_at": None if started_at is None else storable(started_at),
            "completed_at": None if completed_at is None else storable(completed_at),
            "duration_ms": duration_ms(started_at, completed_at),
        }


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


def row_exit_code(summary: dict[str, Any]) -> int | None:
    """The row's ``exit_code``: the summary's ``execution.exit_code`` when it is an int the
    column holds (32 bits), else None -- a producer's ``true`` or ``10**20`` must not fail
    the completion (contract 2.1); the summary keeps the value as sent."""
    execution = summary.get("execution")
    code = execution.get("exit_code") if isinstance(execution, dict) else None
    if isinstance(code, int) and not isinstance(code, bool):
        return code if _EXIT_CODE_MIN <= code <= _EXIT_CODE_MAX else None
    return None


def run_fields(summary: dict[str, Any]) -> dict[str, Any]:
    """The run row's fields derived from a summary (contract 2.1, last rule)."""
    tables = summary["tables"]
    return {
        "input_file_count": tables["input_file_count"],
        "table_count": tables["table_count"],
        "row_count": tables["row_count"],
        "max_validation_severity": summary["validation"]["max_severity"],
    }
