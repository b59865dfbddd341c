"""``POST {run}/events``: serving a producer's batch, and the route's fast lane.

Ingest is the one route whose cost per request decides a headline figure
(a durable 1,000-event batch against a Postgres COPY, issue 13). Profiled on
the bench's batches, FastAPI's per-request machinery -- solving the
dependencies, validating the path ids and the header through pydantic,
validating and serializing the answer through the response model -- was about
1.5 ms of the roughly 9 ms of CPU a batch costs.

:class:`IngestRoute` keeps FastAPI for everything it is good at here: the route
is declared with FastAPI (so the OpenAPI description is generated from the
endpoint's signature, like every other route's), and every request that is not
plainly valid goes through FastAPI's own handler, which answers it exactly as
before (401, 403, 422 with its details). Only a request whose every check is
already known to pass -- a known writer, well-formed ids, an
``Idempotency-Key`` of legal length -- skips straight to :func:`serve_batch`,
the same function the declared endpoint calls. So the fast lane decides no
error of its own: it is a subset of the requests FastAPI would accept, with
the same principal, served by the same code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import Request
from starlette.responses import Response

from runevents.api import ingest
from runevents.api.deps import ApiState
from runevents.auth import OPEN_PRINCIPAL
from runevents.exceptions import InvalidInput, PayloadTooLarge, WriterMoving
from runevents.ids import check_name, check_run_id
from runevents.manager import RunManager

#: the ``Idempotency-Key`` header's bounds, as the declared endpoint states them
KEY_MIN, KEY_MAX = 1, 200

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


async def serve_batch(
    request: Request,
    state: ApiState,
    manager: RunManager,
    ids: tuple[str, str, str],
    idempotency_key: str | None,
) -> Response:
    """Append the request's NDJSON batch atomically (contract section 6): its answer.

    ``ids`` (workspace, configuration, run) and the caller are already checked.
    """
    ingest.check_content_type(request.headers.get("content-type"))
    ingest.check_content_encoding(request.headers.getlist("content-encoding"))
    settings = state.settings
    # memory stays bounded however many producers send at once (ingest_budget.py)
    declared = ingest.declared_length(request.headers.get("content-length"))
    async with state.ingest_budget.reserve(
        settings.max_batch_bytes if declared is None else declared
    ):
        return await _serve_batch(request, state, manager, ids, idempotency_key)


async def _serve_batch(
    request: Request,
    state: ApiState,
    manager: RunManager,
    ids: tuple[str, str, str],
    idempotency_key: str | None,
) -> Response:
    workspace_id, configuration_id, run_id = ids
    # the body is checked before the run is looked up: one database round trip
    # less per batch (the manager reads the row anyway)
    settings = state.settings
    body = await ingest.read_body(
        request.stream(), request.headers.get("content-length"), settings.max_batch_bytes
    )
    if state.forwarder is not None and manager.held.get(run_id) is None:
        # another replica holds the run's writer: the batch is its to judge (forward.py)
        relayed = await state.forwarder.relay_early(request, body, run_id)
        if relayed is not None:
            return relayed
    # the relaxed setting: the answer must not claim more than it gives (contract 6)
    relaxed = settings.fsync == "never" and not settings.live_tier_enabled
    try:
        drafts = ingest.parse_batch(
            body,
            workspace_id=workspace_id,
            configuration_id=configuration_id,
            run_id=run_id,
            max_event_bytes=settings.max_event_bytes,
        )
        answer = await manager.ingest(
            workspace_id,
            configuration_id,
            run_id,
            drafts,
            idempotency_key=idempotency_key,
            # a key names one batch: the same key with other bytes is refused (422)
            body_sha256=hashlib.sha256(body).hexdigest() if idempotency_key is not None else None,
            body=body,
        )
    except WriterMoving as moving:
        if state.forwarder is None:
            raise
        # another replica holds the run's writer: its answer is ours (api/forward.py)
        return await state.forwarder.forward(request, body, run_id, moving)
    except (InvalidInput, PayloadTooLarge) as refused:
        # a batch is refused before it is masked, and the message may quote the
        # bad value: a secret of the run never goes back in an answer (contract 11)
        refused.message = await manager.masks.mask_error(
            workspace_id, configuration_id, run_id, refused.message, body
        )
        refused.args = (refused.message,)
        raise
    return Response(
        orjson.dumps(answer),
        media_type="application/json",
        headers={"Durability": "relaxed"} if relaxed else None,
    )


def plain_request(request: Request, state: ApiState) -> tuple[tuple[str, str, str], str | None]:
    """The ids and key of a request every check of the declared endpoint passes.

    Raises LookupError when that is not certain; FastAPI's handler then judges
    the request (and answers the error, if there is one).
    """
    params = request.path_params
    try:
        workspace_id = check_name(params["workspace_id"])
        configuration_id = check_name(params["configuration_id"])
        run_id = check_run_id(params["run_id"])
    except (KeyError, InvalidInput):
        raise LookupError("ids") from None
    key = request.headers.get("idempotency-key")
    if key is not None and not KEY_MIN <= len(key) <= KEY_MAX:
        raise LookupError("Idempotency-Key")
    tokens = state.tokens
    if tokens.open:
        who = OPEN_PRINCIPAL
    else:
        # only a well-formed bearer token takes the lane; a cookie (and its
        # Origin rule) or anything odd is FastAPI's to judge
        scheme, credentials = get_authorization_scheme_param(request.headers.get("authorization"))
        found = tokens.authenticate(credentials) if scheme.lower() == "bearer" else None
        if found is None:
            raise LookupError("caller")
        who = found
    if not (who.can_read(workspace_id) and who.can_write(workspace_id)):
        raise LookupError("role")
    return (workspace_id, configuration_id, run_id), key


class IngestRoute(APIRoute):
    """The ingest route: FastAPI's declaration and handler, and the fast lane in front."""

    def get_route_handler(self) -> Handler:
        checked = super().get_route_handler()

        async def handler(request: Request) -> Response:
            state: ApiState = request.app.state.api
            try:
                ids, key = plain_request(request, state)
            except LookupError:
                return await checked(request)
            return await serve_batch(request, state, state.manager, ids, key)

        return handler
