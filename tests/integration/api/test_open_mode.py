"""Open mode shut to web pages; trusted proxies; one session key per deployment (contract 7).

The regression tests are named after the defects of issue 15.
"""

from __future__ import annotations

import httpx
import pytest

from runevents.api.app import create_app
from runevents.app import App
from runevents.auth import TokenRegistry
from runevents.settings import Settings
from tests.fixtures.app import asgi_client, bearer

RUNS = "/api/v1/workspaces/acme/configurations/hello/runs"
EXTERNAL = "/api/v1/workspaces/acme/configurations/ext/runs"


async def _runs(client: httpx.AsyncClient) -> int:
    listing = await client.get("/api/v1/workspaces/acme/runs", headers={"Host": "127.0.0.1"})
    return len(listing.json()["items"])


# -- regressions ------------------------------------------------------------------------


async def test_regression_a_no_cors_post_from_a_foreign_page_started_a_run(
    client: httpx.AsyncClient,
) -> None:
    # what fetch(..., {method: "POST", mode: "no-cors"}) from https://evil.example sends:
    # no body, no content type, the page's Origin, the server's own Host
    before = await _runs(client)
    response = await client.post(
        RUNS, headers={"Origin": "https://evil.example", "Host": "127.0.0.1:8000"}
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden"
    assert await _runs(client) == before  # nothing was started


async def test_regression_the_host_was_never_checked_so_dns_rebinding_could_read_runs(
    client: httpx.AsyncClient,
) -> None:
    # after rebinding, the page's own name points at 127.0.0.1: Host says evil.example
    # and the page is same-origin with itself, so even its reads would succeed
    for method, url in (
        ("GET", "/api/v1/workspaces/acme/runs"),
        ("GET", "/api/v1/configurations"),
        ("GET", "/"),
        ("GET", "/api/v1/health"),
        ("POST", RUNS),
    ):
        response = await client.request(
            method,
            url,
            headers={"Host": "evil.example:8000", "Origin": "http://evil.example:8000"},
        )
        assert response.status_code == 421, (method, url, response.text)
        body = response.json()
        assert body["error"]["code"] == "misdirected_request"
        assert "evil.example" in body["error"]["message"]


# -- the rules --------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "localhost"])
async def test_loopback_hosts_are_served(client: httpx.AsyncClient, host: str) -> None:
    response = await client.get("/api/v1/configurations", headers={"Host": host})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "http://127.0.0.1:9999", "http://localhost:8000"]
)
async def test_state_changes_from_a_foreign_origin_are_403(
    client: httpx.AsyncClient, origin: str
) -> None:
    # http://localhost:8000 is foreign to Host 127.0.0.1:8000: another origin to a browser
    headers = {"Host": "127.0.0.1:8000", "Origin": origin}
    created = await client.post(EXTERNAL, json={"external": True}, headers={"Host": "127.0.0.1"})
    run = created.json()["run"]
    run_path = f"{EXTERNAL}/{run['id']}"
    for method, url, kwargs in (
        ("POST", RUNS, {"json": {}}),
        ("POST", f"{run_path}/cancel", {}),
        ("POST", f"{run_path}/events", {"content": b'{"type":"x","payload":{}}\n'}),
        ("DELETE", "/api/v1/session", {}),
        ("POST", "/api/v1/session", {"json": {"token": "x"}}),
    ):
        response = await client.request(method, url, headers=headers, **kwargs)
        assert response.status_code == 403, (method, url, response.text)
    # reads with a foreign Origin are fine: a browser does not let the page see
    # the answer without CORS, and the Host is loopback
    assert (await client.get(run_path, headers=headers)).status_code == 200


@pytest.mark.parametrize(
    "origin", [None, "http://127.0.0.1:8000", "https://127.0.0.1:8000", "HTTP://127.0.0.1:8000"]
)
async def test_the_cli_and_the_servers_own_ui_keep_working(
    client: httpx.AsyncClient, origin: str | None
) -> None:
    # the CLI sends no Origin; the UI sends the page's own origin
    headers = {"Host": "127.0.0.1:8000"}
    if origin is not None:
        headers["Origin"] = origin
    created = await client.post(EXTERNAL, json={"external": True}, headers=headers)
    assert created.status_code == 201, created.text
    run = created.json()["run"]
    cancel = await client.post(f"{EXTERNAL}/{run['id']}/cancel", headers=headers)
    assert cancel.status_code == 202, cancel.text
    page = await client.get("/", headers=headers)
    assert page.status_code in {200, 404}  # 404 only when the UI is not installed


async def test_with_tokens_the_open_mode_guard_is_off(auth_client: httpx.AsyncClient) -> None:
    # a server with tokens may sit behind any name; the token is the protection
    response = await auth_client.get(
        "/api/v1/configurations", headers={"Host": "runevents.example", **bearer("tok-read")}
    )
    assert response.status_code == 200
    response = await auth_client.post(
        EXTERNAL,
        json={"external": True},
        headers={"Host": "runevents.example", "Origin": "https://evil.example"}
        | bearer("tok-write"),
    )
    assert response.status_code == 201


# -- trusted proxies ----------------------------------------------------------------------


async def _sign_in_cookie(asgi_app: object, headers: dict[str, str]) -> str:
    async with asgi_client(asgi_app) as http:  # type: ignore[arg-type]
        response = await http.post("/api/v1/session", json={"token": "tok-read"}, headers=headers)
        assert response.status_code == 204, response.text
        return response.headers["set-cookie"].lower()


async def test_regression_cookie_not_secure_behind_a_tls_terminating_proxy(
    api_settings: Settings, runevents_app: App, token_registry: TokenRegistry
) -> None:
    asgi = create_app(api_settings, app=runevents_app, tokens=token_registry)
    # the proxy on 127.0.0.1 (the ASGI test client's address) speaks plain http to
    # the server and says the browser's connection was https
    cookie = await _sign_in_cookie(asgi, {"X-Forwarded-Proto": "https"})
    assert "; secure" in cookie
    assert "; secure" not in await _sign_in_cookie(asgi, {})


async def test_forwarded_headers_from_an_untrusted_address_are_ignored(
    api_settings: Settings, runevents_app: App, token_registry: TokenRegistry
) -> None:
    settings = api_settings.model_copy(update={"forwarded_allow_ips": "10.1.2.3"})
    asgi = create_app(settings, app=runevents_app, tokens=token_registry)
    cookie = await _sign_in_cookie(asgi, {"X-Forwarded-Proto": "https"})
    assert "; secure" not in cookie


async def test_two_host_headers_are_refused_not_judged_by_the_last_one(
    client: httpx.AsyncClient,
) -> None:
    # Defect (outside probe): the guard judged the last Host (127.0.0.1: let through)
    # while the routes' same-origin check read the first (evil.example); RFC 9112 3.2
    # says 400 for more than one
    before = await _runs(client)
    for hosts in (["evil.example", "127.0.0.1"], ["127.0.0.1", "evil.example"]):
        response = await client.post(
            EXTERNAL, json={"external": True}, headers=[("Host", h) for h in hosts]
        )
        assert response.status_code == 400, (hosts, response.text)
        assert response.json()["error"]["code"] == "bad_request"
    assert await _runs(client) == before
