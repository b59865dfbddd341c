"""Hostile input: never a 500, never a stack trace, never a file outside the storage root.

Paths are sent as raw ASGI requests: HTTP clients normalize ``..`` and
percent-escapes away, an attacker's raw socket does not.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from runevents.api.app import create_app
from runevents.app import App
from runevents.eventlog import files as eventlog_files
from runevents.eventlog import opening
from runevents.ids import NAME_RE, RUN_ID_RE
from runevents.settings import Settings
from tests.integration.api.helpers import NDJSON, console, create_external, ndjson, run_path

EXT_RUNS = "/api/v1/workspaces/acme/configurations/ext/runs"

GOOD_RUN = "run_01JAAAAAAAAAAAAAAAAAAAAAAA"


async def raw_request(
    asgi: Any,
    method: str,
    raw_path: str,
    *,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Call the ASGI app with a path exactly as a raw HTTP request line would carry it."""
    path, _, query = raw_path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        # what uvicorn does: percent-decode the path, keep the raw bytes beside it
        "path": unquote(path),
        "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), *(headers or [])],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], response_headers, content


def assert_clean_error(status: int, headers: dict[str, str], content: bytes) -> dict[str, Any]:
    """A 4xx in the contract's error shape, without a trace."""
    assert 400 <= status < 500, (status, content[:300])
    assert headers["content-type"].startswith("application/json")
    body: dict[str, Any] = json.loads(content)
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    assert b"Traceback" not in content and b'File "' not in content
    return body


def assert_storage_tree_clean(tmp_path: Path, data_dir: Path) -> None:
    """Every file the server wrote is where the key layout puts it."""
    allowed_top = {"data", "configs.toml", "db", "tokens.toml"}
    assert {p.name for p in tmp_path.iterdir()} <= allowed_top, list(tmp_path.iterdir())
    for root, dirs, files in os.walk(data_dir):
        rel = Path(root).relative_to(data_dir)
        for name in [*dirs, *files]:
            assert "\x00" not in name and name not in {".", ".."}
        parts = rel.parts
        if parts[:1] == ("workspaces",):
            if len(parts) >= 2:
                assert NAME_RE.fullmatch(parts[1]) and parts[1] not in {".", ".."}, rel
            if len(parts) >= 3:
                assert parts[2] == "runs", rel
            if len(parts) >= 4:
                assert RUN_ID_RE.fullmatch(parts[3]), rel
    for path in data_dir.rglob("*"):
        assert path.resolve().is_relative_to(data_dir.resolve()), path


TRAVERSALS = [
    "/api/v1/workspaces/../configurations/x/runs",
    "/api/v1/workspaces/%2e%2e/runs",
    "/api/v1/workspaces/%2E%2E/configurations/x/runs",
    "/api/v1/workspaces/..%2F..%2Fetc/runs",
    "/api/v1/workspaces/..%2f..%2f..%2ftmp/configurations/x/runs",
    "/api/v1/workspaces/acme/configurations/%2e%2e/runs",
    "/api/v1/workspaces/acme/configurations/..%2F..%2Fx/runs",
    "/api/v1/workspaces/a%00b/runs",
    "/api/v1/workspaces/acme%00/configurations/x/runs",
    "/api/v1/workspaces/.hidden/runs",
    "/api/v1/workspaces/-dash/runs",
    "/api/v1/workspaces/%EF%BC%A1cme/runs",
    "/api/v1/workspaces/%ff%fe/runs",
    "/api/v1/workspaces/" + "a" * 200 + "/runs",
    "/api/v1/workspaces/acme/configurations/x/runs/..%2F..%2Fsecret",
    "/api/v1/workspaces/acme/configurations/x/runs/%2e%2e",
    "/api/v1/workspaces/acme/configurations/x/runs/run_01jaaaaaaaaaaaaaaaaaaaaaaa",
    "/api/v1/workspaces/acme/configurations/x/runs/run_01JAAAAAAAAAAAAAAAAAAAAAAA%00",
    f"/api/v1/workspaces/%2e%2e/configurations/x/runs/{GOOD_RUN}/events",
    f"/api/v1/workspaces/acme/configurations/%2e%2e/runs/{GOOD_RUN}/events?stream=true",
    f"/api/v1/workspaces/acme/configurations/x/runs/{GOOD_RUN}%2F..%2F../events",
    f"/api/v1/workspaces/acme/configurations/x/runs/{GOOD_RUN}/../../../../etc/passwd",
]


@pytest.fixture
def asgi(api_settings: Settings, runevents_app: App) -> Any:
    return create_app(api_settings, app=runevents_app)


async def test_path_traversal_is_rejected_everywhere(
    asgi: Any, client: httpx.AsyncClient, tmp_path: Path, api_settings: Settings
) -> None:
    run = await create_external(client)
    for path in TRAVERSALS:
        for method, body, headers in (
            ("GET", b"", []),
            ("POST", b'{"external": true}', [(b"content-type", b"application/json")]),
            ("POST", ndjson(console("x")), [(b"content-type", b"application/x-ndjson")]),
        ):
            status, response_headers, content = await raw_request(
                asgi, method, path, body=body, headers=headers
            )
            body_json = assert_clean_error(status, response_headers, content)
            # 415: a JSON route refuses the NDJSON body before looking at the ids
            assert status in {404, 405, 415, 422}, (method, path, status, body_json)
    # the real run is untouched and nothing was created anywhere else
    page = (await client.get(run_path(run) + "/events")).json()
    assert [e["type"] for e in page["events"]] == ["run.queued"]
    runs = (await client.get("/api/v1/workspaces/acme/runs")).json()["items"]
    assert [r["id"] for r in runs] == [run["id"]]
    assert_storage_tree_clean(tmp_path, api_settings.data_dir)


async def test_web_routes_do_not_escape(asgi: Any) -> None:
    for path in (
        "/static/..%2F..%2Fapi%2Fapp.py",
        "/static/../../api/app.py",
        "/static/%2e%2e/%2e%2e/settings.py",
        "/workspaces/..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/%00",
    ):
        status, _, content = await raw_request(asgi, "GET", path)
        assert status < 500, path
        assert b"import " not in content and b"root:" not in content, path


async def test_huge_and_nested_json_bodies(
    client: httpx.AsyncClient, api_settings: Settings
) -> None:
    url = "/api/v1/workspaces/acme/configurations/ext/runs"
    json_headers = {"Content-Type": "application/json"}
    huge = (
        b'{"external": true, "options": {"x": "'
        + b"a" * (api_settings.max_event_bytes + 10)
        + b'"}}'
    )
    response = await client.post(url, content=huge, headers=json_headers)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    async def chunked() -> Any:  # no Content-Length
        for _ in range(api_settings.max_event_bytes // 1024 + 2):
            yield b" " * 1024

    response = await client.post(url, content=chunked(), headers=json_headers)
    assert response.status_code == 413
    deep = b'{"external": true, "options": ' + b'{"a":' * 20_000 + b"1" + b"}" * 20_001
    response = await client.post(
        url, content=deep[: api_settings.max_event_bytes], headers=json_headers
    )
    assert 400 <= response.status_code < 500
    deep_small = {"external": True, "options": {}}
    node = deep_small["options"]
    for _ in range(80):
        node["a"] = {}  # type: ignore[index]
        node = node["a"]  # type: ignore[index]
    response = await client.post(url, json=deep_small)
    assert response.status_code == 422
    assert "nested" in response.text
    response = await client.post(url, content=b'{"mode": "\xff\xfe"}', headers=json_headers)
    assert 400 <= response.status_code < 500
    response = await client.post("/api/v1/session", content=b"\xff" * 10, headers=json_headers)
    assert 400 <= response.status_code < 500
    runs = (await client.get("/api/v1/workspaces/acme/runs")).json()["items"]
    assert runs == []


async def test_hostile_ingest_bodies(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    url = run_path(run) + "/events"
    for body in (
        b'{"type":"x","payload":{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
        b'{"type":"x","payload":{"a":"\xed\xa0\x80"}}',  # UTF-8-encoded surrogate
        b"\xff\xfe\xfd\n",
        b'{"type":"x"}\x00\n',
        b"\x00" * 100,
        b'{"type":"x","payload":{"a":1e999999}}',
        b'{"type":"x","payload":{"a":NaN}}',
        b'{"type":"x","payload":{"a":"b"},"payload":{"c":"d"}}\n' + b"]" * 10,
        b'{"type":"' + b"t" * 60_000 + b'"}\n{"bad"',
    ):
        response = await client.post(url, content=body, headers=NDJSON)
        assert 400 <= response.status_code < 500, (body[:60], response.text)
        assert response.json()["error"]["code"] in {"invalid_event", "payload_too_large"}
    page = (await client.get(url)).json()
    assert [e["type"] for e in page["events"]] == ["run.queued"]


async def test_a_run_completed_status_that_is_a_list_or_an_object_was_500(
    client: httpx.AsyncClient,
) -> None:
    # Defect (outside probe): the status was looked up in a set, so an unhashable one
    # (a list, an object) raised TypeError: 500 instead of 422 (contract 4)
    run = await create_external(client)
    url = run_path(run) + "/events"
    for status in ('["succeeded"]', '{"a": 1}', "null", "7"):
        body = b'{"type":"run.completed","payload":{"status":' + status.encode() + b"}}\n"
        response = await client.post(url, content=body, headers=NDJSON)
        assert response.status_code == 422, (status, response.text)
        assert response.json()["error"]["code"] == "invalid_event"
    got = await client.get(run_path(run))
    assert got.json()["run"]["status"] == "queued"


@pytest.mark.parametrize("step", ["directory", "lock", "file"])
async def test_out_of_file_descriptors_at_create_was_500_and_left_a_run_directory(
    client: httpx.AsyncClient,
    api_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    # Defect (outside probe, a server under `prlimit --nofile=256`): EMFILE while a new
    # run's directory was synced escaped as a 500 with a traceback, and every failed
    # create left runs/<id>/ (a lock file, an empty log) that no row names, so nothing
    # would ever remove it; the 503s that were answered named the server's paths
    runs_dir = api_settings.data_dir
    before = set(runs_dir.rglob("run_*"))
    emfile = OSError(errno.EMFILE, "Too many open files")
    if step == "directory":
        monkeypatch.setattr(opening, "fsync_dir", _raises(emfile))
    elif step == "lock":
        monkeypatch.setattr(
            eventlog_files.os, "open", _raises_for(eventlog_files.os.open, ".lock", emfile)
        )
    else:
        calls = iter(range(1_000))
        real = opening.fsync_dir

        def fsync_dir(path: Path) -> None:
            # the directories' syncs pass; the new log file's entry fails
            if path.name.startswith("run_") and next(calls) >= 0:
                raise emfile
            real(path)

        monkeypatch.setattr(opening, "fsync_dir", fsync_dir)
    response = await client.post(EXT_RUNS, json={"external": True})
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "storage_error"
    assert str(runs_dir) not in error["message"], error["message"]
    monkeypatch.undo()
    assert set(runs_dir.rglob("run_*")) == before
    listing = await client.get("/api/v1/workspaces/acme/runs")
    assert listing.json()["items"] == []
    # and the next create works
    assert (await client.post(EXT_RUNS, json={"external": True})).status_code == 201


def _raises(exc: OSError) -> Callable[..., None]:
    def fail(*_: object) -> None:
        raise exc

    return fail


def _raises_for(real: Callable[..., int], suffix: str, exc: OSError) -> Callable[..., int]:
    def open_(path: object, *args: int) -> int:
        if str(path).endswith(suffix):
            raise exc
        return real(path, *args)

    return open_


async def test_big_numbers_that_json_allows(client: httpx.AsyncClient) -> None:
    # a number too big for 64 bits is valid JSON: stored or refused, but never a 500
    run = await create_external(client)
    response = await client.post(
        run_path(run) + "/events",
        content=b'{"type":"x","payload":{"n":123456789012345678901234567890,"f":1.5e300}}',
        headers=NDJSON,
    )
    assert response.status_code in {200, 422}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/v1/workspaces/acme/configurations/ext/runs"),
        ("DELETE", "/api/v1/workspaces/acme/runs"),
        ("PATCH", f"/api/v1/workspaces/acme/configurations/ext/runs/{GOOD_RUN}"),
        ("GET", f"/api/v1/workspaces/acme/configurations/ext/runs/{GOOD_RUN}/cancel"),
        ("DELETE", f"/api/v1/workspaces/acme/configurations/ext/runs/{GOOD_RUN}/events"),
        ("POST", "/api/v1/health"),
        ("PUT", "/api/v1/session"),
        ("POST", "/api/v1/configurations"),
    ],
)
async def test_wrong_methods_are_405(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "allow" in response.headers


async def test_unknown_routes_are_404_json(client: httpx.AsyncClient) -> None:
    for path in ("/api/v1/nope", "/api/v2/health", "/api/v1/workspaces/acme/configurations"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


async def test_wrong_content_types(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    for content_type in (
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/jsonl",
        "application/x-ndjsonx",
    ):
        response = await client.post(
            run_path(run) + "/events",
            content=b'{"type":"x"}',
            headers={"Content-Type": content_type},
        )
        assert response.status_code == 415, content_type
    response = await client.post(
        "/api/v1/workspaces/acme/configurations/ext/runs",
        content=b"external=true",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415


async def test_hostile_headers(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    url = run_path(run) + "/events"
    for headers in (
        {"Last-Event-ID": "9" * 400},
        {"Last-Event-ID": "1e3"},
        {"Last-Event-ID": ""},
        {"Accept": "application/x-ndjson;q=abc, */*;q="},
        {"Accept": "," * 1000},
    ):
        response = await client.get(url, headers=headers)
        assert response.status_code in {200, 422}, (headers, response.text)
    too_long_key = await client.post(
        url, content=ndjson(console("x")), headers={**NDJSON, "Idempotency-Key": "k" * 10_000}
    )
    assert too_long_key.status_code == 422
    bad_length = await client.post(
        url, content=b'{"type":"x"}', headers={**NDJSON, "Content-Length": "abc"}
    )
    assert 400 <= bad_length.status_code < 500
