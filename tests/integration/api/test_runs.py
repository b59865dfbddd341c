"""Run routes (contract section 4) against a real App on SQLite and Postgres."""

from __future__ import annotations

import json
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from runevents.api.app import create_app
from runevents.app import App
from runevents.settings import Settings
from tests.fixtures.app import asgi_client
from tests.integration.api.helpers import (
    COMPLETED,
    console,
    create_external,
    ingest,
    run_path,
    sse_events,
    wait_ended,
)

RUN_FIELDS = {
    "id", "workspace_id", "configuration_id", "status", "exit_code", "created_at",
    "started_at", "completed_at", "updated_at", "events_path", "output_paths",
    "input_file_count", "table_count", "row_count", "max_validation_severity",
    "last_console_snippet", "logging_degraded", "event_count", "events_bytes", "log_state",
}  # fmt: skip


async def test_health_needs_nothing(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_create_external_run_answers_201_with_the_run(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/workspaces/acme/configurations/ext/runs", json={"external": True}
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"run", "summary"}
    assert body["summary"] is None
    run = body["run"]
    assert set(run) >= RUN_FIELDS
    assert run["id"].startswith("run_") and run["status"] == "queued"
    assert run["workspace_id"] == "acme" and run["configuration_id"] == "ext"
    assert run["log_state"] == "live" and run["event_count"] == 1
    got = await client.get(run_path(run))
    assert got.status_code == 200
    assert got.json()["run"]["id"] == run["id"]


async def test_create_unknown_configuration_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/workspaces/acme/configurations/nope/runs", json={})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "configuration_not_found"


async def test_create_without_body_executes_the_configuration(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/workspaces/acme/configurations/hello/runs")
    assert response.status_code == 201, response.text
    ended = await wait_ended(client, response.json()["run"])
    assert ended["run"]["status"] == "succeeded"
    assert ended["summary"]["status"] == "succeeded"
    assert ended["summary"]["console"]["lines"] == 2


async def test_create_with_stream_true_streams_until_completed(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/workspaces/acme/configurations/hello/runs?stream=true", json={}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.content.startswith(b"retry: 3000\n\n")
    events = sse_events(response.content)
    types = [json.loads(e["data"])["type"] for e in events]
    assert types[0] == "run.queued" and types[-1] == "run.completed"
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    assert "console.line" in types


async def test_get_unknown_and_mismatched_runs_are_404(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    missing = run_path({**run, "id": "run_01JAAAAAAAAAAAAAAAAAAAAAAA"})
    assert (await client.get(missing)).json()["error"]["code"] == "run_not_found"
    for other in ({**run, "workspace_id": "beta"}, {**run, "configuration_id": "other"}):
        response = await client.get(run_path(other))
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "run_not_found"


async def test_cancel_answers_202_then_409(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    response = await client.post(run_path(run) + "/cancel")
    assert response.status_code == 202
    assert response.json()["run"]["status"] == "cancelled"
    assert response.json()["summary"]["status"] == "cancelled"
    again = await client.post(run_path(run) + "/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "run_ended"


async def test_list_runs_newest_first_with_filters_and_cursor(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    runs = [await create_external(client, cfg=f"c{i % 2}") for i in range(5)]
    done = runs[1]
    assert (await ingest(client, done, console("x"), COMPLETED)).status_code == 200

    page = (await client.get("/api/v1/workspaces/acme/runs")).json()
    assert [r["id"] for r in page["items"]] == [r["id"] for r in reversed(runs)]
    assert page["next_cursor"] is None

    first = (await client.get("/api/v1/workspaces/acme/runs", params={"limit": 2})).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = (
        await client.get(
            "/api/v1/workspaces/acme/runs", params={"limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    assert [r["id"] for r in first["items"] + second["items"]] == [r["id"] for r in reversed(runs)][
        :4
    ]

    by_status = await client.get(
        "/api/v1/workspaces/acme/runs", params=[("status", "succeeded"), ("status", "failed")]
    )
    assert [r["id"] for r in by_status.json()["items"]] == [done["id"]]
    by_config = await client.get("/api/v1/workspaces/acme/runs", params={"configuration_id": "c0"})
    assert {r["configuration_id"] for r in by_config.json()["items"]} == {"c0"}
    assert len(by_config.json()["items"]) == 3
    window = await client.get(
        "/api/v1/workspaces/acme/runs",
        params={
            "created_after": before.isoformat(),
            "created_before": (datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
        },
    )
    assert len(window.json()["items"]) == 5
    future = await client.get(
        "/api/v1/workspaces/acme/runs",
        params={"created_after": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
    )
    assert future.json()["items"] == []
    other = await client.get("/api/v1/workspaces/beta/runs")
    assert other.json() == {"items": [], "next_cursor": None}


async def test_list_runs_rejects_bad_filters(client: httpx.AsyncClient) -> None:
    for params in (
        {"status": "exploded"},
        {"limit": 0},
        {"limit": 501},
        {"limit": "many"},
        {"created_after": "yesterday"},
        {"created_after": "2026-01-01T00:00:00"},  # no offset: not RFC 3339
        {"configuration_id": "../x"},
        {"cursor": "not-a-cursor"},
    ):
        response = await client.get("/api/v1/workspaces/acme/runs", params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"]["code"] == "invalid_input"


async def test_configurations_and_workspaces(client: httpx.AsyncClient) -> None:
    configs = (await client.get("/api/v1/configurations")).json()["items"]
    assert {(c["workspace_id"], c["configuration_id"]) for c in configs} == {
        ("acme", "hello"),
        ("acme", "sleepy"),
    }
    await create_external(client, ws="zeta")
    workspaces = (await client.get("/api/v1/workspaces")).json()
    assert workspaces == {"items": [{"workspace_id": "acme"}, {"workspace_id": "zeta"}]}


async def test_create_body_validation(client: httpx.AsyncClient) -> None:
    url = "/api/v1/workspaces/acme/configurations/ext/runs"
    for body in ({"mode": ""}, {"mode": 5}, {"options": []}, {"external": "maybe"}, [1]):
        response = await client.post(url, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_input"
    bad_json = await client.post(
        url, content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status_code == 422
    text = await client.post(url, content=b"external", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415
    assert text.json()["error"]["code"] == "unsupported_media_type"


async def test_web_ui_and_deep_links(client: httpx.AsyncClient) -> None:
    index = await client.get("/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    for deep in ("/workspaces/acme", "/workspaces/acme/runs/run_01JAAAAAAAAAAAAAAAAAAAAAAA"):
        page = await client.get(deep)
        assert page.status_code == 200 and page.content == index.content
    script = await client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert (await client.get("/static/nope.js")).status_code == 404
    docs = await client.get("/api/v1/openapi.json")
    assert docs.status_code == 200 and "/api/v1/health" in docs.json()["paths"]


async def test_the_ui_cannot_be_framed_by_another_site_and_runs_only_its_own_scripts(
    client: httpx.AsyncClient,
) -> None:
    # Defect (outside probe): the UI's pages sent no frame-ancestors / X-Frame-Options,
    # so a foreign page could frame the open-mode UI and have a user's clicks cancel a
    # run (contract 7: open mode still shuts out web pages), and no CSP
    for path in ("/", "/workspaces/acme/runs/run_01JAAAAAAAAAAAAAAAAAAAAAAA", "/no/such/page"):
        page = await client.get(path)
        assert page.headers["content-type"].startswith("text/html"), path
        assert page.headers["x-frame-options"] == "DENY", path
        policy = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, path
        assert "unsafe-eval" not in policy and "script-src 'self' 'unsafe-inline'" not in policy
        assert page.headers["x-content-type-options"] == "nosniff", path
        assert page.headers["referrer-policy"] == "same-origin", path


async def test_an_unmatched_durable_streams_path_is_a_json_404_not_the_ui_page(
    client: httpx.AsyncClient,
) -> None:
    # Defect (outside probe): /ds/v1 is API (contract 14), but a path no route matched
    # got the UI's HTML page; contract 4: errors are JSON
    for path in ("/ds/v1/workspaces/acme/runs/", "/ds/v1/workspaces/a%2fb/runs/x", "/ds/nope"):
        response = await client.get(path)
        assert response.status_code == 404, (path, response.text[:200])
        assert response.json()["error"]["code"] == "not_found", path


async def test_head_on_a_get_route_was_405(client: httpx.AsyncClient) -> None:
    # Defect (outside probe): HEAD answered 405 on /health, /ready, a run, the lists and
    # the UI (RFC 9110 9.3.2: HEAD wherever GET); load balancers probe with HEAD
    run = await create_external(client)
    await ingest(client, run, console("one"), console("two"))
    paths = [
        "/api/v1/health",
        "/api/v1/ready",
        "/api/v1/configurations",
        "/api/v1/workspaces/acme/runs",
        run_path(run),
        run_path(run) + "/text",  # a streamed body: stopped at once
        "/",
        "/workspaces/acme",
        "/api/v1/workspaces/acme/configurations/ext/runs/run_01JAAAAAAAAAAAAAAAAAAAAAAA",
    ]
    for path in paths:
        get = await client.get(path)
        head = await client.head(path)
        assert head.status_code == get.status_code, (path, head.status_code, head.text)
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        if "content-length" in get.headers and path != "/api/v1/ready":  # (ready: timings)
            assert head.headers["content-length"] == get.headers["content-length"], path
    # a route with a HEAD of its own keeps it (contract 14), and HEAD on a route with no
    # GET is still 405
    events = await client.head(run_path(run) + "/events")
    assert events.status_code == 200 and events.headers["runevents-last-sequence"] == "3"
    assert (await client.head(run_path(run) + "/cancel")).status_code == 405


async def test_options_that_json_cannot_hold_are_refused_before_anything_is_written(
    client: httpx.AsyncClient,
) -> None:
    # Defect (outside probe): options {"n": 1e400} (infinity once decoded) got 503 on
    # Postgres -- its run.queued was refused after the log was written, leaving a log
    # with no row -- and were stored as null on SQLite; a lone surrogate became U+FFFD
    url = "/api/v1/workspaces/acme/configurations/ext/runs"
    before = (await client.get("/api/v1/workspaces/acme/runs")).json()["items"]
    for body in (
        b'{"external": true, "options": {"n": 1e400}}',
        b'{"external": true, "options": {"deep": [1, -1e999]}}',
        b'{"external": true, "options": {"s": "\\ud800"}}',
        b'{"external": true, "options": {"\\udc00": 1}}',
    ):
        response = await client.post(
            url, content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_input", response.text
    after = (await client.get("/api/v1/workspaces/acme/runs")).json()["items"]
    assert after == before


async def test_lookup_by_run_id_alone(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    found = await client.get(f"/api/v1/runs/{run['id']}")
    assert found.status_code == 200
    assert found.json()["run"]["id"] == run["id"] and found.json()["summary"] is None
    assert (await client.get("/api/v1/runs/run_01JAAAAAAAAAAAAAAAAAAAAAAA")).status_code == 404
    assert (await client.get("/api/v1/runs/..%2Fx")).status_code in {404, 422}
    assert (await client.get("/api/v1/runs/not-a-run")).status_code == 422


async def test_configurations_listing_masks_a_secret_in_the_command(
    api_settings: Settings, tmp_path: Path
) -> None:
    # Defect D8: GET /api/v1/configurations showed a secret written into the argv
    # (`--password=<secret>`) while run.started masked the same argv (contract 11).
    secret = "s3cretpassw0rd!"
    path = tmp_path / "secret-configs.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [[configuration]]
            workspace = "acme"
            id = "deploy"
            command = ["{sys.executable}", "-c", "pass", "--password={secret}"]
            env = {{ DB_PASSWORD = "{secret}" }}
            secrets = ["DB_PASSWORD"]
            """
        )
    )
    settings = api_settings.model_copy(update={"config_file": path})
    app = await App.open(settings, worker=False)
    try:
        async with asgi_client(create_app(settings, app=app)) as client:
            response = await client.get("/api/v1/configurations")
        assert response.status_code == 200
        (item,) = response.json()["items"]
        assert item["command"][-1] == "--password=***"
        assert secret not in response.text
    finally:
        await app.close()
