"""The event envelope and its byte-exact NDJSON codec.

One event is one line of a run's log: the envelope of contract section 2,
encoded as compact JSON with the fields in the contract's order, followed by
``\\n``. msgspec does the encoding and decoding (fast, typed).

Line safety, decided once here:

* JSON escapes every control character, so an encoded event never holds a raw
  ``\\n`` or ``\\r``; logs are split on ``b"\\n"`` only. U+2028/U+2029 and emoji
  are stored as raw UTF-8 (valid JSON, and nothing here splits on them;
  callers must never use ``str.splitlines()``).
* Lone surrogates: Python strings handed to the writer (for example a child's
  output decoded with ``surrogateescape``) may hold code points that UTF-8
  cannot encode. They are **replaced** with U+FFFD at encoding time, and an
  escaped surrogate pair (``"\\ud83d\\ude00"`` as two code points) is joined into
  the character it stands for, so a run never loses a line to a bad byte.
* Producer input over HTTP is **rejected** instead (:func:`parse_draft`): bytes
  that are not UTF-8, or a JSON ``\\uD800`` escape without its pair, make the
  line invalid (422 naming the line), because the producer can fix it.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec

from runevents.exceptions import InvalidEvent, InvalidInput
from runevents.timestamps import normalize_created_at

#: the type of the event that ends every run's log, exactly once
RUN_COMPLETED = "run.completed"
#: the final statuses a ``run.completed`` payload states (contract section 2)
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
#: the event types the contract pins (sections 2 and 4): readers, the summary and
#: the run row act on these names, so masking never rewrites them (``masking.py``)
CONTRACT_TYPES = frozenset(
    {
        "run.queued",
        "run.started",
        "run.completed",
        "run.error",
        "run.phase.started",
        "run.phase.completed",
        "run.table.summary",
        "run.validation.summary",
        "run.validation.issue",
        "build.created",
        "build.started",
        "build.completed",
        "build.phase.started",
        "build.phase.completed",
        "console.line",
        "console.truncated",
        "log.recovered",
    }
)
#: event types only the server writes: no producer sends them, no job prints them
SERVER_ONLY_TYPES = frozenset({"run.queued", "log.recovered"})
#: the lifecycle of an executed run, written by its executor and manager: its job's
#: output may not forge them (an external run's producer owns its own lifecycle)
EXECUTOR_TYPES = frozenset(
    {
        "run.started",
        "run.completed",
        "build.created",
        "build.started",
        "build.phase.started",
        "build.phase.completed",
        "build.completed",
    }
)
#: longest event ``type`` a producer or a job may send
MAX_TYPE_CHARS = 128
#: the type of a line of output (contract section 2)
CONSOLE_LINE = "console.line"
#: a console line's pinned values (contract section 2)
CONSOLE_SCOPES = frozenset({"run", "build"})
CONSOLE_STREAMS = frozenset({"stdout", "stderr"})
CONSOLE_LEVELS = frozenset({"debug", "info", "warning", "error"})
#: the level of a console line that names none: its stream's (stderr is ``warning``)
STREAM_LEVELS: dict[str, str] = {"stdout": "info", "stderr": "warning"}
#: the payload keys the contract pins per event type (sections 2 and 2.1), nested
#: objects as their own map; a set lists the values of an enum. Masking never
#: rewrites these keys, nor an enum's value (``masking.py``); every other
#: string -- their other values included -- is masked as usual.
PayloadSpec: TypeAlias = dict[str, "PayloadSpec | frozenset[str] | None"]
_PHASE_KEYS: PayloadSpec = dict.fromkeys(("phase", "message", "status", "duration_ms"))
_BUILD_KEYS: PayloadSpec = dict.fromkeys(
    ("status", "reason", "phase", "exit_code", "duration_ms", "content_hash", "index", "command")
)
_VALIDATION_KEYS: PayloadSpec = dict.fromkeys(
    ("issues_total", "issues_by_severity", "issues_by_code", "max_severity")
)
PINNED_PAYLOAD_KEYS: dict[str, PayloadSpec] = {
    "run.queued": dict.fromkeys(("status", "mode", "options")),
    "run.started": dict.fromkeys(("status", "command")),
    "build.created": _BUILD_KEYS,
    "build.started": _BUILD_KEYS,
    "build.phase.started": _BUILD_KEYS,
    "build.phase.completed": _BUILD_KEYS,
    "build.completed": _BUILD_KEYS,
    "run.phase.started": _PHASE_KEYS,
    "run.phase.completed": _PHASE_KEYS,
    CONSOLE_LINE: {
        "scope": CONSOLE_SCOPES,
        "stream": CONSOLE_STREAMS,
        "level": CONSOLE_LEVELS,
        "message": None,
        "phase": None,
        "logger": None,
        "truncated": None,
        "truncated_bytes": None,
    },
    "run.table.summary": {
        **dict.fromkeys(
            ("table_id", "source_file", "source_sheet", "table_index", "row_count", "column_count")
        ),
        "validation": _VALIDATION_KEYS,
    },
    "run.validation.summary": _VALIDATION_KEYS,
    "run.validation.issue": dict.fromkeys(("severity", "code", "field", "row", "message")),
    "run.error": dict.fromkeys(("stage", "code", "message", "phase")),
    "log.recovered": dict.fromkeys(("cut_bytes", "cut_events", "reason")),
    "run.completed": {
        "status": FINAL_STATUSES,
        "failure": dict.fromkeys(("stage", "code", "message")),
        "execution": dict.fromkeys(("exit_code", "started_at", "completed_at", "duration_ms")),
        "artifacts": dict.fromkeys(("output_paths", "events_path")),
        "summary": None,
    },
}
#: run.completed's ``failure`` (the executor's result is masked with these keys kept)
FAILURE_KEYS: PayloadSpec = dict.fromkeys(("stage", "code", "message"))


def type_problem(kind: str, *, executed: bool) -> str | None:
    """Why an event of type ``kind`` may not come from a producer (``executed``: from a
    job's output), else None. The one rule for both (contract sections 2 and 6)."""
    if not kind:
        return "type must be a non-empty string"
    if len(kind) > MAX_TYPE_CHARS:
        return f"type is longer than {MAX_TYPE_CHARS} characters"
    if kind in SERVER_ONLY_TYPES:
        return f"{kind} is written by the server only"
    if executed and kind in EXECUTOR_TYPES:
        return f"{kind} of an executed run is written by the server only"
    return None


def console_problem(
    payload: dict[str, Any], *, scope: str = "run", stream: str = "stdout"
) -> str | None:
    """Why ``payload`` is not a console line's (contract section 2), else None.

    ``message`` must be a string; ``scope``, ``stream`` and ``level`` one of
    their values. One left out is filled in place (the checks passed): the
    given ``scope`` and ``stream`` (a job's: where it printed the line; a
    producer's: ``run``, ``stdout``) and that stream's level.
    """
    message = payload.get("message")
    if type(message) is not str:
        return "a console.line's payload.message must be a string"
    scope = payload.get("scope", scope)
    line_stream = payload.get("stream", stream)
    level = payload.get("level", _NO_LEVEL)
    if type(scope) is not str or scope not in CONSOLE_SCOPES:
        return "a console.line's payload.scope must be run or build"
    if type(line_stream) is not str or line_stream not in CONSOLE_STREAMS:
        return "a console.line's payload.stream must be stdout or stderr"
    if level is not _NO_LEVEL and (type(level) is not str or level not in CONSOLE_LEVELS):
        return "a console.line's payload.level must be debug, info, warning or error"
    if "scope" not in payload or "stream" not in payload or level is _NO_LEVEL:
        filled = {
            "scope": scope,
            "stream": line_stream,
            "level": STREAM_LEVELS[line_stream] if level is _NO_LEVEL else level,
            **payload,
        }
        payload.clear()
        payload.update(filled)
    return None


_NO_LEVEL: Any = object()


#: how an encoded run.completed line starts (the type is the first field)
RUN_COMPLETED_PREFIX = b'{"type":"run.completed",'
#: how the LAST line of every write unit (one ingest batch, one executor emit, one
#: server event) ends; its other lines end with ``b"\n"``. JSON allows the trailing
#: space, so readers and clients take the line as it is; crash recovery uses it to
#: find where the last unit that reached the disk whole ends (contract section 2.2).
UNIT_END = b" \n"
#: what a stored line may add to the event a producer sent, on top of the event limit
#: (contract 6 limits the event the producer sends: it cannot know the envelope): the
#: server's fields (``event_id``, ``sequence``, ``created_at``, the ids: well under
#: 1 KiB) and JSON re-encoding (``1e5`` is stored as ``100000.0``). A stored line
#: past ``max_event_bytes`` plus this is still refused (413), whole.
ENVELOPE_ALLOWANCE = 64 * 1024


class Event(msgspec.Struct, kw_only=True, gc=False):
    """One envelope (contract section 2). Field order is the serialized order.

    ``gc=False``: an event never takes part in a reference cycle (its payload is
    a plain JSON tree), and skipping GC tracking makes millions of them cheaper.
    """

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


class EventDraft(msgspec.Struct, kw_only=True, gc=False):
    """What a producer hands to a writer; the writer fills in the rest of the envelope."""

    type: str
    payload: dict[str, Any] = {}
    created_at: str | None = None
    source: str | None = None
    build_id: str | None = None


class _IngestLine(msgspec.Struct, kw_only=True):
    """One producer line as sent over HTTP (contract section 6); unknown keys are ignored."""

    type: str
    payload: dict[str, Any] = {}
    created_at: str | None = None
    source: str | None = None
    build_id: str | None = None
    workspace_id: str | None = None
    configuration_id: str | None = None
    run_id: str | None = None


_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)
_ingest_decoder = msgspec.json.Decoder(_IngestLine)


# ---------------------------------------------------------------------------
# encoding


def _clean_str(value: str) -> str:
    # UTF-16 with surrogatepass pairs up surrogate halves into real characters;
    # decoding with "replace" turns every lone half into U+FFFD.
    return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _clean(value: Any) -> Any:
    """``value`` with every string (keys too) made encodable as UTF-8."""
    if isinstance(value, str):
        return _clean_str(value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def sanitize_event(event: Event) -> Event:
    """A copy of ``event`` whose strings hold no lone surrogates (replaced by U+FFFD)."""
    return msgspec.structs.replace(
        event,
        type=_clean_str(event.type),
        source=_clean_str(event.source),
        build_id=None if event.build_id is None else _clean_str(event.build_id),
        payload=_clean(event.payload),
    )


def encode_into(event: Event, buffer: bytearray) -> None:
    """Append ``event``'s line (with its ``\\n``) to ``buffer``.

    Raises InvalidEvent if the payload holds something JSON cannot represent;
    ``buffer`` is then left as it was.
    """
    start = len(buffer)
    try:
        try:
            _encoder.encode_into(event, buffer, -1)
        except UnicodeEncodeError:
            del buffer[start:]
            _encoder.encode_into(sanitize_event(event), buffer, -1)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        # (UnicodeEncodeError is a ValueError: only reachable if sanitizing failed)
        del buffer[start:]
        raise InvalidEvent(f"event {event.type!r} cannot be encoded as JSON: {exc}") from exc
    buffer.append(10)


def encode_batch(events: list[Event]) -> bytes:
    """The NDJSON lines of ``events``, each ending with ``\n``, in one call (the hot path).

    Same bytes as joining :func:`encode_event` of each; raises InvalidEvent like it.
    """
    try:
        return _encoder.encode_lines(events)
    except UnicodeEncodeError:
        pass  # rare: some string holds a lone surrogate; encode one by one, replacing it
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        pass  # find the culprit below, for the message
    buffer = bytearray()
    for event in events:
        encode_into(event, buffer)
    return bytes(buffer)


def mark_unit_end(data: bytes) -> bytes:
    """``data`` (the lines of one write unit, as :func:`encode_batch` returns them) with its
    final ``b"\\n"`` replaced by :data:`UNIT_END`."""
    if not data.endswith(b"\n"):
        raise ValueError("a write unit must end with a newline")
    return data[:-1] + UNIT_END


def encode_event(event: Event) -> bytes:
    """One NDJSON line: the event as compact JSON, ending with ``b"\\n"`` and no other newline."""
    buffer = bytearray()
    encode_into(event, buffer)
    return bytes(buffer)


# ---------------------------------------------------------------------------
# decoding


def decode_event(line: bytes) -> Event:
    """Parse one log line (with or without its trailing newline). InvalidEvent if it is not one."""
    try:
        return _event_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"not a valid event line: {exc}") from exc


def parse_draft(
    line: bytes,
    *,
    workspace_id: str,
    configuration_id: str,
    run_id: str,
    line_no: int | None = None,
) -> EventDraft:
    """Validate one producer NDJSON line (contract section 6) into a draft.

    ``type`` must be a non-empty string and ``payload`` an object; ``created_at``
    must be RFC 3339 (converted to UTC); ids, when present, must match the path.
    Any problem raises InvalidEvent naming ``line_no``.
    """
    try:
        raw = _ingest_decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(str(exc), line=line_no) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec reports a lone \uD800 escape as "truncated": say what it means
        raise InvalidEvent(
            f"not a JSON object in UTF-8 (lone surrogate escapes are not allowed): {exc}",
            line=line_no,
        ) from exc
    if not raw.type:
        raise InvalidEvent("type must be a non-empty string", line=line_no)
    expected = {"workspace_id": workspace_id, "configuration_id": configuration_id}
    expected["run_id"] = run_id
    for name, want in expected.items():
        got = getattr(raw, name)
        if got is not None and got != want:
            raise InvalidEvent(f"{name} {got!r} contradicts the path ({want!r})", line=line_no)
    created_at = None
    if raw.created_at is not None:
        try:
            created_at = normalize_created_at(raw.created_at)
        except InvalidInput as exc:
            raise InvalidEvent(exc.message, line=line_no) from exc
    return EventDraft(
        type=raw.type,
        payload=raw.payload,
        created_at=created_at,
        source=raw.source,
        build_id=raw.build_id,
    )
