"""One browser session for the whole deployment (contract 7), with no extra setting."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from runevents.api.app import create_app
from runevents.app import App
from runevents.auth import TokenRegistry
from runevents.settings import Settings
from tests.fixtures.app import asgi_client


@contextlib.asynccontextmanager
async def two_replicas(
    tmp_path: Path, api_settings: Settings, tokens: TokenRegistry
) -> AsyncIterator[tuple[list[Settings], httpx.AsyncClient, httpx.AsyncClient]]:
    """Two processes of one deployment: the same database, their own data dirs, no
    session_secret; a client of each."""
    settings = [
        api_settings.model_copy(
            update={"session_secret": None, "data_dir": tmp_path / f"replica-{i}"}
        )
        for i in range(2)
    ]
    apps = [await App.open(s, worker=False) for s in settings]
    try:
        first, second = (
            create_app(s, app=a, tokens=tokens) for s, a in zip(settings, apps, strict=True)
        )
        async with asgi_client(first) as one, asgi_client(second) as two:
            yield settings, one, two
    finally:
        for a in apps:
            await a.close()


async def test_regression_each_process_had_its_own_session_key(
    tmp_path: Path, api_settings: Settings, token_registry: TokenRegistry
) -> None:
    # two processes of one deployment: the same database, their own data dirs,
    # no session_secret. Before, each generated data_dir/session.key, so a cookie
    # from one was "invalid" at the other (a load balancer made users sign in again).
    async with two_replicas(tmp_path, api_settings, token_registry) as (settings, one, two):
        signed_in = await one.post("/api/v1/session", json={"token": "tok-read"})
        assert signed_in.status_code == 204
        cookie = one.cookies["runevents_session"]
        two.cookies.set("runevents_session", cookie)
        who = await two.get("/api/v1/session")
        assert who.status_code == 200, who.text
        assert who.json()["name"] == "reader"
    # nothing about the key is left in the data dirs
    for s in settings:
        assert not (s.data_dir / "session.key").exists()


async def test_sign_out_left_a_copied_cookie_valid(
    tmp_path: Path, api_settings: Settings, token_registry: TokenRegistry
) -> None:
    # Defect (outside probe): DELETE /api/v1/session only cleared the browser's cookie;
    # a copy of it (a shared machine, a leaked HAR file) stayed good until it expired.
    # Signing out must end the session for every process of the deployment.
    async with two_replicas(tmp_path, api_settings, token_registry) as (_, one, two):
        assert (await one.post("/api/v1/session", json={"token": "tok-read"})).status_code == 204
        copied = one.cookies["runevents_session"]
        # another session of the same token, in another browser
        assert (await two.post("/api/v1/session", json={"token": "tok-read"})).status_code == 204
        other = two.cookies["runevents_session"]
        assert (await two.get("/api/v1/session")).status_code == 200
        signed_out = await one.delete("/api/v1/session")
        assert signed_out.status_code == 204
        for client in (one, two):
            client.cookies.clear()
            client.cookies.set("runevents_session", copied)
            who = await client.get("/api/v1/session")
            assert who.status_code == 401, who.text
            runs = await client.get("/api/v1/workspaces/acme/runs")
            assert runs.status_code == 401
        # only that session ended: the other one of the same token still works
        two.cookies.clear()
        two.cookies.set("runevents_session", other)
        assert (await two.get("/api/v1/session")).status_code == 200
        # signing out twice, or with a refused cookie, is still 204
        one.cookies.set("runevents_session", copied)
        assert (await one.delete("/api/v1/session")).status_code == 204
