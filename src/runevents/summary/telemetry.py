"""Typed reading of producer telemetry for the run summary (contract section 2.1).

Each reader either returns a field of the right type or raises
:class:`Malformed`; the builder turns that into ``events.ignored``. ``bool`` is
never an integer count (``isinstance(True, int)`` is true in Python), and
neither is an integer outside the 64-bit signed range (:data:`INT_MIN` ..
:data:`INT_MAX`): the run row's integer columns hold no more, so such a value
is malformed like any other wrong type. Sums of in-range values are kept exact
(Python ints) and clamped to that range only when shown (:func:`clamp`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

#: severities in rank order; other names are counted but never become max_severity
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "error": 2, "critical": 3}

_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the range of an integer the summary reads or shows: the row's BIGINT columns (row_count)
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1


class Malformed(Exception):
    """Internal signal: the event's read fields have the wrong types."""


# -- field checks -------------------------------------------------------------


def is_int(value: object) -> bool:
    """True for an int that is not a bool and fits in 64 signed bits."""
    # bool is a subclass of int, but True is not a count. A larger int cannot reach the
    # row's BIGINT columns (SQLite: OverflowError; Postgres: out of range), and a
    # completion must never fail on the summary (contract 2.1): it is malformed.
    return isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX


def clamp(value: int) -> int:
    """``value`` saturated to INT_MIN .. INT_MAX (a shown sum; the exact one may exceed it)."""
    return INT_MAX if value > INT_MAX else INT_MIN if value < INT_MIN else value


def as_object(payload: object) -> dict[str, Any]:
    """The payload as a JSON object, or Malformed."""
    if not isinstance(payload, dict):
        raise Malformed
    return payload


def req_str(payload: dict[str, Any], key: str) -> str:
    """A required string field, or Malformed."""
    value = payload.get(key)
    if not isinstance(value, str):
        raise Malformed
    return value


def opt_str(payload: dict[str, Any], key: str) -> str | None:
    """An optional string field (missing or null: None), or Malformed."""
    value = payload.get(key)
    if value is not None and not isinstance(value, str):
        raise Malformed
    return value


def opt_int(payload: dict[str, Any], key: str) -> int | None:
    """An optional integer field (missing or null: None), or Malformed."""
    value = payload.get(key)
    if value is not None and not is_int(value):
        raise Malformed
    return value


def opt_dict(payload: dict[str, Any], key: str) -> dict[str, Any] | None:
    """An optional object field (missing or null: None), or Malformed."""
    value = payload.get(key)
    if value is not None and not isinstance(value, dict):
        raise Malformed
    return value


def opt_counts(payload: dict[str, Any], key: str) -> dict[str, int] | None:
    """An optional ``{name: int}`` map (a copy), or Malformed."""
    value = opt_dict(payload, key)
    if value is None:
        return None
    if not all(isinstance(k, str) and is_int(v) for k, v in value.items()):
        raise Malformed
    return dict(value)


# -- time -----------------------------------------------------------------------


def micros(value: str | None) -> int | None:
    """Microseconds since the epoch of an RFC 3339 timestamp, None if it is not one."""
    if value is None:
        return None
    m = _RFC3339_RE.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, offset = m.groups()
    # RFC 3339 allows any number of fraction digits; keep microsecond precision.
    micro = int((frac or "0")[:6].ljust(6, "0"))
    if offset in ("Z", "z"):
        tz = UTC
    else:
        sign = -1 if offset[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz
        )
    except ValueError:  # e.g. month 13, or a leap second
        return None
    return (moment - _EPOCH) // timedelta(microseconds=1)


def duration_ms(start: str | None, end: str | None) -> int | None:
    """Whole milliseconds from ``start`` to ``end``; None unless both parse."""
    a, b = micros(start), micros(end)
    if a is None or b is None:
        return None
    return max(0, (b - a) // 1000)


# -- validation blocks ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Validation:
    """One validation block (a run.validation.summary, or a table's ``validation``)."""

    issues_total: int
    by_severity: dict[str, int] | None
    by_code: dict[str, int]
    declared_max: str | None


def parse_validation(payload: dict[str, Any]) -> Validation:
    """A validation block (``issues_total``, ``issues_by_*``, ``max_severity``), or Malformed."""
    total = opt_int(payload, "issues_total")
    by_severity = opt_counts(payload, "issues_by_severity")
    by_code = opt_counts(payload, "issues_by_code")
    declared = opt_str(payload, "max_severity")
    if total is None:
        # exact (it may pass INT_MAX): shown clamped, like every sum
        total = sum(by_severity.values()) if by_severity else 0
    return Validation(total, by_severity, by_code or {}, declared)


def max_severity(counts: dict[str, int], declared: Iterable[str | None] = ()) -> str | None:
    """The highest ranked severity with a positive count (or among ``declared``), else None."""
    names = [name for name, n in counts.items() if n > 0 and name in SEVERITY_RANK]
    names.extend(d for d in declared if d in SEVERITY_RANK)
    return max(names, key=SEVERITY_RANK.__getitem__, default=None)


def add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    """Add ``counts`` into ``into``, key by key."""
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


def validation_dict(
    total: int, by_severity: dict[str, int], by_code: dict[str, int], highest: str | None
) -> dict[str, Any]:
    """The summary's ``validation`` object, maps sorted by key."""
    return {
        "issues_total": clamp(total),
        "issues_by_severity": {k: clamp(n) for k, n in sorted(by_severity.items())},
        "issues_by_code": {k: clamp(n) for k, n in sorted(by_code.items())},
        "max_severity": highest,
    }


def merge_validations(blocks: list[Validation]) -> dict[str, Any]:
    """The summed validation of several blocks (the tables' rule of contract 2.1)."""
    by_severity: dict[str, int] = {}
    by_code: dict[str, int] = {}
    for block in blocks:
        add_counts(by_severity, block.by_severity or {})
        add_counts(by_code, block.by_code)
    declared = [b.declared_max for b in blocks if b.by_severity is None]
    total = sum(b.issues_total for b in blocks)
    return validation_dict(total, by_severity, by_code, max_severity(by_severity, declared))
