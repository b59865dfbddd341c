"""Explicit converters between ``models.Run`` and ``runs`` rows, and the list cursor.

Kept apart from the SQL (``repository.py`` and its mixins): these are pure functions, tested
without a database.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import RowMapping

from runevents.db.tables import SNIPPET_MAX_BYTES
from runevents.exceptions import InvalidInput
from runevents.ids import RUN_ID_RE
from runevents.models import LogState, Run, RunStatus

#: Run field -> runs column, where the names differ
_COLUMN_OF: dict[str, str] = {"summary": "summary_json"}
RUN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Run))
#: every Run field, by the column that stores it
FIELD_OF_COLUMN: dict[str, str] = {_COLUMN_OF.get(name, name): name for name in RUN_FIELDS}
_DATETIME_FIELDS = frozenset(
    {"created_at", "started_at", "completed_at", "updated_at", "lease_expires_at"}
)
_JSON_FIELDS = frozenset({"options", "output_paths", "summary", "failure"})
_TEXT_FIELDS = frozenset(
    {"mode", "events_path", "max_validation_severity", "last_console_snippet", "lease_owner"}
)


def column_of(field: str) -> str:
    """The ``runs`` column that stores the Run field ``field``."""
    return _COLUMN_OF.get(field, field)


def cap_snippet(text: str | None) -> str | None:
    """The tail of ``text`` that fits in :data:`SNIPPET_MAX_BYTES` bytes of UTF-8.

    Cuts on a character boundary (never half a multi-byte character).
    """
    if text is None:
        return None
    text = _clean(text)
    data = text.encode("utf-8")
    if len(data) <= SNIPPET_MAX_BYTES:
        return text
    tail = data[-SNIPPET_MAX_BYTES:]
    # skip UTF-8 continuation bytes so the tail starts on a whole character
    start = 0
    while start < len(tail) and (tail[start] & 0xC0) == 0x80:
        start += 1
    return tail[start:].decode("utf-8")


def _clean(text: str) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # lone surrogates (e.g. from surrogateescape decoding) have no UTF-8 form
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def scrub(value: Any) -> Any:
    """``value`` with every string (and key) made storable: NUL becomes U+FFFD, a lone
    surrogate becomes ``?``.

    Postgres text and jsonb cannot hold U+0000 or unpaired surrogates, yet console
    output and producer telemetry may contain them; both backends store the same
    scrubbed value.
    """
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def check_aware(value: datetime | None, what: str) -> datetime | None:
    """``value`` in UTC; InvalidInput for a naive datetime."""
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput(f"{what} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def field_to_column_value(field: str, value: Any) -> Any:
    """Convert one Run field's value to what its column stores (InvalidInput if unusable)."""
    if field == "status":
        try:
            return RunStatus(value).value
        except ValueError:
            raise InvalidInput(f"invalid run status {value!r}") from None
    if field == "log_state":
        try:
            return LogState(value).value
        except ValueError:
            raise InvalidInput(f"invalid log_state {value!r}") from None
    if field in _DATETIME_FIELDS:
        return check_aware(value, field)
    if field == "last_console_snippet":
        return cap_snippet(value)
    if field in _JSON_FIELDS or field in _TEXT_FIELDS:
        return scrub(value)
    return value


def to_row(run: Run) -> dict[str, Any]:
    """Every column of the ``runs`` row that stores ``run``."""
    return {column_of(name): field_to_column_value(name, getattr(run, name)) for name in RUN_FIELDS}


def from_row(row: RowMapping | Mapping[str, Any]) -> Run:
    """The Run a ``runs`` row (with every column) stores."""
    values = {field: row[column] for column, field in FIELD_OF_COLUMN.items()}
    values["status"] = RunStatus(values["status"])
    values["log_state"] = LogState(values["log_state"])
    values["options"] = values["options"] if values["options"] is not None else {}
    values["output_paths"] = list(values["output_paths"] or [])
    return Run(**values)


# -- the runs-list cursor --------------------------------------------------------

_CURSOR_DIGEST = 6
_CURSOR_MAX_CHARS = 256


def _cursor_digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_CURSOR_DIGEST, person=b"runevents.cur").digest()


def encode_cursor(created_at: datetime, run_id: str) -> str:
    """The opaque, URL-safe position just after the run ``(created_at, run_id)``.

    The checksum catches garbage and truncated cursors. It is not a secret:
    a forged cursor can only name another position in a list the caller may
    read anyway.
    """
    stamp = created_at.astimezone(UTC).isoformat(timespec="microseconds")
    payload = f"{stamp}|{run_id}".encode()
    return base64.urlsafe_b64encode(payload + _cursor_digest(payload)).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``(created_at, run_id)`` of a cursor from :func:`encode_cursor`; else InvalidInput."""
    bad = InvalidInput("invalid cursor: pass next_cursor from the previous page unchanged")
    if not isinstance(cursor, str) or not cursor or len(cursor) > _CURSOR_MAX_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise bad from None
    payload, digest = raw[:-_CURSOR_DIGEST], raw[-_CURSOR_DIGEST:]
    if len(raw) <= _CURSOR_DIGEST or not hmac.compare_digest(digest, _cursor_digest(payload)):
        raise bad
    try:
        stamp, run_id = payload.decode().split("|")
        created_at = datetime.fromisoformat(stamp)
    except ValueError:
        raise bad from None
    if created_at.tzinfo is None or not RUN_ID_RE.fullmatch(run_id):
        raise bad
    return created_at.astimezone(UTC), run_id
