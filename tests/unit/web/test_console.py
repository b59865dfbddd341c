"""The virtual console (web/static/console.js) over a fake log, in Chromium."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.browser

SETUP = """async ({total, live}) => {
  const {VirtualConsole} = await import('/static/console.js');
  const {SequenceSource} = await import('/static/log-source.js');
  document.body.style.margin = '0';
  const host = document.createElement('div');
  host.style.cssText = 'height: 400px; width: 800px; display: flex;';
  document.body.append(host);
  const style = document.createElement('style');
  style.textContent = `.console-viewport{flex:1;overflow-y:auto;overflow-x:hidden;font:12px monospace}
    .console-screen{position:sticky;top:0;overflow:hidden}.ln{display:flex;height:20px;line-height:20px;white-space:pre}`;
  document.head.append(style);
  const event = (s) => ({sequence: s, type: 'console.line', created_at: '2026-11-24T06:00:00Z',
    payload: {stream: s % 10 ? 'stdout' : 'stderr', level: 'info', message: '\\x1b[32mline\\x1b[0m ' + s}});
  window.requests = 0;
  const fetchPage = async (after, limit) => {
    window.requests++;
    const events = [];
    for (let s = after + 1; s <= Math.min(window.total, after + limit); s++) events.push(event(s));
    return {events, next_after_sequence: after + events.length, has_more: after + limit < window.total};
  };
  window.total = total;
  window.follows = [];
  const src = new SequenceSource({fetchPage, onUpdate: () => con.refresh()});
  const con = new VirtualConsole(host, {onFollowChange: (f) => window.follows.push(f)});
  if (!live) { src.setCount(total); con.following = false; }
  con.setSource(src);
  window.con = con; window.src = src; window.event = event;
}"""

VISIBLE = "() => window.con.visibleSequences()"


def settle(page: Any, condition: str) -> None:
    page.wait_for_function(condition, timeout=10_000)


def test_renders_only_the_rows_in_view_of_a_huge_log(js_page: Any) -> None:
    js_page.evaluate(SETUP, {"total": 5_000_000, "live": False})
    settle(js_page, "() => document.querySelectorAll('.ln.k-line').length >= 20")
    assert js_page.evaluate(VISIBLE)[:3] == [1, 2, 3]
    assert js_page.locator(".console-rows > div").count() <= 21
    assert js_page.locator(".ln.s-stderr").first.get_attribute("data-seq") == "10"
    assert js_page.locator(".ln .a-f2").count() > 0
    # the scrollbar stands for 5,000,000 rows, capped under the browsers' height limit
    height = js_page.evaluate("() => document.querySelector('.console-viewport').scrollHeight")
    assert 1_000_000 < height <= 8_000_000
    js_page.evaluate("() => window.con.scrollToIndex(4_000_000 - 1)")
    settle(
        js_page,
        "() => window.con.visibleSequences().includes(4000000) && !document.querySelector('.ln-loading')",
    )
    seqs = js_page.evaluate(VISIBLE)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert js_page.evaluate("() => window.src.loadedEvents()") <= 5_000  # a few windows
    # End reaches the very last row and turns following on
    js_page.locator(".console-viewport").focus()
    js_page.keyboard.press("End")
    settle(js_page, "() => window.con.visibleSequences().includes(5000000)")
    assert js_page.evaluate("() => window.con.following") is True


def test_follow_stops_on_scroll_up_and_resumes(js_page: Any) -> None:
    js_page.evaluate(SETUP, {"total": 0, "live": True})
    js_page.evaluate(
        "() => { for (let s = 1; s <= 200; s++) window.src.put(window.event(s)); window.con.refresh(); }"
    )
    settle(js_page, "() => window.con.visibleSequences().includes(200)")
    assert js_page.evaluate("() => window.con.following") is True
    # live lines keep the tail in view
    js_page.evaluate(
        "() => { for (let s = 201; s <= 230; s++) window.src.put(window.event(s)); window.con.refresh(); }"
    )
    settle(js_page, "() => window.con.visibleSequences().includes(230)")
    # the user scrolls up: following stops, new lines do not move the view
    js_page.mouse.move(400, 200)
    js_page.mouse.wheel(0, -200)
    settle(js_page, "() => !window.con.following")
    pinned = js_page.evaluate(VISIBLE)
    js_page.evaluate(
        "() => { for (let s = 231; s <= 260; s++) window.src.put(window.event(s)); window.con.refresh(); }"
    )
    js_page.wait_for_function("() => new Promise(r => requestAnimationFrame(() => r(true)))")
    assert js_page.evaluate(VISIBLE) == pinned
    assert js_page.evaluate("() => window.follows") == [False]
    # "Jump to latest"
    js_page.evaluate("() => window.con.jumpToLatest()")
    assert 260 in js_page.evaluate(VISIBLE)
    assert js_page.evaluate("() => window.follows") == [False, True]
    # scrolling back down to the bottom resumes following too
    js_page.mouse.wheel(0, -100)
    settle(js_page, "() => !window.con.following")
    js_page.mouse.wheel(0, 400)
    settle(js_page, "() => window.con.following")


def test_highlighted_line_and_search_marks(js_page: Any) -> None:
    js_page.evaluate(SETUP, {"total": 1000, "live": False})
    js_page.evaluate("() => { window.con.highlightSeq = 500; window.con.scrollToIndex(499); }")
    settle(js_page, "() => document.querySelector('.ln.ln-hl[data-seq=\"500\"]')")
    js_page.evaluate("() => window.con.setHighlight(/ 50\\d/gi)")
    settle(js_page, "() => document.querySelectorAll('.ln mark').length >= 5")
    assert js_page.locator(".ln mark").first.inner_text().startswith(" 50")
