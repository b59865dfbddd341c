"""The workspace search page in a real Chromium against ``runevents serve`` (issue 16).

Hits stream in newest runs first with the matches marked; filters live in the
URL; a hit opens the run view at ``#seq=N`` with the matched text marked there;
"More hits" continues with the cursor; an invalid regex says so.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest_plugins = ["tests.acceptance.ui_support"]
pytest.register_assert_rewrite("tests.acceptance.ui_support")

from tests.acceptance.ui_support import SCREENSHOTS, Server  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

WS = "srch"


def console(message: str, stream: str = "stdout") -> dict[str, Any]:
    level = "error" if stream == "stderr" else "info"
    return {
        "type": "console.line",
        "payload": {"stream": stream, "level": level, "message": message},
    }


def run_with(server: Server, cfg: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    run = server.create_run(WS, cfg, external=True)
    server.ingest(
        WS, cfg, run["id"], [*events, {"type": "run.completed", "payload": {"status": "succeeded"}}]
    )
    return run


@pytest.fixture(scope="module")
def corpus(ui_server: Server) -> dict[str, Any]:
    old = run_with(
        ui_server,
        "etl",
        [console("starting"), console("\x1b[31mConnectionResetError\x1b[0m: peer gone", "stderr")],
    )
    new = run_with(
        ui_server, "load", [console("retry after connectionreseterror #1"), console("fine")]
    )
    many = run_with(ui_server, "bulk", [console(f"repeated marker {i}") for i in range(150)])
    return {"old": old, "new": new, "many": many}


def hits(page: Any) -> list[dict[str, str]]:
    return page.evaluate(  # type: ignore[no-any-return]
        """() => [...document.querySelectorAll('.search-hit')].map((li) => ({
            run: li.dataset.runId, seq: li.dataset.seq,
            marks: [...li.querySelectorAll('mark')].map((m) => m.textContent),
            href: li.querySelector('a').getAttribute('href')}))"""
    )


def test_search_page_lists_hits_and_opens_the_run_at_the_line(
    ui_server: Server, corpus: dict[str, Any], page: Any
) -> None:
    page.goto(f"{ui_server.url}/workspaces/{WS}")
    page.get_by_test_id("search-link").click()
    page.wait_for_url(f"**/workspaces/{WS}/search")
    page.get_by_label("Search text").fill("connectionResetError")
    page.get_by_role("button", name="Search", exact=True).click()
    page.get_by_test_id("search-status").filter(has_text="runs searched").wait_for()
    found = hits(page)
    assert [(h["run"], h["seq"]) for h in found] == [
        (corpus["new"]["id"], "2"),
        (corpus["old"]["id"], "3"),
    ]
    assert found[0]["marks"] == ["connectionreseterror"] and found[1]["marks"] == [
        "ConnectionResetError"
    ]
    # the query is in the URL: a reload searches again
    assert "q=connectionResetError" in page.url
    page.screenshot(path=str(SCREENSHOTS / "search.png"))
    # filters: stderr only
    page.goto(f"{ui_server.url}/workspaces/{WS}/search?q=connectionreseterror&stream=stderr")
    page.get_by_test_id("search-status").filter(has_text="runs searched").wait_for()
    assert [h["run"] for h in hits(page)] == [corpus["old"]["id"]]
    # a hit opens the run view at its line, with the match marked
    page.locator(".search-hit a").first.click()
    page.wait_for_url(f"**/runs/{corpus['old']['id']}?hl=*#seq=3")
    line = page.locator(".ln.ln-hl[data-seq='3']")
    line.wait_for()
    assert line.locator("mark").first.text_content() == "ConnectionResetError"


def test_more_hits_continue_with_the_cursor(
    ui_server: Server, corpus: dict[str, Any], page: Any
) -> None:
    page.goto(f"{ui_server.url}/workspaces/{WS}/search?q=repeated+marker&configuration_id=bulk")
    page.get_by_test_id("more-hits").wait_for()
    assert len(hits(page)) == 100
    page.get_by_test_id("more-hits").click()
    page.get_by_test_id("search-status").filter(has_text="150 hits").wait_for()
    seqs = [int(h["seq"]) for h in hits(page)]
    assert seqs == list(range(2, 152))
    assert page.get_by_test_id("more-hits").count() == 0


def test_invalid_regex_is_reported(ui_server: Server, corpus: dict[str, Any], page: Any) -> None:
    page.goto(f"{ui_server.url}/workspaces/{WS}/search")
    page.get_by_label("Search text").fill("(unclosed")
    page.get_by_label("regex (RE2)").check()
    page.get_by_role("button", name="Search", exact=True).click()
    page.get_by_text("Invalid regular expression", exact=True).wait_for()
    assert "missing )" in page.locator(".notice-body").text_content()
    # a regex search that works, with a case-insensitive flag
    page.get_by_label("Search text").fill(r"(?i)connection\w+error")
    page.get_by_role("button", name="Search", exact=True).click()
    page.get_by_test_id("search-status").filter(has_text="2 hits").wait_for()
    assert json.dumps([h["marks"] for h in hits(page)]) == json.dumps(
        [["connectionreseterror"], ["ConnectionResetError"]]
    )
