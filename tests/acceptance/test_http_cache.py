"""A browser's HTTP cache serves repeated event reads without asking the server (section 14).

Real Chromium (Playwright) fetches event URLs from a page of the server's own
origin; the server, a real uvicorn in a thread, counts the requests that reach
it. A complete range (an ended run's page, its NDJSON log, or a page that ends
before a live run's last sequence) is fetched once however often the page asks;
the open tail of a live run reaches the server every time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.register_assert_rewrite("tests.acceptance.ui_support")

from tests.acceptance.ui_support import browser, page  # noqa: E402, F401
from tests.fixtures.thread_server import ThreadServer  # noqa: E402

FETCH_TWICE = """async ([url, accept]) => {
    const headers = accept ? {Accept: accept} : {};
    const first = await (await fetch(url, {headers})).text();
    const second = await (await fetch(url, {headers})).text();
    return [first === second, first.length];
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    live = ThreadServer(tmp_path_factory.mktemp("cache-server"))
    yield live
    live.stop()


def external_run(server: ThreadServer, lines: int, *, end: bool) -> str:
    """The events path of a new external run with ``lines`` console lines (ended if ``end``)."""
    created = server.http.post(
        "/api/v1/workspaces/acme/configurations/ext/runs", json={"external": True}
    )
    run = created.json()["run"]
    path = f"/api/v1/workspaces/acme/configurations/ext/runs/{run['id']}/events"
    body = b"".join(
        b'{"type":"console.line","payload":{"message":"line %d"}}\n' % i for i in range(lines)
    )
    if end:
        body += b'{"type":"run.completed","payload":{"status":"succeeded"}}\n'
    answer = server.http.post(path, content=body, headers={"Content-Type": "application/x-ndjson"})
    assert answer.status_code == 200, answer.text
    last = lines + 1 + (1 if end else 0)
    deadline = time.monotonic() + 10
    while True:  # the batch is acknowledged before the flush publishes it to readers
        head = server.http.head(path)
        done = head.headers.get("Runevents-Ended") == "true" or not end
        if int(head.headers["Runevents-Last-Sequence"]) >= last and done:
            return path
        assert time.monotonic() < deadline, head.headers
        time.sleep(0.02)


def fetch_twice(
    page: Any,  # noqa: F811
    server: ThreadServer,
    url: str,
    accept: str | None = None,
) -> int:
    """Fetch ``url`` twice from the page; the number of requests that reached the server."""
    path = url.split("?")[0]
    before = server.counter.hits.get(path, 0)
    same, size = page.evaluate(FETCH_TWICE, [server.url + url, accept])
    assert same and size > 0
    return server.counter.hits.get(path, 0) - before


def test_repeated_read_of_an_ended_run_is_served_from_the_browser_cache(
    server: ThreadServer,
    page: Any,  # noqa: F811
) -> None:
    path = external_run(server, 200, end=True)
    page.goto(server.url + "/api/v1/health")  # a page of the server's own origin
    assert fetch_twice(page, server, path + "?limit=50") == 1
    # the NDJSON form of the same URL is another cache entry (Vary: Accept), also kept
    assert fetch_twice(page, server, path, "application/x-ndjson") == 1
    # and once more, much later in the page's life: still not a request
    assert fetch_twice(page, server, path + "?limit=50") == 0


def test_live_tail_reaches_the_server_every_time_but_complete_ranges_do_not(
    server: ThreadServer,
    page: Any,  # noqa: F811
) -> None:
    path = external_run(server, 20, end=False)
    page.goto(server.url + "/api/v1/health")
    assert fetch_twice(page, server, path) == 2  # the open tail: no-store
    assert fetch_twice(page, server, path + "?limit=5") == 1  # sequences 1..5 of 21
