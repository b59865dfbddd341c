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
    BROWSER_ARGS,  # noqa: F401  (the fixtures' browser flags; kept importable here)
    Server,
    view_state,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

WIDE = {"width": 1400, "height": 900}


def wait_view(page: Any, condition: str, timeout: float = 30_000) -> Any:
    page.wait_for_function(
        f"() => {{ const v = window.__runevents && window.__runevents.view(); return v && ({condition}); }}",
        timeout=timeout,
    )
    return view_state(page)


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
              const v = window.__runevents.view();
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
        page.wait_for_function(
            f"() => window.__runevents.view().visible.includes({total})", timeout=10_000
        )
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
    page.wait_for_function(
        "() => { const v = window.__runevents.view(); return v.visible.includes((v.total || v.count)); }",
        timeout=10_000,
    )
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
