"""The FastAPI application: routers, error handlers, the web UI, the lifespan.

``create_app(settings)`` builds everything that can fail from configuration
(the tokens file) at once, so a bad tokens file stops ``runevents serve``
before it binds. The session signing key is read from the database on first
use (``ApiState.session_signer``).

Middleware, outermost first: the trusted-proxy headers (``X-Forwarded-Proto``
and ``-For`` from ``forwarded_allow_ips`` only, so the session cookie is
``Secure`` behind a TLS-terminating proxy), in open mode the Host/Origin guard
(``guard.py``), then the body limit. The lifespan opens the :class:`~runevents.app.App`
(database, log store, manager, worker) unless the caller hands one in (tests,
benchmarks), and closes only what it opened.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from runevents.api import (
    durable,
    errors,
    events,
    lookup,
    openapi,
    ops,
    outline,
    runs,
    search,
    session,
)
from runevents.api.context import RequestContext
from runevents.api.deps import ApiState
from runevents.api.forward import Forwarder
from runevents.api.guard import OpenModeGuard, is_loopback_host
from runevents.api.head import HeadAsGet
from runevents.app import App
from runevents.auth import SessionSigner, TokenRegistry, load_tokens
from runevents.db.replicas import ReplicaRepository
from runevents.replicas import default_advertise_url, stale_after
from runevents.settings import Settings

log = logging.getLogger(__name__)

#: allocations (of tracked objects, net of frees) before a young collection while serving
YOUNG_GC_THRESHOLD = 50_000
#: the static web UI (written by the UI module; served only if present)
WEB_DIR = Path(__file__).resolve().parent.parent / "web"

API_DESCRIPTION = """\
Event log store for runs: every run writes an append-only NDJSON log; live runs
stream over SSE, finished ones replay. Authenticate with `Authorization: Bearer
<token>` or the `runevents_session` cookie (`POST /api/v1/session`); errors are
`{"error": {"code", "message"}}`.
"""


class BodyLimit:
    """Refuse request bodies over the limit as they arrive (413), never buffering them.

    Ingest (``POST .../events``) may send ``max_batch_bytes``; every other body
    (small JSON documents) at most ``max_event_bytes``.
    """

    def __init__(self, app: ASGIApp, *, batch_bytes: int, other_bytes: int) -> None:
        self.app = app
        self.batch_bytes = batch_bytes
        self.other_bytes = other_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD", "OPTIONS"}:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.batch_bytes if path.endswith("/events") else self.other_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                response = errors.error_response(
                    413,
                    "payload_too_large",
                    f"the body is {int(value)} bytes; the limit is {limit}",
                )
                await response(scope, receive, send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"the body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, limited, send)


#: Headers of the UI's HTML. Its scripts are its own files, so nothing injected into a
#: page (a producer's string that escaped escaping) can run; it is never shown inside
#: another site's frame, where a user's clicks could act on it (contract 7 shuts web
#: pages out, open mode included); and no run's URL leaves in a Referer. Inline styles
#: stay allowed: rows set ``--depth`` and ANSI colours as style attributes.
UI_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _mount_web(app: FastAPI) -> None:
    index = WEB_DIR / "index.html"
    static = WEB_DIR / "static"
    if static.is_dir():
        app.mount("/static", StaticFiles(directory=static), name="static")

    async def page() -> Response:
        if not index.is_file():
            raise HTTPException(404, "the web UI is not installed")
        return FileResponse(index, media_type="text/html", headers=UI_HEADERS)

    # deep links (/workspaces/{ws}/runs/{run}) are the SPA's: same page, its router decides
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/workspaces/{path:path}", page, methods=["GET"], include_in_schema=False)

    # Any other page a browser asks for gets the UI's own not-found page (the
    # HTML, status 404), not raw JSON (issue 19). Hooked where the router gives
    # up, after every route had its say, so a wrong method on an API path stays
    # 405 and API and static paths keep their JSON 404.
    fallback = app.router.default

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        # (/ds/v1 is API too: the Durable Streams protocol, contract 14)
        api_or_static = path.startswith(("/api/", "/static/", "/ds/")) or path in {
            "/api",
            "/static",
            "/ds",
        }
        if (
            scope["type"] == "http"
            and scope["method"] in {"GET", "HEAD"}
            and not api_or_static
            and index.is_file()
        ):
            page = FileResponse(index, media_type="text/html", status_code=404, headers=UI_HEADERS)
            await page(scope, receive, send)
            return
        await fallback(scope, receive, send)

    app.router.default = not_found


class RuneventsAPI(FastAPI):
    """FastAPI with :class:`RequestContext` outside everything, Starlette's error layer included.

    ``add_middleware`` would put it inside that layer, and a 500 answer would then
    leave without ``X-Request-ID``.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContext(super().build_middleware_stack())


@contextlib.asynccontextmanager
async def _forwarding(state: ApiState, app: App) -> AsyncIterator[None]:
    """Batches for runs whose writer another replica holds are relayed there (forward.py)."""
    state.forwarder = Forwarder(
        ReplicaRepository(app.database),
        app.manager.ownership.owner,
        stale_after=stale_after(app.settings.writer_lease_seconds),
        # a frozen owner's leases are all gone after one writer lease (forward.py)
        unresponsive_seconds=app.settings.writer_lease_seconds,
        url=app.presence.url if app.presence is not None else None,
    )
    try:
        yield
    finally:
        forwarder, state.forwarder = state.forwarder, None
        await forwarder.close()


def _hidden_in_errors(settings: Settings) -> dict[str, str]:
    """Where this server keeps its files, as its error messages spell it, and what a
    client reads instead (``errors.install``)."""
    storage = settings.resolved_storage_url.rstrip("/")
    places = {storage: "the log store", str(settings.data_dir.resolve()): "the data directory"}
    if storage.startswith("file://"):
        places[urlsplit(storage).path.rstrip("/")] = "the log store"
    endpoint = (settings.s3_endpoint_url or "").rstrip("/")
    if storage.startswith("s3://"):
        # the object store's own error text spells the object's URL path-style
        located = storage.removeprefix("s3://")
        places[located] = "the log store"
        if endpoint:
            places[f"{endpoint}/{located}"] = "the log store"
    if endpoint:
        places[endpoint] = "the object store"
    # (a root or a very short path would turn every "/" of a message into words)
    return {place: said for place, said in places.items() if len(place) > 3}


def create_app(
    settings: Settings, *, app: App | None = None, tokens: TokenRegistry | None = None
) -> FastAPI:
    """The ASGI application. ``app``: an already open App (not closed at shutdown).

    ``tokens`` overrides ``settings.tokens_file``. Raises ConfigError for a bad
    tokens file.
    """
    if tokens is None:
        tokens = load_tokens(settings.tokens_file) if settings.tokens_file else TokenRegistry()
    secret = settings.session_secret.encode("utf-8") if settings.session_secret else None
    state = ApiState(
        settings=settings,
        tokens=tokens,
        signer=SessionSigner(secret, tokens, settings.session_ttl_seconds),
        app=app,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if app is not None:
            state.app = app
            async with _forwarding(state, app):
                yield
            return
        # this process serves HTTP: it announces where other replicas reach it
        advertise = settings.advertise_url or default_advertise_url(settings.host, settings.port)
        if tokens.open and not is_loopback_host(urlsplit(advertise).netloc):
            # the open-mode guard would answer the relayed batches 421
            log.warning(
                "advertising %s, but without tokens this server answers only to a loopback "
                "Host: replicas cannot forward batches here (give every replica --tokens)",
                advertise,
            )
        opened = await App.open(settings, advertise=advertise)
        state.app = opened
        # Everything built so far lives as long as the process: move it out of
        # the collector's sight. Ingest allocates thousands of objects per
        # batch, and each full collection would otherwise walk the whole app
        # (measured: about 12% of the server's CPU per ingested event).
        gc.freeze()
        # A 1,000-event batch allocates over 1,000 tracked objects (its payload dicts)
        # that die with its request: past the default 700 a young collection ran
        # mid-batch (1.4 per batch, plus an older one every 8; ~0.5 ms of a ~7 ms
        # batch, measured with gc.callbacks). With room for a few batches they are
        # freed by refcount before any collection looks at them.
        thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_GC_THRESHOLD, *thresholds[1:])
        try:
            async with _forwarding(state, opened):
                yield
        finally:
            gc.set_threshold(*thresholds)
            state.app = None
            await opened.close()

    api = RuneventsAPI(
        title="runevents",
        version="1",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    api.state.api = state
    errors.install(api, hidden=_hidden_in_errors(settings))
    openapi.install(api, open_mode=tokens.open)
    api.include_router(runs.router)
    api.include_router(events.router)
    api.include_router(session.router)
    api.include_router(lookup.router)
    api.include_router(ops.router)
    api.include_router(durable.router)
    api.include_router(outline.router)
    api.include_router(search.router)
    _mount_web(api)
    # innermost: a HEAD goes through every check as the GET it stands for
    api.add_middleware(HeadAsGet, routes=api.routes)
    api.add_middleware(
        BodyLimit, batch_bytes=settings.max_batch_bytes, other_bytes=settings.max_event_bytes
    )
    if tokens.open:
        api.add_middleware(OpenModeGuard)
    # the last one added runs first: the scheme is the client's before anything looks
    api.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    return api
