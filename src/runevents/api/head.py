"""HEAD on a route that declares only GET: the GET answer's status and headers, no body.

RFC 9110 (9.3.2) asks a general-purpose server to answer HEAD wherever it
answers GET, and load balancers and uptime checkers probe with it. FastAPI's
routes answer only the methods they declare, so without this layer ``HEAD
/api/v1/health`` was 405. The routes with a HEAD of their own (a run's events,
contract 14, and the Durable Streams routes) keep it: this layer steps in
only where no route takes HEAD and one takes GET.

The request goes through as GET (authorization and every check included) and
the answer's start -- status, headers, ``Content-Length`` -- goes out as is.
The body is dropped. A streamed body (a long download) is stopped at its
first chunk, so a HEAD never keeps a stream running.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _Answered(Exception):
    """The HEAD answer is complete: stop producing the GET's body."""


class HeadAsGet:
    """ASGI middleware: HEAD for GET-only routes (see the module doc)."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._routes = routes

    def _answers_as_get(self, scope: Scope) -> bool:
        """No route takes HEAD for this path, and one takes GET."""
        as_get = {**scope, "method": "GET"}
        found = False
        for route in self._routes:
            if route.matches(scope)[0] is Match.FULL:
                return False  # the route answers HEAD itself
            if not found and route.matches(as_get)[0] is Match.FULL:
                found = True
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or not self._answers_as_get(scope):
            await self.app(scope, receive, send)
            return
        ended = False

        async def send_head(message: Message) -> None:
            nonlocal ended
            if message["type"] != "http.response.body":
                await send(message)
                return
            if ended:
                raise _Answered
            ended = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if message.get("more_body", False):
                raise _Answered  # a stream: no need to produce the rest

        try:
            await self.app({**scope, "method": "GET"}, receive, send_head)
        except _Answered:
            pass
        except BaseExceptionGroup as group:
            # (a streamed body runs in a task group, which wraps what send raised)
            if group.split(_Answered)[1] is not None:
                raise
