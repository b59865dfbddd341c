"""Browser sign-in (contract section 7): a token in, an HttpOnly session cookie out.

The cookie holds a signed, expiring reference to the token entry
(``auth.SessionSigner``), never the token. ``POST`` and ``DELETE`` are exempt
from the Origin rule of cookie requests: signing in needs the token itself, and
signing out can do no harm. Signing out records the session's id as revoked
in the database, so every process refuses the cookie from then on, a copy of
it included (not only once it expires).

In open mode (no tokens) there is nothing to sign in to: ``GET`` answers the
open principal, ``POST`` answers 204 without setting a cookie.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from runevents.api import schemas
from runevents.api.deps import SESSION_COOKIE, Caller, State
from runevents.api.runs import require_json
from runevents.api.schemas import errors
from runevents.exceptions import Unauthorized

router = APIRouter(prefix="/api/v1", tags=["session"])


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


@router.post(
    "/session",
    status_code=204,
    response_class=Response,
    responses=errors(401, 413, 415, 422),
    dependencies=[Depends(require_json)],
)
async def sign_in(body: schemas.SessionRequest, request: Request, state: State) -> Response:
    """Exchange a token for the ``runevents_session`` cookie (401 for a bad token)."""
    response = Response(status_code=204)
    if state.tokens.open:
        return response
    principal = state.tokens.authenticate(body.token)
    if principal is None:
        raise Unauthorized("unknown token")
    response.set_cookie(
        SESSION_COOKIE,
        (await state.session_signer()).issue(principal),
        max_age=int(state.settings.session_ttl_seconds),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.get("/session", response_model=schemas.SessionOut, responses=errors(401))
async def whoami(who: Caller) -> dict[str, object]:
    """The signed-in token's name, role and workspaces (401 if none)."""
    return who.to_dict()


@router.delete("/session", status_code=204, response_class=Response, responses=errors(503))
async def sign_out(request: Request, state: State) -> Response:
    """Sign out: the session is refused from now on, by every process, even a copy of its
    cookie; the cookie is cleared (204, also without a valid session)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and not state.tokens.open:
        session = (await state.session_signer()).verify_session(cookie)
        if session is not None:
            # (503 if the database is away: the session could not be ended)
            await state.manager.repo.revoke_session(
                session.id, datetime.fromtimestamp(session.expires, UTC)
            )
    response = Response(status_code=204)
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request)
    )
    return response
