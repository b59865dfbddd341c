"""The one mapping from errors to HTTP responses.

Every error leaves the server as ``{"error": {"code": ..., "message": ...}}``
(contract section 4) with the status of its family. Nothing below the HTTP edge
knows about statuses; nothing here knows about storage or SQL. Three more
sources of errors are folded into the same shape: request validation (422),
routing (404/405) and the last-resort handler, which logs the exception and
answers a plain JSON 500 -- never a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from runevents import exceptions as exc
from runevents.logs import REQUEST_ID

log = logging.getLogger(__name__)

#: status of each error family; the most specific class in an error's MRO wins
STATUS: dict[type[exc.RuneventsError], int] = {
    exc.InvalidInput: 422,
    exc.NotFound: 404,
    exc.Conflict: 409,
    exc.LogExpired: 410,
    exc.PayloadTooLarge: 413,
    exc.UnsupportedMediaType: 415,
    exc.Unauthorized: 401,
    exc.Forbidden: 403,
    exc.StorageError: 503,
}

#: machine names of plain HTTP statuses raised by routing and Starlette itself
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
}


def status_of(error: exc.RuneventsError) -> int:
    """The HTTP status of a RuneventsError (500 for a family with none)."""
    for cls in type(error).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """``{"error": {"code", "message", ...extra, "request_id"}}``; ``None`` extras are left out.

    ``request_id`` is the request's ``X-Request-ID`` (``api/context.py``), so a
    user can quote it and an operator find the request's log lines.
    """
    error: dict[str, Any] = {"code": code, "message": message}
    error.update({k: v for k, v in extra.items() if v is not None})
    request_id = REQUEST_ID.get()
    if request_id is not None:
        error["request_id"] = request_id
    return {"error": error}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A JSON error response in the contract's shape."""
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=headers)


async def _runevents_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, exc.RuneventsError)
    status = status_of(error)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(error, exc.StorageError):
        # contract 6: a batch that cannot be made durable gets 503 + Retry-After
        headers = {"Retry-After": str(max(1, int(error.retry_after)))}
    if status >= 500:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, error.code, error)
    # the first bad line of an ingest batch (InvalidEvent.line, or PayloadTooLarge's detail)
    line = getattr(error, "line", None) or error.details.get("line")
    message = error.message
    for hidden, said in getattr(request.app.state, "hidden_in_errors", ()):
        # the server's own whereabouts stay in its log (above), out of the answer
        message = message.replace(hidden, said)
    return error_response(status, error.code, message, headers=headers, line=line)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("query", "limit") -> "query.limit"; the body's own name is noise
    parts = [str(p) for p in loc]
    return ".".join(parts) or "request"


async def _validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    # only loc/msg/type: the offending input may be bytes that are not even UTF-8
    details = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": e.get("type"),
        }
        for e in error.errors()
    ]
    if details:
        first = details[0]
        message = f"{_location(first['loc'])}: {first['msg']}"
    else:
        message = "the request is invalid"
    return error_response(422, "invalid_input", message, details=details)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    status = error.status_code
    if status == 400:
        # FastAPI's "There was an error parsing the body" (invalid UTF-8, nesting
        # beyond the JSON parser's limit): invalid input is 422 in this API
        status = 422
    code = _HTTP_CODES.get(status, "http_error")
    message = error.detail if isinstance(error.detail, str) else code.replace("_", " ")
    headers = dict(error.headers or {})
    if status == 405:
        headers["Allow"] = allowed_methods(request)
    return error_response(status, code, message, headers=headers or None)


#: the methods a 405's ``Allow`` may list
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")


def allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405: every method some route takes on the request's path.

    Starlette answers with the methods of the first route whose path matches,
    but each method of a path is a route of its own here (``GET`` and
    ``DELETE /api/v1/session`` ...), so that listed only some of them. Each
    method is tried against the whole routing table (``matches`` is the
    routes' public interface, and sees into included routers too).
    """
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed)


async def _client_disconnect(request: Request, error: Exception) -> Response:
    # the client went away while we read its body: nobody will see this answer
    log.info("%s %s: client disconnected", request.method, request.url.path)
    return error_response(400, "client_disconnected", "the client disconnected")


async def _unexpected(request: Request, error: Exception) -> Response:
    log.exception("%s %s: unexpected error", request.method, request.url.path, exc_info=error)
    return error_response(500, "internal_error", "internal server error")


def install(app: FastAPI, hidden: dict[str, str] | None = None) -> None:
    """Register every handler on ``app``.

    ``hidden``: strings an error message must not show a client, and what to say
    instead -- the server's storage URL, its object store's endpoint, its data
    directory. A storage failure's message names them for the operator (the
    server log keeps it whole); a client learns which run failed and why, not
    where the server keeps its files (an outside probe saw a 503 name the bucket,
    the prefix and the S3 endpoint). Longest first, so a URL is hidden whole
    before a part of it is.
    """
    pairs = sorted((hidden or {}).items(), key=lambda pair: len(pair[0]), reverse=True)
    app.state.hidden_in_errors = [(text, said) for text, said in pairs if text]
    app.add_exception_handler(exc.RuneventsError, _runevents_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected)
