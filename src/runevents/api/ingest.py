"""Producer ingest: the request body -> a validated batch of drafts (contract section 6).

Pure functions, no I/O except :func:`read_body`, which enforces the batch limit
while the body arrives (Content-Length first, then by counting), so an
oversized upload is refused without ever being buffered whole.

Rules for the NDJSON body:

* one JSON object per line, split on ``\\n`` only; a ``\\r`` before it is JSON
  whitespace and so tolerated;
* lines that are empty or only whitespace are skipped, wherever they are
  (producers that concatenate batches often leave one); line numbers in
  errors still count them, so they match the producer's own file;
* ``type`` is a non-empty string; ``payload`` an object (missing: ``{}``);
  ``created_at`` RFC 3339 (normalized to UTC); ``source`` and ``build_id``
  strings or null; ``workspace_id``/``configuration_id``/``run_id``, when
  present, equal the path's; ``sequence`` and ``event_id`` are ignored (the
  server assigns them), as is any other key;
* a line longer than ``max_event_bytes`` -> 413; nesting deeper than
  :data:`MAX_DEPTH` or invalid UTF-8 -> the line is invalid (422).

The first bad line stops the batch: :class:`~runevents.exceptions.InvalidEvent`
names it; nothing is appended.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import AsyncIterator

import msgspec

from runevents.events import RUN_COMPLETED, EventDraft, parse_draft
from runevents.exceptions import (
    InvalidEvent,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from runevents.timestamps import normalize_created_at

#: the media type of an ingest body
NDJSON = "application/x-ndjson"
#: an event nested deeper than this (objects and arrays) is invalid
MAX_DEPTH = 64


def check_content_type(content_type: str | None) -> None:
    """415 unless the body is declared as ``application/x-ndjson``."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != NDJSON:
        raise UnsupportedMediaType(
            f"send events as {NDJSON} (one JSON object per line), not {media or 'no content type'}"
        )


def check_content_encoding(encodings: list[str]) -> None:
    """415 for a body sent with a content coding (gzip, br...): it is not decoded, so it
    would be read -- and stored -- as if it were the NDJSON itself (RFC 9110 8.4.1)."""
    codings = [c.strip().lower() for value in encodings for c in value.split(",") if c.strip()]
    if any(coding != "identity" for coding in codings):
        raise UnsupportedMediaType(
            f"send the batch without a Content-Encoding (got {', '.join(codings)}): "
            "compressed bodies are not decoded"
        )


def declared_length(content_length: str | None) -> int | None:
    """The body size a ``Content-Length`` header declares (None without one)."""
    if content_length is None:
        return None
    try:
        return int(content_length)
    except ValueError:
        raise InvalidInput("Content-Length is not a number") from None


async def read_body(
    stream: AsyncIterator[bytes], content_length: str | None, max_bytes: int
) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed ``max_bytes``."""
    declared = declared_length(content_length)
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"the batch is {declared} bytes; the limit is {max_bytes}")
    # the parts are joined once at the end (growing a bytearray and copying it out
    # copied a batch about three times); a body that came in one part is not copied
    parts: list[bytes] = []
    size = 0
    async for part in stream:
        if not part:
            continue  # (Starlette's stream ends with an empty part)
        parts.append(part)
        size += len(part)
        if size > max_bytes:
            raise PayloadTooLarge(f"the batch exceeds the limit of {max_bytes} bytes")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def json_depth(value: object) -> int:
    """Nesting depth of a decoded JSON value (iterative: no recursion on hostile input)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest


def json_problem(value: object) -> str | None:
    """What keeps a decoded JSON value from being stored exactly, else None: a number
    past a float's range (``1e400`` decodes as infinity, which JSON cannot hold) or a
    string or key with a lone surrogate (which UTF-8 cannot hold). Iterative, like
    :func:`json_depth`; ingest's decoder refuses both in events already."""
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return "a number is out of range (JSON holds finite numbers only)"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds a lone surrogate (\\uD800-\\uDFFF without its pair)"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _draft(line: bytes, number: int, ids: tuple[str, str, str]) -> EventDraft:
    """One line -> a draft (``events.parse_draft``), plus the nesting bound."""
    workspace_id, configuration_id, run_id = ids
    try:
        draft = parse_draft(
            line,
            workspace_id=workspace_id,
            configuration_id=configuration_id,
            run_id=run_id,
            line_no=number,
        )
    except RecursionError:
        raise InvalidEvent(f"nested deeper than {MAX_DEPTH} levels", line=number) from None
    if _too_deep(line, draft):
        raise InvalidEvent(f"nested deeper than {MAX_DEPTH} levels", line=number)
    return draft


def _too_deep(line: bytes, draft: EventDraft) -> bool:
    """Is the event nested deeper than MAX_DEPTH? (the line is one level above the payload)"""
    # the cheap byte count bounds the depth: only suspicious lines are walked
    return (
        line.count(b"{") + line.count(b"[") > MAX_DEPTH and json_depth(draft.payload) >= MAX_DEPTH
    )


#: decodes one line straight into a draft (unknown keys ignored)
_draft_decoder = msgspec.json.Decoder(EventDraft)
#: decodes a whole batch, its lines joined into one JSON array, in one call
_drafts_decoder = msgspec.json.Decoder(list[EventDraft])
#: every byte but "{", "[" and newline (deleted to count brackets per line in C)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{[\n")
#: keys that must be compared with the path: their presence takes the checked path
_ID_KEYS = (b'"workspace_id"', b'"configuration_id"', b'"run_id"')
#: what every id key ends with (one scan rules them all out). A compiled pattern, not
#: ``in``: ``re`` looks for a literal's rare first byte with memchr, twice as fast as
#: ``bytes.__contains__`` on a batch without it (measured, CPython 3.11)
_ID_KEY_END = re.compile(rb'_id"')
_TYPE_OF = operator.attrgetter("type")
_CREATED_AT_OF = operator.attrgetter("created_at")


def _fast_batch(body: bytes, max_event_bytes: int) -> list[EventDraft] | None:
    """The common batch in a few C calls for the whole body; None sends it to the checked path.

    Only for bodies without blank lines and without id keys. The lines are
    decoded as one JSON array (newlines become commas), which is exactly "one
    object per line": an object spread over two lines, two objects on one line
    or a blank line make the array invalid, and ``{..},{..}`` on one line gives
    more drafts than lines. Any doubt -- an error, a suspiciously nested line --
    returns None, and the line-by-line path then finds and names the culprit.
    """
    if _ID_KEY_END.search(body) is not None and any(key in body for key in _ID_KEYS):
        return None
    # brackets per line bound the nesting depth; a line that might be too deep
    # is left to the checked path, which measures it exactly. A line without one
    # (blank, or not an object) is the checked path's too.
    brackets = body.translate(None, _NOT_BRACKETS).split(b"\n")
    text = body
    if body.endswith(b"\n"):
        brackets.pop()
        text = body[:-1]
    if not brackets or not all(brackets) or max(map(len, brackets)) > MAX_DEPTH:
        return None
    if len(body) > max_event_bytes and max(map(len, body.split(b"\n"))) > max_event_bytes:
        return None
    try:
        drafts = _drafts_decoder.decode(b"[" + text.replace(b"\n", b",") + b"]")
        if len(drafts) != len(brackets) or "" in map(_TYPE_OF, drafts):
            return None
        if set(map(_CREATED_AT_OF, drafts)) != _NO_TIMESTAMPS:
            for draft in drafts:
                if draft.created_at is not None:
                    draft.created_at = normalize_created_at(draft.created_at)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, InvalidInput):
        return None
    return drafts


_NO_TIMESTAMPS = frozenset({None})


def parse_batch(
    body: bytes,
    *,
    workspace_id: str,
    configuration_id: str,
    run_id: str,
    max_event_bytes: int,
) -> list[EventDraft]:
    """The drafts of an NDJSON body; InvalidEvent / PayloadTooLarge name the first bad line."""
    drafts = _fast_batch(body, max_event_bytes)
    if drafts is None:
        drafts = checked_batch(
            body,
            workspace_id=workspace_id,
            configuration_id=configuration_id,
            run_id=run_id,
            max_event_bytes=max_event_bytes,
        )
    _check_completed_last(body, drafts)
    return drafts


def checked_batch(
    body: bytes,
    *,
    workspace_id: str,
    configuration_id: str,
    run_id: str,
    max_event_bytes: int,
) -> list[EventDraft]:
    """The line-by-line path: every rule checked per line, the first bad one named."""
    ids = (workspace_id, configuration_id, run_id)
    drafts: list[EventDraft] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if len(line) > max_event_bytes:
            raise PayloadTooLarge(
                f"line {number}: the event is {len(line)} bytes; the limit is {max_event_bytes}",
                line=number,
            )
        if not line.strip():
            continue
        drafts.append(_draft(line, number, ids))
    if not drafts:
        raise InvalidEvent("the batch holds no events")
    return drafts


def _check_completed_last(body: bytes, drafts: list[EventDraft]) -> None:
    types = list(map(_TYPE_OF, drafts))
    if RUN_COMPLETED in types[:-1]:
        # report the physical line: find it again (rare path)
        raise InvalidEvent(
            "run.completed must be the last event of the batch",
            line=_physical_line(body, types.index(RUN_COMPLETED) + 1),
        )


def _physical_line(body: bytes, nth_event: int) -> int:
    """The 1-based line number of the ``nth_event``-th non-blank line."""
    seen = 0
    for number, line in enumerate(body.split(b"\n"), start=1):
        if line.strip():
            seen += 1
            if seen == nth_event:
                return number
    return nth_event
