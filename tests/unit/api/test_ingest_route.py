"""The ingest fast lane (api/ingest_route.py) takes only requests FastAPI would accept.

Every request it declines goes through FastAPI's declared endpoint, which the
API tests cover (401, 403, 422 and their bodies); here: what it takes and
declines, and that a declined request still gets FastAPI's exact answer.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from starlette.requests import Request

from runevents.api.deps import ApiState
from runevents.api.ingest_route import plain_request
from runevents.auth import Principal, Role, TokenEntry, TokenRegistry, hash_token

RUN = "run_01M971R2QHWMGKVAH0MGJA1X7H"


class _State:
    def __init__(self, tokens: TokenRegistry) -> None:
        self.tokens = tokens


def _tokens() -> TokenRegistry:
    def entry(name: str, role: Role, workspaces: set[str]) -> TokenEntry:
        principal = Principal(name=name, role=role, workspaces=frozenset(workspaces))
        return TokenEntry(principal=principal, digest=hash_token(f"{name}-token"))

    return TokenRegistry(
        [
            entry("writer", Role.WRITE, {"ws"}),
            entry("reader", Role.READ, {"ws"}),
            entry("other", Role.WRITE, {"elsewhere"}),
        ]
    )


def _request(
    headers: dict[str, str] | None = None, *, ws: str = "ws", cfg: str = "cfg", run: str = RUN
) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": f"/api/v1/workspaces/{ws}/configurations/{cfg}/runs/{run}/events",
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()],
        "path_params": {"workspace_id": ws, "configuration_id": cfg, "run_id": run},
    }
    return Request(scope)


def _plain(request: Request, tokens: TokenRegistry) -> object:
    return plain_request(request, cast(ApiState, _State(tokens)))


def test_open_mode_and_a_writer_token_take_the_lane() -> None:
    assert _plain(_request(), TokenRegistry()) == (("ws", "cfg", RUN), None)
    taken = _plain(
        _request({"Authorization": "Bearer writer-token", "Idempotency-Key": "k1"}), _tokens()
    )
    assert taken == (("ws", "cfg", RUN), "k1")


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no credentials: 401 is FastAPI's to say
        {"Authorization": "Bearer nobody"},
        {"Authorization": "Basic writer-token"},
        {"Authorization": "Bearer reader-token"},  # read role: 403
        {"Authorization": "Bearer other-token"},  # another workspace: 403
        {"Cookie": "runevents_session=x"},  # cookies carry the Origin rule
        {"Authorization": "Bearer writer-token", "Idempotency-Key": ""},
        {"Authorization": "Bearer writer-token", "Idempotency-Key": "k" * 201},
    ],
)
def test_anything_not_plainly_valid_is_declined(headers: dict[str, str]) -> None:
    with pytest.raises(LookupError):
        _plain(_request(headers), _tokens())


@pytest.mark.parametrize(
    "ids",
    [
        {"ws": "-bad"},
        {"ws": "a" * 129},
        {"cfg": "ws\n"},
        {"run": "run_01m971r2qhwmgkvah0mgja1x7h"},
        {"run": RUN + "\n"},
        {"run": "run_01M971R2QHWMGKVAH0MGJA1X7U"},  # U is not Crockford base32
    ],
)
def test_malformed_ids_are_declined(ids: dict[str, str]) -> None:
    with pytest.raises(LookupError):
        _plain(_request(**ids), TokenRegistry())
