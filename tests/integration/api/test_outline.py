"""The run page's read-only helper routes (issue 19): outline, search count, raw text,
re-run links and the UI's not-found page."""

from __future__ import annotations

from typing import Any

import httpx

from tests.integration.api.helpers import COMPLETED, console, create_external, ingest, run_path


async def outlined_run(client: httpx.AsyncClient) -> dict[str, Any]:
    run = await create_external(client)
    events = [
        {"type": "run.phase.started", "payload": {"phase": "setup"}},  # 2
        console("::group::Install"),  # 3
        console("pip install x"),  # 4
        console("::endgroup::"),  # 5
        console("\x1b[0Ksection_start:1:tests\r\x1b[0KTests"),  # 6
        console("Traceback (most recent call last):", "stderr", "warning"),  # 7
        console("ValueError: bad row", "stderr", "warning"),  # 8
        console("a line that mentions no error"),  # 9
        console("plain failure", level="error"),  # 10
        console("\x1b[0Ksection_end:1:tests\r\x1b[0K"),  # 11
        {"type": "run.phase.completed", "payload": {"phase": "setup", "status": "failed"}},  # 12
        {"type": "run.error", "payload": {"stage": "run", "code": "x", "message": "y"}},  # 13
        {"type": "run.completed", "payload": {"status": "failed"}},  # 14
    ]
    assert (await ingest(client, run, *events)).status_code == 200
    return run


async def test_outline_lists_markers_and_errors_in_order(client: httpx.AsyncClient) -> None:
    run = await outlined_run(client)
    body = (await client.get(run_path(run) + "/outline")).json()
    assert [e["sequence"] for e in body["events"]] == [2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 14]
    assert body["has_more"] is False
    # paged: two at a time, resuming after next_after_sequence
    seen: list[int] = []
    after = 0
    while True:
        page = (
            await client.get(
                run_path(run) + "/outline", params={"after_sequence": after, "limit": 2}
            )
        ).json()
        seen += [e["sequence"] for e in page["events"]]
        after = page["next_after_sequence"]
        if not page["has_more"]:
            break
    assert seen == [2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 14]


async def test_search_count_covers_the_whole_log(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    lines = [console(f"row {i} {'needle' if i % 3 == 0 else 'hay'}") for i in range(1, 3001)]
    assert (await ingest(client, run, *lines, COMPLETED)).status_code == 200
    count = (await client.get(run_path(run) + "/search/count", params={"q": "NEEDLE"})).json()
    assert count == {"total": 1000, "scanned_to": 3002}
    stderr = await client.get(
        run_path(run) + "/search/count", params={"q": "x", "stream": "stderr"}
    )
    assert stderr.json()["total"] == 0
    bad = await client.get(run_path(run) + "/search/count", params={"stream": "nope"})
    assert bad.status_code == 422 and bad.json()["error"]["code"]


async def test_text_is_the_console_without_ansi(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    events = [
        console("\x1b[32mgreen\x1b[0m"),
        {"type": "run.phase.started", "payload": {"phase": "p"}},
        console("err line", "stderr", "warning"),
        COMPLETED,
    ]
    assert (await ingest(client, run, *events)).status_code == 200
    text = await client.get(run_path(run) + "/text")
    assert text.status_code == 200
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert text.text == "green\nerr line\n"
    assert "content-disposition" not in text.headers
    download = await client.get(run_path(run) + "/text", params={"download": "true"})
    assert download.headers["content-disposition"] == f'attachment; filename="{run["id"]}.log"'


async def test_a_rerun_names_its_original_in_run_queued(client: httpx.AsyncClient) -> None:
    original = await create_external(client)
    created = await client.post(
        "/api/v1/workspaces/acme/configurations/ext/runs",
        json={"external": True, "options": {"a": 1}, "rerun_of": original["id"]},
    )
    assert created.status_code == 201, created.text
    rerun = created.json()["run"]
    first = (await client.get(run_path(rerun) + "/events", params={"limit": 1})).json()["events"][0]
    assert first["type"] == "run.queued"
    assert first["payload"]["rerun_of"] == original["id"]
    assert first["payload"]["options"] == {"a": 1}
    bad = await client.post(
        "/api/v1/workspaces/acme/configurations/ext/runs",
        json={"external": True, "rerun_of": "not-a-run"},
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"]


async def test_unknown_pages_get_the_ui_and_unknown_api_paths_json(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/some/page", headers={"Accept": "text/html"})
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "<!doctype html>" in page.text.lower()
    api = await client.get("/api/v1/nothing-here")
    assert api.status_code == 404
    assert api.json()["error"]["code"] == "not_found"
    assert (await client.get("/static/nothing.js")).status_code == 404
