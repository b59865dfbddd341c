"""The run page as GitHub Actions and GitLab users expect it (issue 19), in real Chromium.

External runs give the tests exact control of what the log holds and when:
the test appends events over HTTP while the page watches. Waits are on
conditions (the view's ``window.__runevents.view()`` snapshot or the DOM).
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

pytest_plugins = ["tests.acceptance.ui_support"]
pytest.register_assert_rewrite("tests.acceptance.ui_support")

from tests.acceptance.ui_support import (  # noqa: E402
    SCREENSHOTS,
    Server,
    view_state,
    wait_view,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

WIDE = {"width": 1400, "height": 900}


def line(message: str, *, stream: str = "stdout", level: str | None = None) -> dict[str, Any]:
    level = level or ("warning" if stream == "stderr" else "info")
    return {
        "type": "console.line",
        "payload": {"scope": "run", "stream": stream, "level": level, "message": message},
    }


def lines(prefix: str, n: int) -> list[dict[str, Any]]:
    return [line(f"{prefix} {i}") for i in range(1, n + 1)]


def new_page(browser: Any, viewport: dict[str, int] = WIDE, **options: Any) -> Any:
    context = browser.new_context(viewport=viewport, **options)
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page._errors = errors  # checked by close_page
    return page


def close_page(page: Any) -> None:
    errors = page._errors
    page.context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def wide(browser: Any) -> Any:
    page = new_page(browser)
    yield page
    close_page(page)


def last_line_visible(page: Any) -> bool:
    """The log's last row is drawn and entirely inside the console's viewport."""
    return bool(
        page.evaluate(
            """() => {
              const v = window.__runevents && window.__runevents.view();
              if (!v) return false;
              const vp = document.querySelector('.console-viewport').getBoundingClientRect();
              const row = document.querySelector(`.ln[data-seq='${(v.total || v.count)}']`);
              if (!row) return false;
              const r = row.getBoundingClientRect();
              return r.top >= vp.top - 1 && r.bottom <= vp.bottom + 1;
            }"""
        )
    )


# ---- 1. follow -------------------------------------------------------------------------


def test_follow_is_not_released_by_new_phase_rows_or_the_failure_banner(
    ui_server: Server, wide: Any
) -> None:
    """Regression (issue 19 item 1): a phase row added above the console, or the
    failure banner and by-file table at completion, shrink the console; the
    shrink read as a user scroll and silently turned follow off."""
    page = wide
    s = ui_server
    run = s.create_run("follow", "live", external=True)
    rid = run["id"]
    s.ingest("follow", "live", rid, [{"type": "run.started", "payload": {"status": "running"}}])
    s.ingest("follow", "live", rid, lines("warm-up line", 300))
    page.goto(f"{s.url}/workspaces/follow/runs/{rid}")
    wait_view(page, "(v.total || v.count) >= 302 && v.following")
    for k in range(1, 7):
        batch = [{"type": "run.phase.started", "payload": {"phase": f"phase-{k}"}}]
        batch += lines(f"phase {k} line", 150)
        batch.append(
            {
                "type": "run.phase.completed",
                "payload": {"phase": f"phase-{k}", "status": "succeeded", "duration_ms": 10},
            }
        )
        s.ingest("follow", "live", rid, batch)
        total = 302 + 152 * k  # run.queued, run.started, 300 lines, then 152 per phase
        wait_view(
            page,
            f"(v.total || v.count) >= {total} && document.querySelectorAll('.phase').length >= {k}",
        )
        wait_view(page, f"v.visible.includes({total})", timeout=10_000)
        assert view_state(page)["following"] is True, f"follow went off when phase {k} began"
        assert last_line_visible(page), f"the last line left the view at phase {k}"
    # completion: the failure banner and the by-file table appear above the console
    tables = [
        {
            "type": "run.table.summary",
            "payload": {
                "table_id": f"t{i}",
                "source_file": f"file-{i}.xlsx",
                "source_sheet": None,
                "table_index": i,
                "row_count": 10,
                "column_count": 3,
            },
        }
        for i in range(6)
    ]
    traceback = [
        line("Traceback (most recent call last):", stream="stderr"),
        line('  File "job.py", line 3, in <module>', stream="stderr"),
        line("ValueError: expected a number", stream="stderr"),
    ]
    s.ingest(
        "follow",
        "live",
        rid,
        [
            *tables,
            *traceback,
            {
                "type": "run.error",
                "payload": {"stage": "run", "code": "bad_input", "message": "expected a number"},
            },
            {"type": "run.completed", "payload": {"status": "failed"}},
        ],
    )
    v = wait_view(page, "v.status === 'failed'")
    page.get_by_test_id("failure").wait_for()
    page.locator("table.by-file").wait_for()
    wait_view(page, "v.visible.includes(v.total || v.count)", timeout=10_000)
    v = view_state(page)
    assert v["following"] is True, "follow went off when the run ended"
    assert last_line_visible(page)
    # ... and the user still releases it: one wheel step up
    page.get_by_test_id("console").hover()
    page.mouse.wheel(0, -200)
    wait_view(page, "!v.following")


# ---- 10. badges and error pages ------------------------------------------------------------


def test_badge_follows_the_row_and_error_pages_are_plain(ui_server: Server, wide: Any) -> None:
    """Regression (issue 19 item 10): a streaming external run showed `queued` (the
    replayed run.queued event overrode the row's `running`); a malformed run id
    showed the id regex; an unknown path answered raw JSON; an unknown workspace
    was added to the picker."""
    page = wide
    s = ui_server
    run = s.create_run("badges", "producer", external=True)
    # the producer streams console lines without ever sending run.started
    s.ingest("badges", "producer", run["id"], lines("streaming", 5))
    assert s.get_run("badges", "producer", run["id"])["run"]["status"] == "running"
    page.goto(f"{s.url}/workspaces/badges/runs/{run['id']}")
    wait_view(page, "(v.total || v.count) >= 6")
    page.locator(".run-badge .badge.st-running").wait_for()
    assert view_state(page)["status"] == "running"

    page.goto(f"{s.url}/workspaces/badges/runs/not-a-run")
    page.get_by_text("Not a run id", exact=True).wait_for()
    text = page.locator("main").inner_text()
    assert "[0-9A-HJKMNP-TV-Z]" not in text and "^" not in text, text

    response = page.goto(f"{s.url}/no/such/page")
    assert response is not None and response.status == 404
    assert "text/html" in response.headers["content-type"]
    page.get_by_text("Page not found", exact=True).wait_for()
    # the API keeps its JSON errors
    api = httpx.get(f"{s.url}/api/v1/no-such-route", timeout=10)
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"

    page.goto(f"{s.url}/workspaces/no-such-workspace")
    page.get_by_text("Unknown workspace", exact=True).wait_for()
    options = page.locator("select.ws-select option").all_inner_texts()
    assert "no-such-workspace" not in options
    assert "badges" in options


def test_a_hostile_phase_status_runs_no_script_in_the_run_view(
    ui_server: Server, wide: Any
) -> None:
    """Regression (outside probe): a phase's ``status`` (the producer's string, stored as
    sent: contract 2.1) went unescaped into the section header's class attribute via
    innerHTML, so ``x"><img src=x onerror=...>`` ran in the browser of whoever opened the
    run -- in the run view and, live, as the event arrived."""
    page = wide
    s = ui_server
    hostile = 'x"><img class="pwn" src=x onerror="window.__pwned=1">'
    run = s.create_run("hostile", "producer", external=True)
    s.ingest(
        "hostile",
        "producer",
        run["id"],
        [
            {"type": "run.phase.started", "payload": {"phase": "extract"}},
            line("inside the phase"),
            {"type": "run.phase.completed", "payload": {"phase": "extract", "status": hostile}},
            {"type": "build.phase.started", "payload": {"phase": "deps"}},
            {"type": "build.phase.completed", "payload": {"phase": "deps", "status": hostile}},
            line("after"),
        ],
    )
    page.goto(f"{s.url}/workspaces/hostile/runs/{run['id']}")
    wait_view(page, "(v.total || v.count) >= 7")
    page.locator(".ln-section-head").first.wait_for()
    # live: the same status arriving over SSE while the page watches
    s.ingest("hostile", "producer", run["id"], [
        {"type": "run.phase.started", "payload": {"phase": "load"}},
        {"type": "run.phase.completed", "payload": {"phase": "load", "status": hostile}},
    ])  # fmt: skip
    wait_view(page, "(v.total || v.count) >= 9")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img.pwn").count() == 0


def test_a_malformed_percent_escape_in_the_url_shows_page_not_found(
    ui_server: Server, browser: Any
) -> None:
    """Regression (outside probe): the router's decodeURIComponent threw a URIError on
    ``/workspaces/%E0%A4%A``, and the page stayed blank under its top bar."""
    page = new_page(browser)
    page.goto(f"{ui_server.url}/workspaces/%E0%A4%A")
    page.get_by_text("Page not found", exact=True).wait_for(timeout=5_000)
    close_page(page)  # (and no uncaught error in the page)


# ---- 2. sections, 3. open at the failure ----------------------------------------------------


def sectioned_run(s: Server, ws: str, *, fail: bool) -> str:
    """An ended external run: two phases, a GitHub group, a GitLab section, an error."""
    run = s.create_run(ws, "sections", external=True)
    rid = run["id"]
    events: list[dict[str, Any]] = [{"type": "run.started", "payload": {"status": "running"}}]
    events.append({"type": "run.phase.started", "payload": {"phase": "setup"}})  # seq 3
    events += lines("setup line", 20)  # 4..23
    events.append(line("::group::Install dependencies"))  # 24
    events += lines("pip line", 30)  # 25..54
    events.append(line("::endgroup::"))  # 55
    events.append(
        {
            "type": "run.phase.completed",
            "payload": {"phase": "setup", "status": "succeeded", "duration_ms": 1500},
        }
    )  # 56
    events.append({"type": "run.phase.started", "payload": {"phase": "test"}})  # 57
    events.append(
        line("\x1b[0Ksection_start:1700000000:unit_tests[collapsed=false]\r\x1b[0KUnit tests")
    )  # 58
    events += lines("test line", 40)  # 59..98
    if fail:
        events.append(line("Traceback (most recent call last):", stream="stderr"))  # 99
        events.append(line("AssertionError: 1 != 2", stream="stderr"))  # 100
    else:
        events += lines("ok line", 2)
    events.append(line("\x1b[0Ksection_end:1700000001:unit_tests\r\x1b[0K"))  # 101
    events.append(
        {
            "type": "run.phase.completed",
            "payload": {"phase": "test", "status": "failed" if fail else "succeeded"},
        }
    )  # 102
    events += lines("after line", 400)  # 103..502: the error is far above the tail
    if fail:
        events.append(
            {
                "type": "run.error",
                "payload": {"stage": "run", "code": "tests_failed", "message": "1 failed"},
            }
        )
    events.append(
        {"type": "run.completed", "payload": {"status": "failed" if fail else "succeeded"}}
    )
    s.ingest(ws, "sections", rid, events)
    return rid


def test_phases_and_group_markers_fold_like_github_and_gitlab(ui_server: Server, wide: Any) -> None:
    page = wide
    rid = sectioned_run(ui_server, "sections", fail=False)
    page.goto(f"{ui_server.url}/workspaces/sections/runs/{rid}")
    v = wait_view(page, "v.outlineLoaded")
    kinds = [(x["kind"], x["name"], x["header"], x["end"], x["collapsed"]) for x in v["sections"]]
    assert kinds == [
        ("phase", "setup", 3, 56, False),
        ("github", "Install dependencies", 24, 55, True),  # GitHub groups start folded
        ("phase", "test", 57, 102, False),
        ("gitlab", "Unit tests", 58, 101, False),
    ]
    total = v["total"]
    assert v["count"] == total - 31  # the group's 31 rows (pip lines + ::endgroup::) are folded
    header = page.locator(".ln.ln-section[data-seq='3']")
    header.wait_for()
    assert "setup" in header.inner_text() and "1.5 s" in header.inner_text()
    assert page.locator(".ln.ln-section[data-seq='3'] .sec-icon.st-succeeded").count() == 1
    # unfold the group: its lines appear under its header
    group = page.locator(".ln.ln-section[data-seq='24']")
    assert "Install dependencies" in group.inner_text()
    group.get_by_role("button", name="Unfold Install dependencies").click()
    v = wait_view(page, f"v.count === {total}")
    page.locator(".ln[data-seq='25']").wait_for()
    # fold the whole setup phase: 53 rows go (its group folds with it)
    header.get_by_role("button", name="Fold setup").click()
    v = wait_view(page, f"v.count === {total} - 53 && v.visible[3] === 57")
    assert v["visible"][:3] == [1, 2, 3]
    assert page.locator(".ln[data-seq='4']").count() == 0
    # the phases panel links into the log: "test" scrolls to its header (unfolded)
    page.get_by_role("button", name="test", exact=True).click()
    v = wait_view(page, "v.highlighted === 57")
    assert 57 in v["visible"]
    # the GitLab header shows its title, not the marker
    gl = page.locator(".ln.ln-section[data-seq='58']")
    assert "Unit tests" in gl.inner_text() and "section_start" not in gl.inner_text()


def test_a_failed_run_opens_at_its_first_error(ui_server: Server, wide: Any) -> None:
    page = wide
    rid = sectioned_run(ui_server, "failing", fail=True)
    page.goto(f"{ui_server.url}/workspaces/failing/runs/{rid}")
    v = wait_view(page, "v.highlighted === 99")
    assert 99 in v["visible"] and v["following"] is False
    page.locator(".ln.ln-hl[data-seq='99']").wait_for()
    assert "Traceback" in page.locator(".ln.ln-hl[data-seq='99']").inner_text()
    # the failed phase is open, the succeeded one folded, as on GitHub
    sections = {x["name"]: x["collapsed"] for x in v["sections"]}
    assert sections["test"] is False and sections["setup"] is True
    # first error / next error: 99 (traceback), 100 (AssertionError: ...), the run.error
    assert v["errors"][:2] == [99, 100] and len(v["errors"]) == 3
    assert "error 1 of 3" in page.get_by_test_id("error-count").inner_text()
    page.get_by_role("button", name="Next error").click()
    wait_view(page, "v.highlighted === 100")
    page.get_by_role("button", name="Next error").click()
    v = wait_view(page, f"v.highlighted === {v['errors'][2]}")
    assert "error 3 of 3" in page.get_by_test_id("error-count").inner_text()
    page.get_by_role("button", name="First error").click()
    wait_view(page, "v.highlighted === 99")
    # a link to a line wins over the failure
    page.goto(f"{ui_server.url}/workspaces/failing/runs/{rid}#seq=5")
    wait_view(page, "v.highlighted === 5 && v.outlineLoaded")
    page.wait_for_timeout(300)
    assert view_state(page)["highlighted"] == 5


# ---- 5. search, 8. state in the URL ---------------------------------------------------------


def boxes_overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


def test_search_counts_every_match_and_moves_through_them(ui_server: Server, wide: Any) -> None:
    """Regression (issue 19 item 5): the count stopped at "200+", the results sat in a
    side list, and the floating "Jump to latest" button covered the console's controls."""
    page = wide
    s = ui_server
    run = s.create_run("search", "live", external=True)
    rid = run["id"]
    # 2,500 matching lines among others; "needle" also in a meta event, which is not marked
    events: list[dict[str, Any]] = [{"type": "run.phase.started", "payload": {"phase": "needle"}}]
    for i in range(1, 5001):
        events.append(line(f"row {i} {'NEEDLE here' if i % 2 == 0 else 'hay'}"))
    s.ingest("search", "live", rid, events)
    page.goto(f"{s.url}/workspaces/search/runs/{rid}")
    wait_view(page, "(v.total || v.count) >= 5002")
    box = page.get_by_label("Search the log")
    box.fill("needle")
    box.press("Enter")
    count = page.get_by_test_id("search-count")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=search-count]').textContent === '1 of 2,500'"
    )
    first = view_state(page)["highlighted"]
    assert first == 4  # row 2 (sequence 2 + run.queued + phase start)
    marked = page.locator(".ln mark")
    assert marked.count() >= 1
    # only console lines are marked: the phase header's "needle" is not
    assert page.locator(".ln.k-meta mark, .ln-section mark").count() == 0
    box.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=search-count]').textContent === '2 of 2,500'"
    )
    assert view_state(page)["highlighted"] == 6
    box.press("Shift+Enter")
    wait_view(page, "v.highlighted === 4")
    assert count.inner_text() == "1 of 2,500"
    # wraps backwards to the last match (paging through every page of hits)
    page.get_by_role("button", name="Previous match").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=search-count]').textContent === '2,500 of 2,500'"
    )
    assert view_state(page)["highlighted"] == 5002
    # the URL holds the term
    assert "q=needle" in page.url

    # a live run: new matches join the count
    s.ingest("search", "live", rid, [line("one more needle"), line("hay again")])
    page.wait_for_function(
        "() => / of 2,501$/.test(document.querySelector('[data-testid=search-count]').textContent)"
    )
    # "Jump to latest" (shown: following stopped at the match) covers no control
    jump = page.get_by_role("button", name="Jump to latest ↓")
    jump.wait_for()
    jb = jump.bounding_box()
    assert jb is not None
    for control in page.locator(
        ".console-toolbar button, .console-toolbar input, .console-toolbar select"
    ).all():
        cb = control.bounding_box()
        if cb:
            assert not boxes_overlap(jb, cb), control.inner_text()
    vp = page.locator(".console-viewport").bounding_box()
    assert vp is not None and not boxes_overlap(jb, vp), "the button covers the log"


def test_filters_and_search_are_in_the_url(ui_server: Server, wide: Any) -> None:
    page = wide
    run = ui_server.external_run("urlstate", "bulk", 300)
    url = f"{ui_server.url}/workspaces/urlstate/runs/{run['id']}"
    page.goto(url)
    wait_view(page, "v.count > 0")
    page.get_by_label("Stream").select_option("stderr")
    page.wait_for_url(re.compile(r"\?stream=stderr$"))
    page.get_by_label("Level").select_option("warning")
    page.get_by_label("Search the log").fill("line 1")
    page.get_by_label("Search the log").press("Enter")
    page.wait_for_url(re.compile(r"\?q=line\+1&stream=stderr&level=warning$"))
    shared = page.url
    # a shared link opens the same view: filter, level and search
    other = new_page(page.context.browser)
    try:
        other.goto(shared)
        other.wait_for_function(
            """() => { const rows = [...document.querySelectorAll('.ln.k-line')];
                       return rows.length > 2 && rows.every((r) => r.classList.contains('s-stderr')); }"""
        )
        assert other.get_by_label("Stream").input_value() == "stderr"
        assert other.get_by_label("Level").input_value() == "warning"
        assert other.get_by_label("Search the log").input_value() == "line 1"
        # stderr lines are every 10th: "line 1" matches lines 10, 100..190 and 1000.. -> 11
        other.wait_for_function(
            "() => document.querySelector('[data-testid=search-count]').textContent === '1 of 11'"
        )
    finally:
        close_page(other)


# ---- 6. wrap and timestamps, 7. raw log, 4. room for the log -------------------------------


def test_wrap_and_timestamps_are_toggles_that_are_remembered(
    ui_server: Server, wide: Any, browser: Any
) -> None:
    page = wide
    s = ui_server
    run = s.create_run("wrap", "bulk", external=True)
    long = "a-long-line " * 60
    s.ingest("wrap", "bulk", run["id"], [line(long), *lines("short", 5)])
    s.ingest(
        "wrap", "bulk", run["id"], [{"type": "run.completed", "payload": {"status": "succeeded"}}]
    )
    url = f"{s.url}/workspaces/wrap/runs/{run['id']}"
    page.goto(url)
    row = page.locator(".ln[data-seq='2']")
    row.wait_for()
    assert row.bounding_box()["height"] == 20  # one line, scrolled sideways
    # the time has its zone and full date on hover
    time_el = row.locator(".ln-time")
    title = time_el.get_attribute("title")
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", title), title
    assert "UTC" in title
    times = page.get_by_role("button", name=re.compile(r"^Timestamps \("))
    assert "UTC" in times.get_attribute("aria-label")
    times.click()
    assert time_el.is_hidden()
    page.get_by_role("button", name="Wrap", exact=True).click()
    page.wait_for_function("() => document.querySelector(\".ln[data-seq='2']\").offsetHeight > 40")
    console = page.locator(".console-viewport").bounding_box()
    assert row.bounding_box()["width"] <= console["width"]
    # both are remembered
    page.reload()
    page.locator(".ln[data-seq='2']").wait_for()
    page.wait_for_function("() => document.querySelector(\".ln[data-seq='2']\").offsetHeight > 40")
    assert page.locator(".ln[data-seq='2'] .ln-time").is_hidden()
    assert (
        page.get_by_role("button", name="Wrap", exact=True).get_attribute("aria-pressed") == "true"
    )

    # a phone: wrapped by default, nothing wider than the screen
    phone = new_page(browser, {"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        phone.goto(url)
        phone.locator(".ln[data-seq='2']").wait_for()
        phone.wait_for_function(
            "() => document.querySelector(\".ln[data-seq='2']\").offsetHeight > 60"
        )
        width = phone.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, width
    finally:
        close_page(phone)


def test_raw_log_view_and_text_download(ui_server: Server, wide: Any) -> None:
    page = wide
    s = ui_server
    run = s.create_run("raw", "bulk", external=True)
    s.ingest(
        "raw",
        "bulk",
        run["id"],
        [
            line("\x1b[32mgreen\x1b[0m start"),
            line("to stderr", stream="stderr"),
            {"type": "run.completed", "payload": {"status": "succeeded"}},
        ],
    )
    page.goto(f"{s.url}/workspaces/raw/runs/{run['id']}")
    view_raw = page.get_by_role("link", name="View raw")
    view_raw.wait_for()
    with page.context.expect_page() as info:
        view_raw.click()
    raw = info.value
    raw.wait_for_load_state()
    assert raw.locator("body").inner_text().strip() == "green start\nto stderr"
    raw.close()
    with page.expect_download() as download:
        page.get_by_role("link", name="Download text").click()
    assert download.value.suggested_filename == f"{run['id']}.log"
    with open(download.value.path(), "rb") as f:
        assert f.read() == b"green start\nto stderr\n"
    assert page.get_by_role("button", name="Download NDJSON").is_visible()


def visible_rows(page: Any) -> int:
    return int(page.evaluate("() => window.__runevents.view().visible.length"))


def test_details_fold_and_full_screen_give_the_log_room(ui_server: Server, browser: Any) -> None:
    page = new_page(browser)  # 1400 x 900
    try:
        run = ui_server.external_run("room", "bulk", 500)
        page.goto(f"{ui_server.url}/workspaces/room/runs/{run['id']}")
        wait_view(page, "v.visible.length > 5")
        before = visible_rows(page)
        page.get_by_role("button", name="Details").click()
        wait_view(page, f"v.visible.length > {before} + 5")
        folded = visible_rows(page)
        assert folded >= 30, folded
        page.reload()  # remembered
        wait_view(page, f"v.visible.length >= {folded}")
        assert page.get_by_role("button", name="Details").get_attribute("aria-pressed") == "false"
        page.get_by_role("button", name="Full screen").click()
        wait_view(page, f"v.visible.length > {folded}")
        full = visible_rows(page)
        assert full >= 38, full
        box = page.locator(".console-viewport").bounding_box()
        assert box["height"] > 780
        page.keyboard.press("Escape")
        wait_view(page, f"v.visible.length < {full}")
        print(
            f"\nvisible lines at 1400x900: {before} -> {folded} (details folded) -> {full} (full screen)"
        )
    finally:
        close_page(page)


# ---- 9. re-run and cancel ------------------------------------------------------------------


def test_rerun_repeats_the_options_and_links_back_and_cancel_asks_first(
    ui_server: Server, wide: Any
) -> None:
    page = wide
    s = ui_server
    options = {"speed": 20, "fail": False, "seed": "rerun"}
    old = s.create_run("demo", "extract", mode="execute", options=options)
    s.wait_status("demo", "extract", old["id"], {"succeeded"})
    page.goto(f"{s.url}/workspaces/demo/runs/{old['id']}")
    page.get_by_test_id("run-options").wait_for()
    assert (
        json.loads(page.get_by_test_id("run-options").locator("dd").first.inner_text()) == options
    )
    page.get_by_role("button", name="Re-run").click()
    page.wait_for_url(re.compile(r"/runs/run_(?!" + old["id"][4:] + ")"))
    new_id = page.url.rsplit("/", 1)[-1]
    assert new_id != old["id"]
    link = page.get_by_test_id("rerun-of")
    link.wait_for()
    assert link.inner_text() == old["id"]
    assert (
        json.loads(page.get_by_test_id("run-options").locator("dd").first.inner_text()) == options
    )
    queued = s.client.get(
        s.run_path("demo", "extract", new_id) + "/events", params={"limit": 1}
    ).json()["events"][0]
    assert queued["payload"]["options"] == options
    assert queued["payload"]["rerun_of"] == old["id"]
    assert queued["payload"]["mode"] == "execute"
    s.wait_status("demo", "extract", new_id, {"succeeded"})
    # the link goes back to the old run
    link.click()
    page.wait_for_url(f"**/runs/{old['id']}")

    # cancel asks first; "Keep running" keeps it running
    slow = s.create_run("demo", "extract", options={"speed": 0.2, "fail": False})
    page.goto(f"{s.url}/workspaces/demo/runs/{slow['id']}")
    page.get_by_role("button", name="Cancel run").click()
    page.get_by_role("button", name="Keep running").click()
    page.get_by_role("button", name="Cancel run").wait_for()
    assert s.get_run("demo", "extract", slow["id"])["run"]["status"] in {
        "queued",
        "building",
        "running",
    }
    page.get_by_role("button", name="Cancel run").click()
    page.get_by_role("button", name="Yes, cancel run").click()
    s.wait_status("demo", "extract", slow["id"], {"cancelled"}, timeout=60)
    page.locator(".run-badge .badge.st-cancelled").wait_for()


def test_a_failed_demo_run_opens_at_its_traceback(ui_server: Server, wide: Any) -> None:
    """The demo's on-purpose failure, as a newcomer meets it (and the README's screenshot)."""
    page = wide
    s = ui_server
    run = s.create_run("demo", "extract", options={"speed": 20, "fail": True, "seed": "shot"})
    s.wait_status("demo", "extract", run["id"], {"failed"})
    page.goto(f"{s.url}/workspaces/demo/runs/{run['id']}")
    v = wait_view(page, "v.highlighted !== null && v.outlineLoaded")
    target = v["highlighted"]
    assert target == v["errors"][0]
    row = page.locator(f".ln.ln-hl[data-seq='{target}']")
    row.wait_for()
    assert "Traceback" in row.inner_text()
    folded = {x["name"]: x["collapsed"] for x in v["sections"] if x["kind"] == "phase"}
    assert folded["validating"] is False and folded["discovering"] is True
    page.get_by_test_id("failure").wait_for()
    page.screenshot(path=str(SCREENSHOTS / "run-failed.png"), animations="disabled")
