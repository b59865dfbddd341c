"""The outermost layer of every HTTP request: its id, its run, and ingest's numbers.

* ``X-Request-ID``: a well-formed one from the client (a proxy's, a
  producer's) is kept, otherwise one is generated; it is echoed on the
  response, set in :data:`runevents.logs.REQUEST_ID` for every log line of the
  request (uvicorn's access line included: it is logged from this task) and
  added to JSON error bodies (``api/errors.py``).
* The run id of a run route is set in :data:`runevents.logs.RUN_ID`.
* Producer ingest (``POST .../runs/{run}/events``) is counted here by answer
  status, with its latency: every outcome, 401 and 413 included, passes this
  point, and the route itself stays free of bookkeeping.

It wraps Starlette's error middleware (see ``api/app.py``), so a 500 answer
also carries the header and its log line the id.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runevents import metrics
from runevents.logs import REQUEST_ID, RUN_ID

HEADER = b"x-request-id"
#: a client's id is kept only if it is this tame (it goes into logs and headers)
_VALID_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
_RUN_IN_PATH = re.compile(r"/runs/(run_[0-9A-HJKMNP-TV-Z]{26})(/events)?(?:/|$)")


def _incoming_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == HEADER:
            if _VALID_ID.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return uuid.uuid4().hex


class RequestContext:
    """ASGI middleware: request id and run id in context, ``X-Request-ID`` out, ingest metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope)
        match = _RUN_IN_PATH.search(scope["path"])
        ingest = match is not None and match[2] is not None and scope["method"] == "POST"
        started = time.perf_counter()
        header = (HEADER, request_id.encode("ascii"))
        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                message = {**message, "headers": [*message.get("headers", ()), header]}
                if ingest:
                    metrics.ingest_answered(message["status"], time.perf_counter() - started)
            await send(message)

        request_token = REQUEST_ID.set(request_id)
        run_token = RUN_ID.set(match[1] if match else None)
        source_token = metrics.APPEND_SOURCE.set("ingest" if ingest else "server")
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics.APPEND_SOURCE.reset(source_token)
            if ingest and not answered:
                # no answer started: the app crashed past every handler (uvicorn answers 500)
                metrics.ingest_answered(500, time.perf_counter() - started)
            REQUEST_ID.reset(request_token)
            RUN_ID.reset(run_token)
