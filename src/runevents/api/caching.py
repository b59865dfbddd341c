"""HTTP caching of event reads (contract section 14): ETag, If-None-Match, Cache-Control.

An event, once served, never changes (section 2.2: no read serves a byte that
a recovery could cut), so any range of a log that ends before the log's last
sequence -- or any range of an ended run -- is final. Such answers are sent
``private, max-age=31536000, immutable``: ``private`` because access is per
token, so a shared cache must not hand them to another caller. The open tail
of a live run is ``no-store``: the next request may see more.

The ETag is strong and names exactly what determines the bytes: the run, the
read form (``json`` page with its limit, or ``ndjson``), the range, and the
stored form of the log (plain NDJSON or zstd frames). It is computed from the
row and the log's end alone, so a revalidation (``If-None-Match``) of an ended
run costs one row read and no log I/O.

Because one URL serves a JSON page or NDJSON by ``Accept``, and the position
may come from ``Last-Event-ID``, answers carry ``Vary: Accept, Last-Event-ID``.
"""

from __future__ import annotations

from starlette.responses import Response

from runevents.logview import LogEnd

#: Cache-Control of a range that can no longer change
IMMUTABLE = "private, max-age=31536000, immutable"
#: Cache-Control of the open tail of a live run (and of HEAD answers)
NO_STORE = "no-store"
#: request headers that select the representation of an events URL
VARY = "Accept, Last-Event-ID"


def etag(
    run_id: str, end: LogEnd, kind: str, position: int, last: int, *, more: bool = False
) -> str:
    """The strong ETag of events ``position+1 .. last`` of ``run_id`` in read form ``kind``.

    ``kind`` is ``ndjson`` or ``json<limit>`` (a page's limit changes its bytes).
    ``more``: a JSON page's ``has_more`` -- a full page of a live run gains it when
    the next event arrives, with the same events (the same tag would then answer a
    stale ``has_more: false`` with 304).
    """
    return f'"{run_id}.{end.form}.{kind}.{position}-{last}{"+" if more else ""}"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` (weak comparison, as RFC 9110 says for it)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.removeprefix("W/") == tag:
            return True
    return False


def headers(tag: str, complete: bool) -> dict[str, str]:
    """ETag, Cache-Control and Vary of an answer."""
    return {"ETag": tag, "Cache-Control": IMMUTABLE if complete else NO_STORE, "Vary": VARY}


def not_modified(tag: str, complete: bool) -> Response:
    """The 304 answer: no body, the same validators."""
    return Response(status_code=304, headers=headers(tag, complete))
