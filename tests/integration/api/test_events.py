"""Event reads (JSON pages, NDJSON, SSE replay, search) and producer ingest (sections 4-6)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from runevents.app import App
from tests.integration.api.helpers import (
    COMPLETED,
    NDJSON,
    console,
    create_external,
    ingest,
    ndjson,
    run_path,
    sse_events,
)


async def finished_run(client: httpx.AsyncClient, n: int = 10) -> dict[str, Any]:
    """An external run with run.queued, ``n`` console lines and run.completed (n + 2 events)."""
    run = await create_external(client)
    response = await ingest(client, run, *(console(f"line {i}") for i in range(1, n + 1)))
    assert response.json() == {"first_sequence": 2, "last_sequence": n + 1}
    assert (await ingest(client, run, COMPLETED)).json() == {
        "first_sequence": n + 2,
        "last_sequence": n + 2,
    }
    return run


# ------------------------------------------------------------------ ingest


async def test_ingest_assigns_sequences_and_fills_the_envelope(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    body = (
        b'{"type":"console.line","payload":{"message":"a"},"sequence":99,"event_id":"evt_x",'
        b'"source":"ci","created_at":"2026-01-02T03:04:05+01:00"}\n'
        b'{"type":"run.phase.started","workspace_id":"acme","run_id":"%s"}\n' % run["id"].encode()
    )
    response = await client.post(run_path(run) + "/events", content=body, headers=NDJSON)
    assert response.status_code == 200, response.text
    assert response.json() == {"first_sequence": 2, "last_sequence": 3}
    events = (await client.get(run_path(run) + "/events")).json()["events"]
    first, second = events[1], events[2]
    assert first["sequence"] == 2 and first["event_id"] != "evt_x"
    assert first["source"] == "ci" and first["created_at"] == "2026-01-02T02:04:05.000000Z"
    assert first["workspace_id"] == "acme" and first["run_id"] == run["id"]
    assert second["payload"] == {} and second["sequence"] == 3
    assert (await client.get(run_path(run))).json()["run"]["status"] == "running"


async def test_bad_line_rejects_the_whole_batch(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    body = b'{"type":"a"}\n{"type":"b"}\n{"type":"c","payload":[]}\n{"type":"d"}\n'
    response = await client.post(run_path(run) + "/events", content=body, headers=NDJSON)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_event" and error["line"] == 3
    assert error["message"].startswith("line 3: ")
    page = (await client.get(run_path(run) + "/events")).json()
    assert [e["type"] for e in page["events"]] == ["run.queued"]  # nothing appended


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"type":"x","workspace_id":"beta"}', "workspace_id"),
        (b'{"type":"x","configuration_id":"other"}', "configuration_id"),
        (b'{"type":"x","run_id":"run_01JAAAAAAAAAAAAAAAAAAAAAAA"}', "run_id"),
        (b'{"type":"x","payload":{"m":"\xc3\x28"}}', "UTF-8"),
        (b'{"type":"x","created_at":"2026-13-01T00:00:00Z"}', "created_at"),
        (b'{"type":"run.queued"}', "server"),
        (b'{"type":"run.completed","payload":{"status":"exploded"}}', "status"),
    ],
)
async def test_invalid_lines(client: httpx.AsyncClient, line: bytes, reason: str) -> None:
    run = await create_external(client)
    response = await client.post(
        run_path(run) + "/events", content=b'{"type":"ok"}\n' + line, headers=NDJSON
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["line"] == 2
    assert reason in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "created_at",
    [
        "9999-12-31T23:59:59.999999-23:59",
        "9999-12-31T23:30:00-00:45",
        "0001-01-01T00:00:00+01:00",
        "0001-01-01T00:59:59.5+23:59",
    ],
)
@pytest.mark.parametrize("checked", [False, True])
async def test_a_created_at_whose_utc_instant_is_past_year_9999_is_refused(
    client: httpx.AsyncClient, created_at: str, checked: bool
) -> None:
    # regression (D6): converting to UTC left years 0001-9999, and the instant was
    # clamped to the edge (about 24 h off) and stored with a 200. It is invalid
    # input: 422 naming the line, nothing appended. (``checked``: an id key sends
    # the batch down the line-by-line path instead of the fast one.)
    run = await create_external(client)
    bad = {"type": "x", "created_at": created_at}
    if checked:
        bad["run_id"] = run["id"]
    body = b'{"type":"ok"}\n' + json.dumps(bad).encode() + b"\n"
    response = await client.post(run_path(run) + "/events", content=body, headers=NDJSON)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_event" and error["line"] == 2
    assert created_at in error["message"] and "UTC" in error["message"], error
    page = (await client.get(run_path(run) + "/events")).json()
    assert [e["type"] for e in page["events"]] == ["run.queued"]  # nothing appended


async def test_run_completed_not_last_is_invalid(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    response = await ingest(client, run, COMPLETED, console("after"))
    assert response.status_code == 422
    assert response.json()["error"]["line"] == 1


async def test_content_type_must_be_ndjson(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    for headers in ({"Content-Type": "application/json"}, {"Content-Type": "text/plain"}, {}):
        response = await client.post(
            run_path(run) + "/events", content=b'{"type":"a"}', headers=headers
        )
        assert response.status_code == 415, headers
        assert response.json()["error"]["code"] == "unsupported_media_type"


async def test_a_producer_line_of_exactly_the_event_limit_is_accepted(
    client: httpx.AsyncClient, api_settings: Any
) -> None:
    """Contract 6: "one event at most 1 MiB" -- the event the producer sends. The server
    used to count the stored line, about 220 bytes of envelope more, so a line a little
    under the limit got 413 although the producer cannot know that overhead."""
    run = await create_external(client)
    limit = api_settings.max_event_bytes

    def line_of(size: int) -> bytes:
        head = b'{"type":"big","payload":{"m":"'
        tail = b'"}}'
        return head + b"a" * (size - len(head) - len(tail)) + tail

    exact = line_of(limit)
    assert len(exact) == limit
    url = run_path(run) + "/events"
    response = await client.post(url, content=exact + b"\n", headers=NDJSON)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["first_sequence"] == answer["last_sequence"]
    response = await client.post(url, content=line_of(limit + 1) + b"\n", headers=NDJSON)
    assert response.status_code == 413
    assert response.json()["error"]["line"] == 1
    page = (await client.get(url)).json()
    stored = [e for e in page["events"] if e["type"] == "big"]
    assert [(e["sequence"], e["payload"]["m"]) for e in stored] == [
        (answer["first_sequence"], "a" * (limit - 33))
    ]


async def test_size_limits_are_413(client: httpx.AsyncClient, api_settings: Any) -> None:
    run = await create_external(client)
    url = run_path(run) + "/events"
    big_event = {"type": "x", "payload": {"m": "a" * api_settings.max_event_bytes}}
    response = await ingest(client, run, console("ok"), big_event)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert response.json()["error"]["line"] == 2
    line = json.dumps(console("b" * 1000)).encode() + b"\n"
    huge = line * (api_settings.max_batch_bytes // len(line) + 1)
    response = await client.post(url, content=huge, headers=NDJSON)
    assert response.status_code == 413

    async def chunked():  # no Content-Length: counted while it arrives
        for _ in range(api_settings.max_batch_bytes // len(line) + 1):
            yield line

    response = await client.post(url, content=chunked(), headers=NDJSON)
    assert response.status_code == 413
    page = (await client.get(url)).json()
    assert len(page["events"]) == 1


async def test_completion_finalizes_and_later_batches_are_409(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    telemetry = {
        "type": "run.table.summary",
        "payload": {"table_id": "t1", "source_file": "a.xlsx", "source_sheet": None,
                    "table_index": 0, "row_count": 7, "column_count": 3},
    }  # fmt: skip
    response = await ingest(
        client,
        run,
        console("x"),
        telemetry,
        {"type": "run.completed", "payload": {"status": "failed"}},
    )
    assert response.json() == {"first_sequence": 2, "last_sequence": 4}
    got = (await client.get(run_path(run))).json()
    assert got["run"]["status"] == "failed"
    assert got["run"]["event_count"] == 4 and got["run"]["row_count"] == 7
    assert got["summary"]["status"] == "failed"
    assert got["summary"]["tables"]["row_count"] == 7
    last = (await client.get(run_path(run) + "/events")).json()["events"][-1]
    assert last["type"] == "run.completed" and last["payload"]["summary"] == got["summary"]
    late = await ingest(client, run, console("late"))
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "run_ended"


async def test_idempotency_key(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    key = {"Idempotency-Key": "batch-1"}
    first = await ingest(client, run, console("a"), console("b"), headers=key)
    again = await ingest(client, run, console("a"), console("b"), headers=key)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() == {"first_sequence": 2, "last_sequence": 3}
    final = {"Idempotency-Key": "batch-final"}
    done = await ingest(client, run, COMPLETED, headers=final)
    retried = await ingest(client, run, COMPLETED, headers=final)
    assert retried.status_code == 200 and retried.json() == done.json()
    events = (await client.get(run_path(run) + "/events")).json()["events"]
    assert [e["sequence"] for e in events] == [1, 2, 3, 4]
    too_long = await ingest(client, run, console("x"), headers={"Idempotency-Key": "k" * 201})
    assert too_long.status_code == 422


async def test_idempotency_key_reused_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    """Contract 6: a key names one batch; other bytes under it append nothing."""
    run = await create_external(client)
    key = {"Idempotency-Key": "batch-1"}
    assert (await ingest(client, run, console("a"), headers=key)).status_code == 200
    reused = await ingest(client, run, console("b"), headers=key)
    assert reused.status_code == 422, reused.text
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    events = (await client.get(run_path(run) + "/events")).json()["events"]
    assert [e["sequence"] for e in events] == [1, 2]


async def test_a_batch_that_cannot_be_made_durable_is_503_with_retry_after(
    client: httpx.AsyncClient, runevents_app: App
) -> None:
    """Contract 6 (durability issue, defect 1): never a 200 for a batch only in memory."""
    import errno

    from tests.fixtures.faults import FaultyOps

    ops = FaultyOps()
    runevents_app.manager.log.file_ops = ops
    run = await create_external(client)
    ops.error = errno.ENOSPC
    key = {"Idempotency-Key": "k1"}
    refused = await ingest(client, run, console("a"), headers=key)
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "storage_error"
    ops.error = None
    accepted = await ingest(client, run, console("a"), headers=key)
    assert accepted.status_code == 200 and accepted.json()["first_sequence"] == 2
    assert "Durability" not in accepted.headers  # the default is durable: nothing to say
    events = (await client.get(run_path(run) + "/events")).json()["events"]
    assert [e["sequence"] for e in events] == [1, 2]


async def test_ingest_into_unknown_or_executed_runs(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    missing = {**run, "id": "run_01JAAAAAAAAAAAAAAAAAAAAAAA"}
    assert (await ingest(client, missing, console("x"))).status_code == 404
    executed = (
        await client.post("/api/v1/workspaces/acme/configurations/sleepy/runs", json={})
    ).json()["run"]
    response = await ingest(client, executed, console("x"))
    assert response.status_code == 409
    await client.post(run_path(executed) + "/cancel")


# ------------------------------------------------------------------ reads


async def test_json_pages(client: httpx.AsyncClient) -> None:
    run = await finished_run(client, 10)  # sequences 1..12
    url = run_path(run) + "/events"
    page = (await client.get(url, params={"limit": 5})).json()
    assert [e["sequence"] for e in page["events"]] == [1, 2, 3, 4, 5]
    assert page["next_after_sequence"] == 5 and page["has_more"] is True
    page = (await client.get(url, params={"limit": 5, "after_sequence": 5})).json()
    assert [e["sequence"] for e in page["events"]] == [6, 7, 8, 9, 10]
    page = (await client.get(url, params={"limit": 5, "after_sequence": 10})).json()
    assert [e["sequence"] for e in page["events"]] == [11, 12]
    assert page == {**page, "next_after_sequence": 12, "has_more": False}
    page = (await client.get(url, params={"limit": 2, "after_sequence": 10})).json()
    assert page["has_more"] is False  # exactly the rest: nothing after it
    empty = (await client.get(url, params={"after_sequence": 12})).json()
    assert empty == {"events": [], "next_after_sequence": 12, "has_more": False}
    beyond = (await client.get(url, params={"after_sequence": 1000})).json()
    assert beyond == {"events": [], "next_after_sequence": 1000, "has_more": False}
    by_from = (await client.get(url, params={"from_sequence": 4, "limit": 2})).json()
    assert [e["sequence"] for e in by_from["events"]] == [4, 5]
    # the furthest position wins
    both = (await client.get(url, params={"from_sequence": 4, "after_sequence": 8})).json()
    assert both["events"][0]["sequence"] == 9
    json_accept = await client.get(url, headers={"Accept": "application/json"})
    assert json_accept.headers["content-type"] == "application/json"
    assert len(json_accept.json()["events"]) == 12


async def test_page_of_a_live_run_reports_has_more_now(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    await ingest(client, run, console("a"), console("b"))
    url = run_path(run) + "/events"
    page = (await client.get(url, params={"limit": 3})).json()
    assert page["has_more"] is False and page["next_after_sequence"] == 3
    await ingest(client, run, console("c"))
    # the writer publishes a batch within flush_interval_ms (5 ms here) of the answer
    async with asyncio.timeout(2):
        while not (page := (await client.get(url, params={"after_sequence": 3})).json())["events"]:
            await asyncio.sleep(0.01)
    assert [e["payload"]["message"] for e in page["events"]] == ["c"]
    assert page["has_more"] is False


async def test_ndjson_download_is_the_stored_log(client: httpx.AsyncClient, tmp_path: Any) -> None:
    run = await finished_run(client, 5)
    url = run_path(run) + "/events"
    response = await client.get(url, headers={"Accept": "application/x-ndjson"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = response.content.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 8
    assert [json.loads(line)["sequence"] for line in lines[:-1]] == list(range(1, 8))
    page = (await client.get(url)).json()["events"]
    # byte-identical to what JSON pages splice in
    assert [json.loads(line) for line in lines[:-1]] == page
    tail = await client.get(
        url, params={"after_sequence": 5}, headers={"Accept": "application/x-ndjson"}
    )
    assert [json.loads(line)["sequence"] for line in tail.content.splitlines()] == [6, 7]
    empty = await client.get(
        url, params={"after_sequence": 7}, headers={"Accept": "application/x-ndjson"}
    )
    assert empty.status_code == 200 and empty.content == b""
    prefer_json = await client.get(
        url, headers={"Accept": "application/x-ndjson;q=0.5, application/json"}
    )
    assert prefer_json.headers["content-type"] == "application/json"


async def test_sse_replay_of_a_completed_run(client: httpx.AsyncClient) -> None:
    run = await finished_run(client, 5)
    url = run_path(run) + "/events"
    response = await client.get(url, params={"stream": "true"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.content.startswith(b"retry: 3000\n\n")
    events = sse_events(response.content)
    assert [int(e["id"]) for e in events] == list(range(1, 8))
    assert {e["event"] for e in events} == {"ade.event"}
    ndjson = (await client.get(url, headers={"Accept": "application/x-ndjson"})).content
    assert [e["data"].encode() for e in events] == ndjson.split(b"\n")[:-1]

    resumed = await client.get(url, params={"stream": "true"}, headers={"Last-Event-ID": "4"})
    assert [int(e["id"]) for e in sse_events(resumed.content)] == [5, 6, 7]
    # a browser reconnect re-sends the original URL: Last-Event-ID must win when further
    reconnect = await client.get(
        url, params={"stream": "true", "after_sequence": 2}, headers={"Last-Event-ID": "5"}
    )
    assert [int(e["id"]) for e in sse_events(reconnect.content)] == [6, 7]
    by_from = await client.get(url, params={"stream": "true", "from_sequence": 7})
    assert [int(e["id"]) for e in sse_events(by_from.content)] == [7]


async def test_sse_past_run_completed_is_204(client: httpx.AsyncClient) -> None:
    run = await finished_run(client, 2)  # run.completed is sequence 4
    url = run_path(run) + "/events"
    for params, headers in (
        ({"stream": "true", "after_sequence": 4}, {}),
        ({"stream": "true"}, {"Last-Event-ID": "4"}),
        ({"stream": "true", "after_sequence": 99}, {}),
        ({"stream": "true", "from_sequence": 5}, {}),
    ):
        response = await client.get(url, params=params, headers=headers)
        assert response.status_code == 204, (params, headers)
        assert response.content == b""


async def test_event_stream_accept_without_stream_true_is_a_page(client: httpx.AsyncClient) -> None:
    run = await finished_run(client, 1)
    response = await client.get(run_path(run) + "/events", headers={"Accept": "text/event-stream"})
    assert response.headers["content-type"] == "application/json"
    assert len(response.json()["events"]) == 3


async def test_expired_log_is_410_and_the_run_stays(
    client: httpx.AsyncClient, runevents_app: App
) -> None:
    run = await finished_run(client, 2)
    manager = runevents_app.manager
    assert await manager.expire_run(await manager.get_run("acme", "ext", run["id"]))
    url = run_path(run) + "/events"
    for params, headers in (
        ({}, {}),
        ({}, {"Accept": "application/x-ndjson"}),
        ({"stream": "true"}, {}),
    ):
        response = await client.get(url, params=params, headers=headers)
        assert response.status_code == 410
        assert response.json()["error"]["code"] == "log_expired"
    assert (await client.get(run_path(run) + "/search", params={"q": "x"})).status_code == 410
    got = await client.get(run_path(run))
    assert got.status_code == 200 and got.json()["run"]["log_state"] == "expired"


async def test_positions_are_validated(client: httpx.AsyncClient) -> None:
    run = await finished_run(client, 1)
    url = run_path(run) + "/events"
    for params, headers in (
        ({"after_sequence": -1}, {}),
        ({"after_sequence": "abc"}, {}),
        ({"after_sequence": "1.5"}, {}),
        ({"from_sequence": -3}, {}),
        ({"from_sequence": "x"}, {}),
        ({"after_sequence": str(2**63)}, {}),
        ({"limit": 0}, {}),
        ({"limit": 5001}, {}),
        ({"stream": "sometimes"}, {}),
        ({"stream": "true"}, {"Last-Event-ID": "seven"}),
        ({"stream": "true"}, {"Last-Event-ID": "-1"}),
    ):
        response = await client.get(url, params=params, headers=headers)
        assert response.status_code == 422, (params, headers, response.text)
        assert response.json()["error"]["code"] == "invalid_input"


async def test_search(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    await ingest(
        client,
        run,
        console("Loading ROWS"),
        console("rows failed", stream="stderr", level="error"),
        console("other"),
        console("more rows", level="warning"),
        {"type": "run.error", "payload": {"message": "rows"}},
    )
    url = run_path(run) + "/search"
    found = (await client.get(url, params={"q": "rows"})).json()
    assert [m["payload"]["message"] for m in found["matches"]] == [
        "Loading ROWS",
        "rows failed",
        "more rows",
    ]
    assert found["has_more"] is False
    assert all(m["type"] == "console.line" for m in found["matches"])
    errors = (await client.get(url, params={"q": "rows", "stream": "stderr"})).json()
    assert [m["sequence"] for m in errors["matches"]] == [3]
    warnings = (await client.get(url, params={"level": "warning"})).json()
    assert [m["payload"]["message"] for m in warnings["matches"]] == ["more rows"]
    first = (await client.get(url, params={"q": "rows", "limit": 1})).json()
    assert len(first["matches"]) == 1 and first["has_more"] is True
    rest = (
        await client.get(url, params={"q": "rows", "after_sequence": first["next_after_sequence"]})
    ).json()
    assert [m["payload"]["message"] for m in rest["matches"]] == ["rows failed", "more rows"]
    for params in ({"stream": "stdin"}, {"level": "fatal"}, {"limit": 0}, {"after_sequence": -1}):
        assert (await client.get(url, params=params)).status_code == 422


async def test_compressed_logs_read_the_same(client: httpx.AsyncClient, runevents_app: App) -> None:
    run = await finished_run(client, 30)
    url = run_path(run) + "/events"
    ndjson_headers = {"Accept": "application/x-ndjson"}

    async def snapshot() -> tuple[bytes, Any, bytes, Any, Any]:
        return (
            (await client.get(url, headers=ndjson_headers)).content,
            (await client.get(url, params={"after_sequence": 7, "limit": 9})).json(),
            (await client.get(url, params={"stream": "true", "after_sequence": 20})).content,
            (await client.get(url, headers=ndjson_headers, params={"after_sequence": 25})).content,
            (await client.get(run_path(run) + "/search", params={"q": "line 2"})).json(),
        )

    plain = await snapshot()
    manager = runevents_app.manager
    assert await manager.compact_run(await manager.get_run("acme", "ext", run["id"]))
    assert (await client.get(run_path(run))).json()["run"]["log_state"] == "compressed"
    assert await snapshot() == plain
    assert len(plain[0].splitlines()) == 32 and len(plain[4]["matches"]) == 11


async def test_a_batch_with_a_content_encoding_is_415_and_not_stored_as_it_came(
    client: httpx.AsyncClient,
) -> None:
    # Defect (outside probe): Content-Encoding was ignored -- a plain body declared
    # gzip or br was appended as it was, and a real gzip body got 422 "invalid_event"
    # blaming the producer's JSON; a coding that is not decoded is 415 (RFC 9110 8.4.1)
    import gzip

    run = await create_external(client)
    plain = ndjson(console("declared gzip"))
    for encoding, body in (("gzip", plain), ("br", plain), ("gzip", gzip.compress(plain))):
        response = await ingest_raw(client, run, body, encoding)
        assert response.status_code == 415, (encoding, response.text)
        assert response.json()["error"]["code"] == "unsupported_media_type"
    ok = await ingest_raw(client, run, plain, "identity")
    assert ok.status_code == 200, ok.text
    log = await client.get(run_path(run) + "/events", headers={"Accept": NDJSON["Content-Type"]})
    events = [json.loads(line) for line in log.text.splitlines()]
    assert [e["payload"].get("message") for e in events[1:]] == ["declared gzip"]


async def ingest_raw(
    client: httpx.AsyncClient, run: dict[str, Any], body: bytes, encoding: str
) -> httpx.Response:
    return await client.post(
        run_path(run) + "/events",
        content=body,
        headers={"Content-Type": "application/x-ndjson", "Content-Encoding": encoding},
    )
