"""Request dependencies: the app state, authentication and per-workspace authorization.

Order of checks on a route (contract sections 1 and 7): who is calling (401),
are the path ids well-formed (422, before any file or row is touched), may the
caller touch that workspace with that role (403).

A request carrying ``Authorization: Bearer`` is authenticated by it alone. A
request with only the session cookie acts as the cookie's token; if it changes
state it must also carry an ``Origin`` that matches the server (a cross-site
form post or fetch cannot forge that header), else 403.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Path, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator, WithJsonSchema

from runevents.api.forward import Forwarder
from runevents.api.ingest_budget import IngestBudget
from runevents.app import App
from runevents.auth import (
    OPEN_PRINCIPAL,
    SESSION_KEY_NAME,
    Principal,
    SessionSigner,
    TokenRegistry,
)
from runevents.exceptions import Forbidden, InvalidInput, Unauthorized
from runevents.ids import check_name
from runevents.manager import RunManager
from runevents.secretbox import new_key
from runevents.settings import Settings
from runevents.timestamps import normalize_created_at

#: workspace and configuration ids (contract section 1; "." and ".." cannot match)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
#: path parameters carry the patterns so the OpenAPI schema states them
WorkspaceId = Annotated[str, Path(pattern=NAME_PATTERN, description="workspace id")]
ConfigurationId = Annotated[str, Path(pattern=NAME_PATTERN, description="configuration id")]
RunId = Annotated[str, Path(pattern=r"^run_[0-9A-HJKMNP-TV-Z]{26}$", description="run id")]


def _rfc3339(value: object) -> object:
    # what timestamps.normalize_created_at reads (RFC 3339 only, UTC), clamped to
    # years 0001-9999, so a filter bound never fails past validation
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("an RFC 3339 date-time is a string")
    try:
        text = normalize_created_at(value, clamp=True)
    except InvalidInput as exc:
        raise ValueError(exc.message) from None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


#: an RFC 3339 date-time parameter, as UTC. Pydantic's own datetime would also
#: take a number (Unix time), which the schema's ``format: date-time`` forbids
Timestamp = Annotated[
    datetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

#: name of the browser session cookie (contract section 7)
SESSION_COOKIE = "runevents_session"
#: methods that never change state
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# auto_error=False: we raise our own 401 in the contract's error shape; these
# objects are here so the OpenAPI schema documents both ways to authenticate
_bearer = HTTPBearer(auto_error=False, description="a token from the tokens file")
_cookie = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, description="browser session (POST /api/v1/session)"
)


@dataclasses.dataclass(slots=True)
class ApiState:
    """What routes need, stored on ``app.state.api``."""

    settings: Settings
    tokens: TokenRegistry
    signer: SessionSigner
    #: set by the lifespan once the App is open
    app: App | None = None
    #: relays batches to the replica owning a run's writer (set by the lifespan)
    forwarder: Forwarder | None = None
    #: ingest bytes in flight (made on first use: it needs the running loop)
    _budget: IngestBudget | None = None

    @property
    def ingest_budget(self) -> IngestBudget:
        """The budget of ingest bodies this process reads and decodes at once."""
        if self._budget is None:
            self._budget = IngestBudget(
                self.settings.max_inflight_batch_bytes, self.settings.inflight_wait_seconds
            )
        return self._budget

    @property
    def manager(self) -> RunManager:
        if self.app is None:  # pragma: no cover - only before the lifespan ran
            raise RuntimeError("the application is not started")
        return self.app.manager

    async def session_signer(self) -> SessionSigner:
        """The signer, its key loaded: ``session_secret``, else the database's.

        The key in the database is created once for the deployment, so every
        process on the same database signs and verifies with the same key
        (contract 7: a session one process issued is accepted by all).
        """
        if not self.signer.ready:
            key = await self.manager.repo.server_key(SESSION_KEY_NAME, new_key())
            self.signer.set_secret(bytes.fromhex(key))
        return self.signer

    async def signed_out(self, session_id: str) -> bool:
        """Whether the session was signed out, by any process of the deployment.

        Asked of the database on every request a cookie signs: only the
        browser's requests carry one, and a sign-out must hold everywhere at
        once (a copied cookie is refused from the next request on).
        """
        return await self.manager.repo.session_revoked(session_id)


# Dependencies are ``async def`` although none awaits: FastAPI runs a plain
# ``def`` dependency in its thread pool, a thread hand-off per dependency per
# request, which showed up in the ingest profile.


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


async def api_state(request: Request) -> ApiState:
    """The :class:`ApiState` of this app."""
    return _state(request)


async def manager(request: Request) -> RunManager:
    """The run manager."""
    return _state(request).manager


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme in {"http", "https"} and parts.netloc.lower() == host.lower()


async def principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> Principal:
    """Who the request acts as (401 without a valid token or session)."""
    state = _state(request)
    if state.tokens.open:
        return OPEN_PRINCIPAL
    header = request.headers.get("authorization")
    if header is not None:
        if bearer is None or bearer.scheme.lower() != "bearer":
            raise Unauthorized("use Authorization: Bearer <token>")
        found = state.tokens.authenticate(bearer.credentials)
        if found is None:
            raise Unauthorized("unknown token")
        return found
    if cookie:
        session = (await state.session_signer()).verify_session(cookie)
        if session is None or await state.signed_out(session.id):
            raise Unauthorized("the session expired or is invalid; sign in again")
        if request.method not in SAFE_METHODS and not _same_origin(request):
            raise Forbidden("a request signed in by cookie must come from this site (Origin)")
        return session.principal
    raise Unauthorized()


Caller = Annotated[Principal, Depends(principal)]


def _check_reader(workspace_id: str, who: Principal) -> None:
    check_name(workspace_id, "workspace_id")
    if not who.can_read(workspace_id):
        raise Forbidden(f"token {who.name!r} may not access workspace {workspace_id!r}")


async def reader(workspace_id: WorkspaceId, who: Caller) -> Principal:
    """The caller, if it may read ``workspace_id`` (422 bad id, 403 foreign workspace)."""
    _check_reader(workspace_id, who)
    return who


async def writer(workspace_id: WorkspaceId, who: Caller) -> Principal:
    """The caller, if it may change ``workspace_id`` (role write or admin)."""
    _check_reader(workspace_id, who)
    if not who.can_write(workspace_id):
        raise Forbidden(f"token {who.name!r} has role {who.role.value!r}; this needs write")
    return who


Reader = Annotated[Principal, Depends(reader)]
Writer = Annotated[Principal, Depends(writer)]
Manager = Annotated[RunManager, Depends(manager)]
State = Annotated[ApiState, Depends(api_state)]
