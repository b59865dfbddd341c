"""Event timestamps: RFC 3339 in, one canonical UTC form out (contract section 2).

``created_at`` is UTC RFC 3339 with microseconds (``YYYY-MM-DDTHH:MM:SS.ffffffZ``)
in every stored event: a producer's own value is converted to it
(:func:`normalize_created_at`), the server's is made in it (:func:`utc_timestamp`).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from runevents.exceptions import InvalidInput

# [0-9], not \d: Python's \d also matches other scripts' digits, which int() reads
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
_CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def normalize_created_at(value: str, *, clamp: bool = False) -> str:
    """An RFC 3339 timestamp as UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    Offsets are converted to UTC; fractions beyond microseconds are truncated;
    a leap second (``:60``) is clamped to ``:59.999999``. Anything that is not
    RFC 3339 (no offset, a date that does not exist, year 0000, ...) raises
    InvalidInput, and so does an offset that takes the UTC instant out of years
    0001-9999 (``9999-12-31T23:59:59-01:00``): no timestamp here can hold it,
    and an event's time is stored exactly or not at all. ``clamp``: such an
    instant becomes the nearest one instead (for a filter bound, where the
    answer is the same: nothing stored lies beyond the edge).
    """
    if not isinstance(value, str):
        raise InvalidInput("created_at must be an RFC 3339 string")
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise InvalidInput(f"created_at {value!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    micros = int((m.group(7) or "0")[:6].ljust(6, "0"))
    if second == 60:
        second, micros = 59, 999_999
    try:
        if m.group(8):
            offset = timedelta(0)
        else:
            sign = 1 if m.group(9) == "+" else -1
            oh, om = int(m.group(10)), int(m.group(11))
            if oh > 23 or om > 59:
                raise ValueError("offset out of range")
            offset = sign * timedelta(hours=oh, minutes=om)
        moment = _utc_instant(year, month, day, hour, minute, second, micros, offset)
    except ValueError as exc:
        raise InvalidInput(f"created_at {value!r} is not a valid date and time: {exc}") from exc
    if moment is None:
        if not clamp:
            raise InvalidInput(
                f"created_at {value!r} is out of range: its UTC instant is outside years 0001-9999"
            )
        moment = (datetime.min if offset > timedelta(0) else datetime.max).replace(tzinfo=UTC)
    if not offset and m.group(6) != "60" and _CANONICAL.fullmatch(value):
        # already canonical (the common case): no reformatting
        return value
    # (not strftime: glibc's %Y does not zero-pad years before 1000)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z"
    )


#: one Gregorian cycle: a date 400 years away has the same calendar (leap days included)
_CYCLE_YEARS = 400


def _utc_instant(
    year: int,
    month: int,
    day: int,
    hour: int,
    minute: int,
    second: int,
    micros: int,
    offset: timedelta,
) -> datetime | None:
    """The UTC instant of a local RFC 3339 time; None if it is outside years 0001-9999.

    ``datetime`` cannot hold 0001-01-01T00:00+01:00 once in UTC: the arithmetic
    runs one cycle away from the edge, then the year is moved back (None if the
    instant left the range). ValueError: no such date (year 0000 included, as
    ``datetime`` has none).
    """
    if year == 0:
        raise ValueError("year 0 is out of range")
    shift = (
        _CYCLE_YEARS if year < _CYCLE_YEARS else -_CYCLE_YEARS if year > 9999 - _CYCLE_YEARS else 0
    )
    moment = datetime(year + shift, month, day, hour, minute, second, micros, tzinfo=UTC) - offset
    real_year = moment.year - shift
    if not 1 <= real_year <= 9999:
        return None
    return moment.replace(year=real_year)


#: (second, "YYYY-MM-DDTHH:MM:SS") of the last call; one tuple so threads see a matching pair
_ts_cache: tuple[int, str] = (-1, "")


def utc_timestamp() -> str:
    """The server clock now, as UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    The date-time part is formatted once per second: ``strftime`` per event
    would be a visible share of the append path.
    """
    global _ts_cache
    second, rest = divmod(time.time_ns(), 1_000_000_000)
    cached_second, prefix = _ts_cache
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _ts_cache = (second, prefix)
    return f"{prefix}.{str(1_000_000 + rest // 1000)[1:]}Z"  # (faster than :06d)
