"""Auth over HTTP (contract section 7): bearer tokens, roles, workspaces, cookie sessions."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from runevents.api.app import create_app
from runevents.app import App
from runevents.auth import TokenRegistry
from runevents.settings import Settings
from tests.fixtures.app import asgi_client, bearer
from tests.integration.api.helpers import COMPLETED, NDJSON, console, ndjson, run_path, sse_events

ADMIN, WRITE, READ, BETA = (bearer(t) for t in ("tok-admin", "tok-write", "tok-read", "tok-beta"))
RUNS = "/api/v1/workspaces/acme/configurations/ext/runs"


async def make_run(client: httpx.AsyncClient, ws: str = "acme") -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/workspaces/{ws}/configurations/ext/runs", json={"external": True}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()["run"]
    return run


async def test_health_needs_no_token(auth_client: httpx.AsyncClient) -> None:
    assert (await auth_client.get("/api/v1/health")).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dG9rLWFkbWluOg=="},
        {"Authorization": "tok-admin"},
        {"Authorization": "Bearer tok-admin-but-longer"},
    ],
)
async def test_missing_or_unknown_token_is_401(
    auth_client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    run = await make_run(auth_client)
    for method, url in (
        ("GET", "/api/v1/workspaces/acme/runs"),
        ("GET", "/api/v1/configurations"),
        ("GET", "/api/v1/workspaces"),
        ("GET", run_path(run)),
        ("GET", run_path(run) + "/events"),
        ("GET", run_path(run) + "/events?stream=true"),
        ("GET", run_path(run) + "/search?q=x"),
        ("POST", run_path(run) + "/cancel"),
        ("POST", RUNS),
        ("GET", "/api/v1/session"),
    ):
        response = await auth_client.request(method, url, headers=headers)
        assert response.status_code == 401, (method, url, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    ingest = await auth_client.post(
        run_path(run) + "/events", content=ndjson(console("x")), headers={**NDJSON, **headers}
    )
    assert ingest.status_code == 401


async def test_foreign_workspace_is_403(auth_client: httpx.AsyncClient) -> None:
    run = await make_run(auth_client, "acme")
    for method, url in (
        ("GET", "/api/v1/workspaces/acme/runs"),
        ("GET", run_path(run)),
        ("GET", run_path(run) + "/events"),
        ("GET", run_path(run) + "/events?stream=true"),
        ("POST", run_path(run) + "/cancel"),
        ("POST", RUNS),
    ):
        response = await auth_client.request(method, url, headers=BETA)
        assert response.status_code == 403, (method, url)
        assert response.json()["error"]["code"] == "forbidden"
    response = await auth_client.post(
        run_path(run) + "/events", content=ndjson(console("x")), headers={**NDJSON, **BETA}
    )
    assert response.status_code == 403
    # the 403 does not depend on whether the run exists
    missing = {**run, "id": "run_01JAAAAAAAAAAAAAAAAAAAAAAA"}
    assert (await auth_client.get(run_path(missing), headers=BETA)).status_code == 403


async def test_read_role_reads_but_does_not_write(auth_client: httpx.AsyncClient) -> None:
    run = await make_run(auth_client)
    assert (await auth_client.get(run_path(run), headers=READ)).status_code == 200
    assert (await auth_client.get(run_path(run) + "/events", headers=READ)).status_code == 200
    for method, url, kw in (
        ("POST", RUNS, {"json": {"external": True}}),
        ("POST", run_path(run) + "/cancel", {}),
        ("POST", run_path(run) + "/events", {"content": ndjson(console("x"))}),
    ):
        headers = {**READ, **NDJSON} if url.endswith("/events") else READ
        response = await auth_client.request(method, url, headers=headers, **kw)
        assert response.status_code == 403, (method, url)
        assert "write" in response.json()["error"]["message"]


async def test_write_role_in_its_workspace(auth_client: httpx.AsyncClient) -> None:
    created = await auth_client.post(RUNS, json={"external": True}, headers=WRITE)
    assert created.status_code == 201
    run = created.json()["run"]
    appended = await auth_client.post(
        run_path(run) + "/events",
        content=ndjson(console("x"), COMPLETED),
        headers={**WRITE, **NDJSON},
    )
    assert appended.status_code == 200
    assert (await auth_client.get(run_path(run), headers=WRITE)).json()["run"][
        "status"
    ] == "succeeded"


async def test_lists_are_filtered_to_the_callers_workspaces(auth_client: httpx.AsyncClient) -> None:
    await make_run(auth_client, "acme")
    await make_run(auth_client, "beta")
    await make_run(auth_client, "gamma")
    names = lambda r: [w["workspace_id"] for w in r.json()["items"]]  # noqa: E731
    assert names(await auth_client.get("/api/v1/workspaces", headers=ADMIN)) == [
        "acme",
        "beta",
        "gamma",
    ]
    assert names(await auth_client.get("/api/v1/workspaces", headers=READ)) == ["acme"]
    assert names(await auth_client.get("/api/v1/workspaces", headers=BETA)) == ["beta"]
    configs = await auth_client.get("/api/v1/configurations", headers=BETA)
    assert configs.json() == {"items": []}
    configs = await auth_client.get("/api/v1/configurations", headers=READ)
    assert {c["workspace_id"] for c in configs.json()["items"]} == {"acme"}


# ------------------------------------------------------------------ browser sessions


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/v1/session", json={"token": token})


async def test_sign_in_sets_a_strict_httponly_cookie(auth_client: httpx.AsyncClient) -> None:
    response = await sign_in(auth_client, "tok-write")
    assert response.status_code == 204
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("runevents_session=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "samesite"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
    assert "secure" not in attributes  # plain http
    assert "tok-write" not in cookie
    who = await auth_client.get("/api/v1/session")
    assert who.json() == {"name": "writer", "role": "write", "workspaces": ["acme"]}
    # the cookie acts as the token on reads, including the SSE route
    run = await make_run(auth_client)
    assert (await auth_client.get(run_path(run))).status_code == 200
    await auth_client.post(
        run_path(run) + "/events", content=ndjson(COMPLETED), headers={**ADMIN, **NDJSON}
    )
    stream = await auth_client.get(run_path(run) + "/events", params={"stream": "true"})
    assert stream.status_code == 200 and len(sse_events(stream.content)) == 2
    assert (await auth_client.get("/api/v1/workspaces/beta/runs")).status_code == 403


async def test_sign_in_over_https_sets_secure(
    api_settings: Settings, runevents_app: App, token_registry: TokenRegistry
) -> None:
    asgi = create_app(api_settings, app=runevents_app, tokens=token_registry)
    async with asgi_client(asgi, base_url="https://runevents.example") as client:
        response = await sign_in(client, "tok-read")
        assert response.status_code == 204
        assert "secure" in response.headers["set-cookie"].lower()


@pytest.mark.parametrize("body", [{"token": "nope"}, {"token": ""}, {}, {"token": 5}])
async def test_bad_sign_in(auth_client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await auth_client.post("/api/v1/session", json=body)
    assert response.status_code in {401, 422}
    assert "set-cookie" not in response.headers
    assert (await auth_client.get("/api/v1/session")).status_code == 401


async def test_cookie_state_changes_need_a_matching_origin(auth_client: httpx.AsyncClient) -> None:
    await sign_in(auth_client, "tok-write")
    no_origin = await auth_client.post(RUNS, json={"external": True})
    assert no_origin.status_code == 403
    assert "Origin" in no_origin.json()["error"]["message"]
    foreign = await auth_client.post(
        RUNS, json={"external": True}, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403
    scheme_trick = await auth_client.post(RUNS, json={"external": True}, headers={"Origin": "null"})
    assert scheme_trick.status_code == 403
    same = await auth_client.post(
        RUNS, json={"external": True}, headers={"Origin": "http://127.0.0.1"}
    )
    assert same.status_code == 201
    run = same.json()["run"]
    cancel = await auth_client.post(run_path(run) + "/cancel")
    assert cancel.status_code == 403
    cancel = await auth_client.post(
        run_path(run) + "/cancel", headers={"Origin": "http://127.0.0.1"}
    )
    assert cancel.status_code == 202
    # a bearer token needs no Origin, even with the cookie present
    assert (await auth_client.post(RUNS, json={"external": True}, headers=WRITE)).status_code == 201


async def test_sign_out(auth_client: httpx.AsyncClient) -> None:
    await sign_in(auth_client, "tok-read")
    assert (await auth_client.get("/api/v1/session")).status_code == 200
    response = await auth_client.delete("/api/v1/session")  # exempt from Origin
    assert response.status_code == 204
    assert 'runevents_session=""' in response.headers["set-cookie"] or (
        "max-age=0" in response.headers["set-cookie"].lower()
    )
    assert (await auth_client.get("/api/v1/session")).status_code == 401


async def test_forged_cookie_is_401(auth_client: httpx.AsyncClient) -> None:
    auth_client.cookies.set("runevents_session", "eyJuIjoiYWRtaW4ifQ.AAAA")
    response = await auth_client.get("/api/v1/workspaces/acme/runs")
    assert response.status_code == 401


async def test_open_mode_session_and_access(client: httpx.AsyncClient) -> None:
    who = await client.get("/api/v1/session")
    assert who.json() == {"name": "open", "role": "admin", "workspaces": ["*"]}
    response = await client.post("/api/v1/session", json={"token": "anything"})
    assert response.status_code == 204 and "set-cookie" not in response.headers
    assert (await client.get("/api/v1/workspaces/x/runs")).status_code == 200


async def test_regression_lookup_by_id_answered_403_naming_another_workspace(
    auth_client: httpx.AsyncClient,
) -> None:
    # GET /api/v1/runs/{id} told a token of workspace acme that the run exists and
    # lives in "beta"; now it is as unknown as a run that does not exist
    run = await make_run(auth_client, ws="beta")
    foreign = await auth_client.get(f"/api/v1/runs/{run['id']}", headers=READ)
    missing = await auth_client.get("/api/v1/runs/run_01JAAAAAAAAAAAAAAAAAAAAAAA", headers=READ)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["code"] == missing.json()["error"]["code"] == "run_not_found"
    assert "beta" not in foreign.text
    assert (await auth_client.get(f"/api/v1/runs/{run['id']}", headers=BETA)).status_code == 200
