"""HTTP caching of event reads: ETag, If-None-Match -> 304, Cache-Control, HEAD (section 14)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import httpx

from runevents import metrics
from runevents.api.caching import IMMUTABLE, NO_STORE
from tests.integration.api.helpers import COMPLETED, console, create_external, ingest, run_path

ACCEPT_NDJSON = {"Accept": "application/x-ndjson"}


async def ended_run(client: httpx.AsyncClient, n: int = 10) -> dict[str, Any]:
    """An external run of ``n + 2`` events that has ended."""
    run = await create_external(client)
    await ingest(client, run, *(console(f"line {i}") for i in range(n)))
    await ingest(client, run, COMPLETED)
    return run


async def visible(client: httpx.AsyncClient, run: dict[str, Any], last: int) -> None:
    """Wait until reads see sequence ``last`` (ingest answers before the flush publishes)."""
    url = run_path(run) + "/events"
    async with asyncio.timeout(5):
        while True:
            head = await client.head(url)
            if int(head.headers["Runevents-Last-Sequence"]) >= last:
                return
            await asyncio.sleep(0.01)


async def test_ended_run_page_is_immutable_and_revalidates_to_304(
    client: httpx.AsyncClient,
) -> None:
    run = await ended_run(client)
    url = run_path(run) + "/events"
    first = await client.get(url, params={"limit": 5})
    assert first.status_code == 200
    tag = first.headers["etag"]
    assert tag.startswith('"') and not tag.startswith("W/")
    assert first.headers["cache-control"] == IMMUTABLE
    assert "Accept" in first.headers["vary"]
    again = await client.get(url, params={"limit": 5}, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == tag and again.headers["cache-control"] == IMMUTABLE
    # a weak form of the same tag, in a list, matches too (If-None-Match compares weakly)
    listed = await client.get(
        url, params={"limit": 5}, headers={"If-None-Match": f'"other", W/{tag}'}
    )
    assert listed.status_code == 304
    # another range is another representation
    other = await client.get(url, params={"limit": 5, "after_sequence": 5})
    assert other.headers["etag"] != tag
    stale = await client.get(
        url, params={"limit": 5, "after_sequence": 5}, headers={"If-None-Match": tag}
    )
    assert stale.status_code == 200 and len(stale.json()["events"]) == 5


async def test_ended_run_ndjson_has_its_own_etag_and_304(client: httpx.AsyncClient) -> None:
    run = await ended_run(client)
    url = run_path(run) + "/events"
    full = await client.get(url, headers=ACCEPT_NDJSON)
    assert full.status_code == 200 and full.content.count(b"\n") == 12
    tag = full.headers["etag"]
    assert full.headers["cache-control"] == IMMUTABLE
    page = await client.get(url)
    assert page.headers["etag"] != tag  # same URL, other Accept: other representation
    revalidated = await client.get(url, headers={**ACCEPT_NDJSON, "If-None-Match": tag})
    assert revalidated.status_code == 304 and revalidated.content == b""
    # the page's tag does not validate the NDJSON form
    crossed = await client.get(
        url, headers={**ACCEPT_NDJSON, "If-None-Match": page.headers["etag"]}
    )
    assert crossed.status_code == 200 and crossed.content == full.content


async def test_live_tail_is_no_store_and_a_complete_range_is_immutable(
    client: httpx.AsyncClient,
) -> None:
    run = await create_external(client)
    await ingest(client, run, *(console(f"l{i}") for i in range(5)))  # sequences 1..6
    await visible(client, run, 6)
    url = run_path(run) + "/events"
    tail = await client.get(url)
    assert tail.headers["cache-control"] == NO_STORE
    assert [e["sequence"] for e in tail.json()["events"]] == [1, 2, 3, 4, 5, 6]
    # a range that ends before the last sequence can no longer change
    head_page = await client.get(url, params={"limit": 3})
    assert head_page.json()["has_more"] is True
    assert head_page.headers["cache-control"] == IMMUTABLE
    ndjson = await client.get(url, headers=ACCEPT_NDJSON)
    assert ndjson.headers["cache-control"] == NO_STORE
    # nothing new: the tail revalidates to 304
    same = await client.get(url, headers={"If-None-Match": tail.headers["etag"]})
    assert same.status_code == 304 and same.headers["cache-control"] == NO_STORE
    same_nd = await client.get(
        url, headers={**ACCEPT_NDJSON, "If-None-Match": ndjson.headers["etag"]}
    )
    assert same_nd.status_code == 304
    # once the log grew, the old tag no longer matches and the new events come
    await ingest(client, run, console("more"))
    await visible(client, run, 7)
    grown = await client.get(url, headers={"If-None-Match": tail.headers["etag"]})
    assert grown.status_code == 200
    assert grown.json()["events"][-1]["sequence"] == 7
    grown_nd = await client.get(
        url, headers={**ACCEPT_NDJSON, "If-None-Match": ndjson.headers["etag"]}
    )
    assert grown_nd.status_code == 200 and grown_nd.content.count(b"\n") == 7
    # a complete range keeps its tag while the run grows
    still = await client.get(
        url, params={"limit": 3}, headers={"If-None-Match": head_page.headers["etag"]}
    )
    assert still.status_code == 304


async def test_head_tells_last_sequence_and_ended_without_a_body(
    client: httpx.AsyncClient,
) -> None:
    run = await create_external(client)
    await ingest(client, run, console("a"), console("b"))
    await visible(client, run, 3)
    url = run_path(run) + "/events"
    live = await client.head(url)
    assert live.status_code == 200 and live.content == b""
    assert live.headers["Runevents-Last-Sequence"] == "3"
    assert live.headers["Runevents-Ended"] == "false"
    assert live.headers["cache-control"] == NO_STORE
    await ingest(client, run, COMPLETED)
    async with asyncio.timeout(10):
        while (ended := await client.head(url)).headers["Runevents-Ended"] != "true":
            await asyncio.sleep(0.02)
    assert ended.headers["Runevents-Last-Sequence"] == "4" and ended.content == b""
    missing = await client.head(url.replace(run["id"], "run_" + "0" * 26))
    assert missing.status_code == 404


# ------------------------------------------------------------------ long-poll


async def test_long_poll_answers_at_once_when_events_exist(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    await ingest(client, run, console("a"))
    await visible(client, run, 2)
    url = run_path(run) + "/events"
    started = asyncio.get_running_loop().time()
    page = (await client.get(url, params={"after_sequence": 1, "wait": 30})).json()
    assert asyncio.get_running_loop().time() - started < 5
    assert [e["sequence"] for e in page["events"]] == [2]


async def test_long_poll_waits_for_what_arrives(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    await visible(client, run, 1)
    url = run_path(run) + "/events"
    poll = asyncio.create_task(client.get(url, params={"after_sequence": 1, "wait": 30}))
    await asyncio.sleep(0.3)
    assert not poll.done()
    await ingest(client, run, console("late"), console("later"))
    async with asyncio.timeout(10):
        answer = await poll
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == NO_STORE
    page = answer.json()
    assert [e["payload"]["message"] for e in page["events"]] == ["late", "later"]
    assert page["next_after_sequence"] == 3 and page["has_more"] is False


async def test_long_poll_times_out_with_an_empty_page_and_the_same_cursor(
    client: httpx.AsyncClient,
) -> None:
    run = await create_external(client)
    await visible(client, run, 1)
    url = run_path(run) + "/events"
    started = asyncio.get_running_loop().time()
    answer = await client.get(url, params={"after_sequence": 1, "wait": 0.3})
    waited = asyncio.get_running_loop().time() - started
    assert answer.json() == {"events": [], "next_after_sequence": 1, "has_more": False}
    assert 0.25 <= waited < 5


async def test_long_poll_ends_with_the_run(client: httpx.AsyncClient) -> None:
    run = await create_external(client)
    await visible(client, run, 1)
    url = run_path(run) + "/events"
    poll = asyncio.create_task(client.get(url, params={"after_sequence": 1, "wait": 30}))
    await asyncio.sleep(0.2)
    await ingest(client, run, COMPLETED)
    async with asyncio.timeout(10):
        page = (await poll).json()
    assert [e["type"] for e in page["events"]] == ["run.completed"]
    # past run.completed: at once, never a wait (also while the row still lags the log)
    async with asyncio.timeout(5):
        after = (await client.get(url, params={"after_sequence": 2, "wait": 30})).json()
    assert after == {"events": [], "next_after_sequence": 2, "has_more": False}


async def test_long_poll_rejects_a_wait_over_60(
    client: httpx.AsyncClient,
) -> None:
    run = await ended_run(client, 1)
    url = run_path(run) + "/events"
    too_long = await client.get(url, params={"wait": 61})
    assert too_long.status_code == 422 and too_long.json()["error"]["code"] == "invalid_input"
    assert (await client.get(url, params={"wait": -0.5})).status_code == 422
    assert (await client.get(url, params={"wait": "soon"})).status_code == 422
    # the other forms do not wait (SSE does anyway; NDJSON is what the log holds now)
    ndjson = await client.get(url, params={"wait": 5}, headers=ACCEPT_NDJSON)
    assert ndjson.status_code == 200 and ndjson.content.count(b"\n") == 3
    assert (await client.get(url, params={"wait": 60})).status_code == 200


async def test_a_full_live_page_that_gains_has_more_gets_a_new_etag(
    client: httpx.AsyncClient,
) -> None:
    """A live run's page that holds exactly ``limit`` events up to the log's end says
    ``has_more: false``; once the next event arrives the same events come with
    ``has_more: true``. Its ETag named only the range, so a revalidation with the old
    tag got 304 and the client kept the stale ``has_more: false`` (it stopped paging)."""
    run = await create_external(client)
    await ingest(client, run, console("a"), console("b"), console("c"))  # 1..4
    await visible(client, run, 4)
    url = run_path(run) + "/events"
    params = {"after_sequence": 2, "limit": 2}
    before = await client.get(url, params=params)
    assert [e["sequence"] for e in before.json()["events"]] == [3, 4]
    assert before.json()["has_more"] is False
    await ingest(client, run, console("d"))
    await visible(client, run, 5)
    after = await client.get(url, params=params, headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200, "a page whose has_more changed was answered 304"
    assert [e["sequence"] for e in after.json()["events"]] == [3, 4]
    assert after.json()["has_more"] is True
    assert after.headers["etag"] != before.headers["etag"]
    assert after.headers["cache-control"] == IMMUTABLE  # events exist after it: final
    again = await client.get(url, params=params, headers={"If-None-Match": after.headers["etag"]})
    assert again.status_code == 304


async def test_wait_zero_answers_the_page_at_once(client: httpx.AsyncClient) -> None:
    """Contract 14 bounds ``wait`` above (at most 60 s; more is 422); ``wait=0`` was 422."""
    run = await create_external(client)
    await visible(client, run, 1)
    url = run_path(run) + "/events"
    for wait in ("0", "0.0"):
        got = await client.get(url, params={"after_sequence": 1, "wait": wait})
        assert got.status_code == 200, got.text
        assert got.json()["events"] == [] and got.json()["has_more"] is False
    assert (await client.get(url, params={"wait": "-1"})).status_code == 422
    assert (await client.get(url, params={"wait": "61"})).status_code == 422


async def test_a_long_poll_whose_client_went_away_held_its_waiter_for_the_whole_wait(
    live_server: Any,
) -> None:
    # Defect (outside probe): 1,000 long-polls opened with wait=60 and closed at once
    # kept 1,040 fds and the runevents_longpoll_waiters gauge at 1000 for 60 s (20 s
    # for Durable Streams long-poll); SSE noticed its disconnects within a second
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        run = await create_external(http)
    url = urlsplit(live_server.url)
    paths = [
        run_path(run) + "/events?after_sequence=1&wait=30",
        f"/ds/v1/workspaces/acme/runs/{run['id']}?offset={1:020d}&live=long-poll",
    ]
    for path in paths:
        before = _waiters()
        writers = []
        for _ in range(5):
            _reader, writer = await asyncio.open_connection(url.hostname, url.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            writers.append(writer)
        for _ in range(200):
            if _waiters() == before + 5:
                break
            await asyncio.sleep(0.01)
        assert _waiters() == before + 5, (path, _waiters(), before)
        for writer in writers:
            writer.close()
        for _ in range(300):  # well under the wait
            if _waiters() == before:
                break
            await asyncio.sleep(0.01)
        assert _waiters() == before, path


def _waiters() -> float:
    return float(metrics.LONGPOLL_WAITERS._value.get())
