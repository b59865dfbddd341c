"""Long-poll reads (contract section 14): ``GET {run}/events?after_sequence=N&wait=S``.

For clients behind proxies or runtimes that cut SSE. When events after ``N``
exist the answer is the ordinary JSON page, at once. Otherwise the request
waits on the run's live tail -- the same :class:`~runevents.eventlog.tail.Tail`
an SSE follower waits on, through ``RunManager.follow_events`` -- for at most
``S`` seconds, and answers with what arrived, or an empty page with the same
cursor. A waiter holds only that follower's cursor and one future in the
tail's wake-up list: no per-waiter buffer, so 1,000 waiters on one run cost what
1,000 idle SSE followers cost, and the chunk that wakes them is one shared
object. A run that has ended answers at once (the empty page after
``run.completed``), like SSE's 204.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from starlette.requests import Request

from runevents import metrics
from runevents.api.pages import Page, first_chunks, page_of
from runevents.manager import RunManager
from runevents.models import Run

#: the longest wait a request may ask for (seconds; more is 422)
MAX_WAIT = 60.0


@dataclass(frozen=True, slots=True)
class Waited:
    """What a long-poll got."""

    page: Page
    #: the sequence the log reached (``position`` if nothing arrived)
    stop: int
    #: nothing arrived because the log is already past run.completed (not a timeout)
    ended: bool


async def wait_page(
    manager: RunManager, run: Run, position: int, limit: int, wait: float, request: Request
) -> Waited:
    """The page of what arrives after ``position`` within ``wait`` seconds.

    A client that goes away ends the wait at once (its socket and its waiter are
    freed, as an SSE follower's are): nobody would read the answer.
    """
    chunks = manager.follow_events(run, position)
    timed_out = False
    metrics.longpoll_waiter(+1)
    arrived = asyncio.ensure_future(first_chunks(chunks))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        async with asyncio.timeout(wait):
            await asyncio.wait((arrived, gone), return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        pass
    finally:
        gone.cancel()
        if not arrived.done():
            arrived.cancel()
        metrics.longpoll_waiter(-1)
    if arrived.done() and not arrived.cancelled():
        got = arrived.result()
    else:
        with contextlib.suppress(asyncio.CancelledError):
            await arrived  # (let the follower close)
        got, timed_out = [], True
    page = page_of(got, position, limit)
    if got:
        return Waited(page, got[-1].last_sequence, got[-1].ends_run and not page.has_more)
    # the follower ended without a chunk: the position is past run.completed
    return Waited(page, position, not timed_out)


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (a GET has no body: the only message left to
    receive is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
