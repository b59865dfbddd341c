"""Operations routes (contract section 13): ``GET /metrics`` and ``GET /api/v1/ready``.

``/metrics`` is the Prometheus text format of :mod:`runevents.metrics`; it
needs an ``admin`` token when tokens are configured (open mode: open, like
every route). ``/api/v1/ready`` needs no token, like ``/health``: a load
balancer asks it, and it tells nothing but "ok" or which dependency is down.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from runevents import metrics, readiness
from runevents.api import errors
from runevents.api.deps import Caller, State
from runevents.api.schemas import errors as error_responses
from runevents.auth import Role
from runevents.exceptions import Forbidden, NotFound

router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {metrics.CONTENT_TYPE: {}}},
        **error_responses(401, 403, 404),
    },
    tags=["meta"],
)
async def prometheus_metrics(who: Caller, state: State) -> Response:
    """Prometheus metrics of this process (admin token when tokens are configured)."""
    if who.role is not Role.ADMIN:
        raise Forbidden(f"token {who.name!r} has role {who.role.value!r}; /metrics needs admin")
    if not state.settings.metrics_enabled:
        raise NotFound("metrics are switched off (RUNEVENTS_METRICS_ENABLED=false)")
    app = state.app
    collector = app.state_metrics if app is not None else None
    if collector is not None:
        await collector.refresh()
    return Response(metrics.render(collector), media_type=metrics.CONTENT_TYPE)


@router.get(
    "/api/v1/ready",
    responses={
        200: {"description": "the database and the log store answer"},
        503: {"description": "one of them does not; `error.checks` says which"},
    },
    tags=["meta"],
)
async def ready(state: State) -> JSONResponse:
    """Readiness for load balancers: 200 when the database and the log store answer."""
    app = state.app
    if app is None:  # pragma: no cover - only before the lifespan ran
        return errors.error_response(503, "not_ready", "the server is starting")
    checks = await readiness.check(
        app.database, app.manager.log.store, timeout=state.settings.ready_timeout_seconds
    )
    failing = {name: reason for name, reason in checks.items() if reason != readiness.OK}
    if failing:
        return errors.error_response(503, "not_ready", "; ".join(failing.values()), checks=checks)
    return JSONResponse({"status": "ready", "checks": checks})
