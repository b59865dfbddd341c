"""ANSI rendering, the log sources, formatting and routing of the web UI, run in Chromium."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.browser


def ansi(page: Any, message: str, highlight: str | None = None) -> str:
    return page.evaluate(
        """async ([msg, hl]) => {
          const m = await import('/static/ansi.js');
          return m.ansiToHtml(msg, hl ? new RegExp(hl, 'gi') : null);
        }""",
        [message, highlight],
    )


def test_ansi_colours_become_classes(js_page: Any) -> None:
    assert ansi(js_page, "\x1b[31mred\x1b[0m plain") == '<span class="a-f1">red</span> plain'
    assert ansi(js_page, "\x1b[1;92mok") == '<span class="a-f10 a-bold">ok</span>'
    assert ansi(js_page, "\x1b[44mbg\x1b[49m") == '<span class="a-b4">bg</span>'


def test_ansi_256_and_truecolor_become_styles(js_page: Any) -> None:
    assert ansi(js_page, "\x1b[38;5;196mx") == '<span style="color:rgb(255,0,0)">x</span>'
    assert ansi(js_page, "\x1b[38;2;1;2;3mx") == '<span style="color:rgb(1,2,3)">x</span>'
    assert (
        ansi(js_page, "\x1b[48;5;240mx") == '<span style="background-color:rgb(88,88,88)">x</span>'
    )
    assert ansi(js_page, "\x1b[38:2::10:20:30mx") == '<span style="color:rgb(10,20,30)">x</span>'


def test_ansi_escapes_html_and_drops_other_sequences(js_page: Any) -> None:
    assert ansi(js_page, "<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert ansi(js_page, "a\x1b[2Kb\x1b[1Ac") == "abc"
    assert ansi(js_page, "\x1b]0;title\x07text") == "text"
    assert ansi(js_page, "\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "link"
    assert ansi(js_page, "bell\x07 and \x00nul") == "bell and nul"
    assert (
        ansi(js_page, "\x1b[31") == "[31"
    )  # a cut sequence shows its text, never breaks the markup


def test_ansi_carriage_return_keeps_what_a_terminal_shows(js_page: Any) -> None:
    assert ansi(js_page, "10%\r50%\r100%") == "100%"
    assert ansi(js_page, "done\r\n") == "done"


def test_ansi_highlight_marks_matches_inside_styled_text(js_page: Any) -> None:
    out = ansi(js_page, "\x1b[33mWarning: row\x1b[0m row", "row")
    assert out == '<span class="a-f3">Warning: <mark>row</mark></span> <mark>row</mark>'


def test_strip_ansi(js_page: Any) -> None:
    assert (
        js_page.evaluate(
            "async () => (await import('/static/ansi.js')).stripAnsi('\\x1b[1m\\x1b[31mbold red\\x1b[0m!')"
        )
        == "bold red!"
    )


SOURCE_SCRIPT = """async ({total, windowSize, maxWindows, steps}) => {
  const {SequenceSource} = await import('/static/log-source.js');
  const requests = [];
  const fetchPage = async (after, limit) => {
    requests.push([after, limit]);
    const events = [];
    for (let s = after + 1; s <= Math.min(total, after + limit); s++) events.push({sequence: s, type: 'console.line', payload: {message: 'line ' + s}});
    return {events, next_after_sequence: events.length ? events.at(-1).sequence : after, has_more: after + limit < total};
  };
  let updates = 0;
  const src = new SequenceSource({fetchPage, windowSize, maxWindows, onUpdate: () => updates++});
  src.setCount(total);
  const seen = [];
  for (const [first, last] of steps) {
    src.ensure(first, last);
    await new Promise(r => setTimeout(r, 0));
    await new Promise(r => setTimeout(r, 0));
    const rows = [];
    for (let i = first; i <= last; i++) rows.push(src.rowAt(i)?.sequence ?? null);
    seen.push(rows);
  }
  return {requests, seen, windows: src.windows.size, loaded: src.loadedEvents(), updates};
}"""


def test_sequence_source_loads_windows_on_demand_and_bounds_memory(js_page: Any) -> None:
    out = js_page.evaluate(
        SOURCE_SCRIPT,
        {
            "total": 1_000_000,
            "windowSize": 100,
            "maxWindows": 4,
            "steps": [[0, 9], [500_000, 500_009], [999_990, 999_999], [0, 9]],
        },
    )
    assert out["seen"][0] == list(range(1, 11))
    assert out["seen"][1] == list(range(500_001, 500_011))
    assert out["seen"][2] == list(range(999_991, 1_000_001))
    assert out["seen"][3] == list(range(1, 11))
    # only windows near what was asked for were requested, never the whole log
    assert all(limit == 100 for _, limit in out["requests"])
    assert {0, 100, 499_900, 500_000, 500_100, 999_800, 999_900} <= {a for a, _ in out["requests"]}
    assert len(out["requests"]) < 15
    assert out["windows"] <= 4 + 3
    assert out["loaded"] <= 700


def test_sequence_source_put_deduplicates_and_grows(js_page: Any) -> None:
    out = js_page.evaluate(
        """async () => {
          const {SequenceSource} = await import('/static/log-source.js');
          const src = new SequenceSource({fetchPage: async () => ({events: [], next_after_sequence: 0, has_more: false}), windowSize: 10});
          const results = [1, 2, 3, 2, 3, 4, 12].map(s => src.put({sequence: s, type: 'console.line', payload: {}}));
          return {results, count: src.count, row11: src.rowAt(11)?.sequence, row5: src.rowAt(5)};
        }"""
    )
    assert out == {
        "results": [True, True, True, False, False, True, True],
        "count": 12,
        "row11": 12,
        "row5": None,
    }


def test_filtered_source_scans_then_follows_live(js_page: Any) -> None:
    out = js_page.evaluate(
        """async () => {
          const {FilteredSource} = await import('/static/log-source.js');
          const log = [];
          for (let s = 1; s <= 30; s++) log.push({sequence: s, type: 'console.line', payload: {stream: s % 3 ? 'stdout' : 'stderr'}});
          const predicate = (e) => e.payload.stream === 'stderr';
          const calls = [];
          const src = new FilteredSource({predicate, fetchMore: async (after) => {
            calls.push(after);
            const page = log.filter(e => e.sequence > after && predicate(e)).slice(0, 4);
            const nextAfter = page.length === 4 ? page.at(-1).sequence : 30;
            return {events: page, nextAfter, hasMore: page.length === 4 && nextAfter < 30};
          }});
          src.put({sequence: 33, type: 'console.line', payload: {stream: 'stderr'}}); // arrives mid-scan
          for (let i = 0; i < 5; i++) { src.ensure(0, src.count); await new Promise(r => setTimeout(r, 0)); }
          src.put({sequence: 36, type: 'console.line', payload: {stream: 'stderr'}});
          src.put({sequence: 37, type: 'console.line', payload: {stream: 'stdout'}});
          src.put({sequence: 36, type: 'console.line', payload: {stream: 'stderr'}});
          return {rows: src.rows.map(e => e.sequence), calls, hasMore: src.hasMore, idx: src.indexOfSeq(33)};
        }"""
    )
    assert out["rows"] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36]
    assert out["calls"] == [0, 12, 24]
    assert out["hasMore"] is False
    assert out["idx"] == 10


def test_format_helpers(js_page: Any) -> None:
    out = js_page.evaluate(
        """async () => {
          const f = await import('/static/format.js');
          return {
            d: [f.formatDuration(850), f.formatDuration(12340), f.formatDuration(245000), f.formatDuration(7380000), f.formatDuration(null)],
            n: f.formatNumber(1000000),
            ulid: f.ulidTime('run_01M88584QPVJ32M0EGD675MF2C'),
            bad: f.ulidTime('nope'),
          };
        }"""
    )
    assert out["d"] == ["850 ms", "12.3 s", "4m 05s", "2h 03m", "—"]
    assert out["n"] == "1,000,000"
    assert out["ulid"] == 1795570275062  # python-ulid's .milliseconds of the same ULID
    assert out["bad"] is None


def test_routes(js_page: Any) -> None:
    out = js_page.evaluate(
        """async () => {
          const r = await import('/static/router.js');
          return [
            r.parseRoute('/'), r.parseRoute('/workspaces/demo'), r.parseRoute('/workspaces/a%20b/runs/run_1'),
            r.parseRoute('/nope'), r.seqFromHash('#seq=42'), r.seqFromHash('#x'), r.runUrl('w', 'run_1', 7),
          ];
        }"""
    )
    assert out == [
        {"name": "home", "params": {}},
        {"name": "runs", "params": {"workspaceId": "demo"}},
        {"name": "run", "params": {"workspaceId": "a b", "runId": "run_1"}},
        {"name": "notFound", "params": {}},
        42,
        None,
        "/workspaces/w/runs/run_1#seq=7",
    ]
