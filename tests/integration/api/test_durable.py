"""The Durable Streams read routes at /ds/v1/workspaces/{ws}/runs/{run_id} (section 14)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from runevents.api import durable
from runevents.api.caching import IMMUTABLE, NO_STORE
from tests.fixtures.app import bearer
from tests.integration.api.helpers import (
    COMPLETED,
    console,
    create_external,
    ingest,
    sse_events,
)


def ds_url(run: dict[str, Any]) -> str:
    return f"/ds/v1/workspaces/{run['workspace_id']}/runs/{run['id']}"


def off(sequence: int) -> str:
    return f"{sequence:020d}"


async def visible(client: httpx.AsyncClient, run: dict[str, Any], last: int) -> None:
    async with asyncio.timeout(5):
        while (await client.head(ds_url(run))).headers["Stream-Next-Offset"] < off(last):
            await asyncio.sleep(0.01)


async def ended_run(client: httpx.AsyncClient, n: int = 3) -> dict[str, Any]:
    run = await create_external(client)
    await ingest(client, run, *(console(f"m{i}") for i in range(n)))
    await ingest(client, run, COMPLETED)
    async with asyncio.timeout(10):
        while "Stream-Closed" not in (await client.head(ds_url(run))).headers:
            await asyncio.sleep(0.02)
    return run


def test_offsets_sort_as_strings_and_cursors_always_advance() -> None:
    offsets = [durable.encode_offset(n) for n in (0, 9, 10, 99, 1000, 2**63 - 1)]
    assert offsets == sorted(offsets) and len(set(map(len, offsets))) == 1
    assert "-1" not in offsets and "now" not in offsets
    now = durable.CURSOR_EPOCH + 1000 * durable.CURSOR_INTERVAL + 1
    assert durable.next_cursor(None, now) == "1000"
    assert durable.next_cursor("999", now) == "1000"
    # a client already at (or past) this interval gets a strictly greater cursor
    assert int(durable.next_cursor("1000", now)) > 1000
    assert int(durable.next_cursor("5000", now)) > 5000
    assert durable.next_cursor("junk", now) == "1000"


async def test_head_gives_the_tail_offset_and_closure(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    await ingest(client, run, console("a"))
    await visible(client, run, 2)
    head = await client.head(ds_url(run))
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Stream-Next-Offset"] == off(2)
    assert "Stream-Closed" not in head.headers
    assert head.headers["cache-control"] == NO_STORE
    assert head.headers["content-type"] == "application/json"
    await ingest(client, run, COMPLETED)
    async with asyncio.timeout(10):
        while "Stream-Closed" not in (head := await client.head(ds_url(run))).headers:
            await asyncio.sleep(0.02)
    assert head.headers["Stream-Closed"] == "true" and head.headers["Stream-Next-Offset"] == off(3)


async def test_catch_up_from_the_start_to_eof_with_etag(client: httpx.AsyncClient) -> None:
    run = await ended_run(client, 3)  # sequences 1..5
    url = ds_url(run)
    for start in (None, "-1", off(0)):
        params = {} if start is None else {"offset": start}
        answer = await client.get(url, params=params)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert [e["sequence"] for e in answer.json()] == [1, 2, 3, 4, 5]
        assert answer.headers["Stream-Next-Offset"] == off(5)
        assert answer.headers["Stream-Up-To-Date"] == "true"
        assert answer.headers["Stream-Closed"] == "true"
        assert answer.headers["cache-control"] == IMMUTABLE
        assert answer.headers["etag"] == f'"{run["id"]}:{off(0)}:{off(5)}:c"'
    again = await client.get(
        url, params={"offset": "-1"}, headers={"If-None-Match": answer.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    # at the end of an ended run: an empty array and EOF
    eof = await client.get(url, params={"offset": off(5)})
    assert eof.json() == [] and eof.headers["Stream-Closed"] == "true"
    assert eof.headers["Stream-Next-Offset"] == off(5)


async def test_catch_up_of_a_live_run_stops_at_the_tail_without_closing(
    client: httpx.AsyncClient,
) -> None:
    run = await create_external(client)
    await ingest(client, run, console("a"), console("b"))
    await visible(client, run, 3)
    answer = await client.get(ds_url(run), params={"offset": off(1)})
    assert [e["payload"]["message"] for e in answer.json()] == ["a", "b"]
    assert answer.headers["Stream-Next-Offset"] == off(3)
    assert answer.headers["Stream-Up-To-Date"] == "true"
    assert "Stream-Closed" not in answer.headers
    assert answer.headers["cache-control"] == NO_STORE  # the open tail
    now = await client.get(ds_url(run), params={"offset": "now"})
    assert now.json() == [] and now.headers["Stream-Next-Offset"] == off(3)
    assert now.headers["Stream-Up-To-Date"] == "true" and "etag" not in now.headers


async def test_catch_up_is_paged_and_only_the_last_page_is_up_to_date(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable, "DS_LIMIT", 2)
    run = await ended_run(client, 3)  # 5 events
    first = await client.get(ds_url(run), params={"offset": "-1"})
    assert len(first.json()) == 2 and first.headers["Stream-Next-Offset"] == off(2)
    assert "Stream-Up-To-Date" not in first.headers and "Stream-Closed" not in first.headers
    assert first.headers["cache-control"] == IMMUTABLE


async def test_bad_offsets_are_rejected(client: httpx.AsyncClient) -> None:
    run = await ended_run(client, 1)
    for bad in ("12", "abc", "-2", "0" * 19 + "x", "１" * 20):
        answer = await client.get(ds_url(run), params={"offset": bad})
        assert answer.status_code == 422, bad
        assert answer.json()["error"]["code"] == "invalid_input"
    assert (await client.get(ds_url(run), params={"live": "websocket"})).status_code == 422


async def test_streams_are_read_only(client: httpx.AsyncClient) -> None:
    run = await ended_run(client, 1)
    for method in ("PUT", "POST", "DELETE"):
        answer = await client.request(method, ds_url(run), content=b"[{}]")
        assert answer.status_code == 405, method
        assert answer.json()["error"]["code"] == "method_not_allowed"


async def test_long_poll_waits_then_delivers_with_a_cursor(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    await visible(client, run, 1)
    poll = asyncio.create_task(
        client.get(ds_url(run), params={"offset": off(1), "live": "long-poll"})
    )
    await asyncio.sleep(0.3)
    assert not poll.done()
    await ingest(client, run, console("x"))
    async with asyncio.timeout(10):
        answer = await poll
    assert answer.status_code == 200
    assert [e["payload"]["message"] for e in answer.json()] == ["x"]
    assert answer.headers["Stream-Next-Offset"] == off(2)
    assert answer.headers["Stream-Cursor"].isdigit()
    assert "Stream-Closed" not in answer.headers


async def test_long_poll_times_out_with_204(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable, "LONG_POLL_SECONDS", 0.3)
    run = await create_external(client)
    await visible(client, run, 1)
    answer = await client.get(
        ds_url(run), params={"offset": "now", "live": "long-poll", "cursor": "1"}
    )
    assert answer.status_code == 204
    assert answer.headers["Stream-Next-Offset"] == off(1)
    assert answer.headers["Stream-Up-To-Date"] == "true"
    assert int(answer.headers["Stream-Cursor"]) > 1
    assert "Stream-Closed" not in answer.headers


async def test_long_poll_closes_with_the_run(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    await visible(client, run, 1)
    poll = asyncio.create_task(
        client.get(ds_url(run), params={"offset": off(1), "live": "long-poll"})
    )
    await asyncio.sleep(0.2)
    await ingest(client, run, COMPLETED)
    async with asyncio.timeout(10):
        answer = await poll
    assert [e["type"] for e in answer.json()] == ["run.completed"]
    assert answer.headers["Stream-Closed"] == "true"
    assert "Stream-Cursor" not in answer.headers
    # at the end of a closed stream: 204 + Stream-Closed at once, never a wait
    async with asyncio.timeout(5):
        eof = await client.get(ds_url(run), params={"offset": off(2), "live": "long-poll"})
    assert eof.status_code == 204 and eof.headers["Stream-Closed"] == "true"


async def test_sse_replays_then_follows_and_closes(live_server: Any) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        run = await create_external(http)
        await ingest(http, run, console("a"))
        await visible(http, run, 2)

        async def read() -> bytes:
            async with http.stream(
                "GET", ds_url(run), params={"offset": "-1", "live": "sse"}
            ) as answer:
                assert answer.headers["content-type"] == "text/event-stream"
                return b"".join([part async for part in answer.aiter_bytes()])

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.3)
        await ingest(http, run, console("b"), COMPLETED)
        async with asyncio.timeout(15):
            body = await reader
    events = sse_events(body)
    data = [e for e in events if e.get("event") == "data"]
    controls = [json.loads(e["data"]) for e in events if e.get("event") == "control"]
    sequences = [m["sequence"] for d in data for m in json.loads(d["data"])]
    assert sequences == [1, 2, 3, 4]
    assert controls[0]["streamNextOffset"] == off(2) and controls[0]["upToDate"] is True
    assert controls[-1] == {"streamNextOffset": off(4), "streamClosed": True, "upToDate": True}
    assert all("streamCursor" in c for c in controls[:-1])


async def test_sse_at_the_end_of_an_ended_run_closes_at_once(live_server: Any) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        run = await ended_run(http, 1)
        async with asyncio.timeout(5):
            answer = await http.get(ds_url(run), params={"offset": off(3), "live": "sse"})
    controls = [json.loads(e["data"]) for e in sse_events(answer.content)]
    assert controls == [{"streamNextOffset": off(3), "streamClosed": True, "upToDate": True}]


async def test_ds_reads_are_authorized_like_the_other_reads(
    auth_client: httpx.AsyncClient,
) -> None:
    run = await create_external(auth_client, headers=bearer("tok-write"))
    url = ds_url(run)
    assert (await auth_client.get(url)).status_code == 401
    assert (await auth_client.get(url, headers=bearer("tok-beta"))).status_code == 403
    assert (await auth_client.head(url, headers=bearer("tok-read"))).status_code == 200
    # the run exists, but not under another workspace's URL
    other = url.replace("/workspaces/acme/", "/workspaces/beta/")
    assert (await auth_client.get(other, headers=bearer("tok-admin"))).status_code == 404
