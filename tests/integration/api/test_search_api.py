"""``GET /api/v1/workspaces/{ws}/search`` (contract section 12, issue 16)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from runevents.app import App
from runevents.exceptions import DatabaseError
from runevents.search import engine
from tests.fixtures.app import bearer
from tests.integration.api.helpers import COMPLETED, console, create_external, ingest

SEARCH = "/api/v1/workspaces/acme/search"


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


async def ended_run(client: httpx.AsyncClient, *messages: str, **kw: Any) -> dict[str, Any]:
    run = await create_external(client, **kw)
    response = await ingest(client, run, *(console(m) for m in messages), COMPLETED, **kw)
    assert response.status_code == 200, response.text
    return run


async def test_answer_is_ndjson_hits_then_done(client: httpx.AsyncClient) -> None:
    run = await ended_run(client, "nothing here", "a Timeout in ß-Straße", "TIMEOUT again")
    body = lines(await client.get(SEARCH, params={"q": "timeout"}))
    hits, done = body[:-1], body[-1]
    assert [set(h) for h in hits] == [
        {"run_id", "configuration_id", "sequence", "created_at", "message", "match"}
    ] * 2
    assert [(h["run_id"], h["sequence"], h["match"]) for h in hits] == [
        (run["id"], 3, [[2, 9]]),
        (run["id"], 4, [[0, 7]]),
    ]
    assert set(done) == {
        "done",
        "hits",
        "runs_scanned",
        "bytes_scanned",
        "bytes_skipped",
        "elapsed_ms",
        "cursor",
    }
    assert done["done"] is True and done["hits"] == 2 and done["cursor"] is None
    # casefolding (ß = ss) with spans in code points of the original message
    body = lines(await client.get(SEARCH, params={"q": "STRASSE"}))
    assert body[0]["match"] == [[15, 21]] and body[0]["message"][15:21] == "Straße"


async def test_limit_and_cursor_page_through_every_hit_once(client: httpx.AsyncClient) -> None:
    for r in range(3):
        await ended_run(client, *(f"hit {r}.{i}" for i in range(4)))
    seen: list[str] = []
    params: dict[str, Any] = {"q": "hit", "limit": 5}
    while True:
        body = lines(await client.get(SEARCH, params=params))
        seen += [h["message"] for h in body[:-1]]
        if body[-1]["cursor"] is None:
            break
        params["cursor"] = body[-1]["cursor"]
    assert seen == [f"hit {r}.{i}" for r in (2, 1, 0) for i in range(4)]


async def test_invalid_regex_is_422(client: httpx.AsyncClient) -> None:
    for q in ("(unclosed", "a{2,1}", r"(a)\1", "x" * 1001):
        response = await client.get(SEARCH, params={"q": q, "regex": "true"})
        assert response.status_code == 422, q
        assert response.json()["error"]["code"] in {"invalid_regex", "invalid_input"}
    response = await client.get(SEARCH, params={"q": "(unclosed", "regex": "true"})
    assert response.json()["error"]["code"] == "invalid_regex"
    # plain text is never a regex
    assert lines(await client.get(SEARCH, params={"q": "(unclosed"}))[-1]["done"] is True


async def test_bad_parameters_are_422(client: httpx.AsyncClient) -> None:
    for params in (
        {},
        {"q": ""},
        {"q": "x", "limit": 0},
        {"q": "x", "limit": 1001},
        {"q": "x", "cursor": "garbage"},
        {"q": "x", "cursor": "AAAAAAAAAAAAAAAAAAAAAAAAAAAA.5"},
        {"q": "x", "status": "sleeping"},
        {"q": "x", "stream": "stdin"},
        {"q": "x", "created_after": "yesterday"},
        {"q": "x", "configuration_id": ".."},
    ):
        response = await client.get(SEARCH, params=params)
        assert response.status_code == 422, (params, response.text)
        assert "error" in response.json()
    assert (await client.get("/api/v1/workspaces/../search", params={"q": "x"})).status_code in {
        404,
        422,
    }


async def test_regex_redos_pattern_answers_at_once(client: httpx.AsyncClient) -> None:
    # catastrophic for a backtracking engine (2^5000 ways to fail); linear for RE2
    await ended_run(client, "a" * 5000 + "!")
    body = lines(await client.get(SEARCH, params={"q": "(a+)+$", "regex": "true"}))
    assert body[-1]["hits"] == 0 and body[-1]["elapsed_ms"] < 2000
    body = lines(await client.get(SEARCH, params={"q": "(a+)+!$", "regex": "true"}))
    assert body[0]["match"] == [[0, 5001]]


async def test_token_searches_only_workspaces_it_can_read(
    auth_client: httpx.AsyncClient,
) -> None:
    await ended_run(auth_client, "secret acme line", headers=bearer("tok-write"))
    beta = await create_external(auth_client, ws="beta", headers=bearer("tok-beta"))
    await ingest(auth_client, beta, console("beta line"), COMPLETED, headers=bearer("tok-beta"))
    ok = lines(await auth_client.get(SEARCH, params={"q": "line"}, headers=bearer("tok-read")))
    assert [h["message"] for h in ok[:-1]] == ["secret acme line"]
    denied = await auth_client.get(SEARCH, params={"q": "line"}, headers=bearer("tok-beta"))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    assert (await auth_client.get(SEARCH, params={"q": "line"})).status_code == 401
    everywhere = await auth_client.get(
        "/api/v1/workspaces/beta/search", params={"q": "line"}, headers=bearer("tok-admin")
    )
    assert [h["message"] for h in lines(everywhere)[:-1]] == ["beta line"]


async def test_openapi_documents_the_route(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/api/v1/openapi.json")).json()
    operation = spec["paths"]["/api/v1/workspaces/{workspace_id}/search"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {
        "q",
        "regex",
        "configuration_id",
        "status",
        "created_after",
        "created_before",
        "stream",
        "level",
        "limit",
        "cursor",
    } <= names
    assert "application/x-ndjson" in operation["responses"]["200"]["content"]
    assert {"SearchHit", "SearchDone"} <= set(spec["components"]["schemas"])


async def test_date_bounds_that_the_runs_list_refuses_are_refused_here_too(
    client: httpx.AsyncClient,
) -> None:
    """Contract 12: ``created_after`` / ``created_before`` mean what they mean in the runs
    list, which takes RFC 3339 only. Search took Unix seconds and other ISO forms (200)."""
    for value in ("1733529600", "2026-12-07T00:00:00+0000", "2026-12-07 00:00:00+00:00"):
        for name in ("created_after", "created_before"):
            listed = await client.get("/api/v1/workspaces/acme/runs", params={name: value})
            searched = await client.get(SEARCH, params={"q": "x", name: value})
            assert listed.status_code == 422, (name, value)
            assert searched.status_code == 422, (name, value, searched.text)
    for value in ("2026-12-07T00:00:00Z", "2026-12-07T02:00:00.5+02:00"):
        searched = await client.get(SEARCH, params={"q": "x", "created_after": value})
        assert searched.status_code == 200, (value, searched.text)


async def test_a_search_whose_database_is_away_is_503_before_the_answer_starts(
    client: httpx.AsyncClient, runevents_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runs were first listed after the 200 had gone out: with the database away the
    answer was a 200 cut off with no body (and an ERROR in the server's log)."""
    await ended_run(client, "needle")

    async def away(*_args: Any, **_kwargs: Any) -> Any:
        raise DatabaseError("the database is away (test)")

    monkeypatch.setattr(runevents_app.manager.repo, "list_run_heads", away)
    response = await client.get(SEARCH, params={"q": "needle"})
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == DatabaseError.code


async def test_a_search_cut_by_the_database_after_it_started_ends_with_an_error_record(
    client: httpx.AsyncClient, runevents_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the 200 is out, the answer ends with ``{"error": ...}`` instead of the done
    record -- never a connection dropped without a word."""
    first = await ended_run(client, "needle one")
    newest = await ended_run(client, "needle two")
    monkeypatch.setattr(engine, "FIRST_BATCH", 1)
    monkeypatch.setattr(engine, "BATCH", 1)
    listed = runevents_app.manager.repo.list_run_heads
    calls: list[int] = []

    async def away_after_the_first_page(query: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:
            raise DatabaseError("the database went away (test)")
        return await listed(query)

    monkeypatch.setattr(runevents_app.manager.repo, "list_run_heads", away_after_the_first_page)
    body = lines(await client.get(SEARCH, params={"q": "needle"}))
    assert [hit["run_id"] for hit in body[:-1]] == [newest["id"]]
    assert body[-1] == {
        "error": {"code": DatabaseError.code, "message": "the database went away (test)"}
    }
    assert first["id"] != newest["id"]
