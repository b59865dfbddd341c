"""Foldable sections and error lines (web/static/sections.js), run in Chromium (issue 19)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.web.builders import RUN, ev

pytestmark = pytest.mark.browser


def line(seq: int, message: str, t: float = 0.0, **extra: Any) -> dict[str, Any]:
    return ev(
        seq, "console.line", {"stream": "stdout", "level": "info", "message": message, **extra}, t
    )


def index_of(js_page: Any, events: list[dict[str, Any]], script: str) -> Any:
    return js_page.evaluate(
        """async ([events, script]) => {
          const { SectionIndex, FoldedSource, parseMarker, isErrorLine } = await import('/static/sections.js');
          const index = new SectionIndex();
          for (const e of events) index.add(e);
          const base = { count: events.length, rowAt: (i) => events[i] ?? null, ensure() {}, ensureRanges() {},
                         put() {}, loadedEvents: () => events.length, stop() {} };
          const folded = new FoldedSource(base, index);
          return (new Function('index', 'folded', 'parseMarker', 'isErrorLine', script))(index, folded, parseMarker, isErrorLine);
        }""",
        [events, script],
    )


EVENTS = [
    ev(1, "run.queued", {"status": "queued"}),
    ev(2, "run.phase.started", {"phase": "build"}, 1.0),
    line(3, "::group::Install"),
    line(4, "pip 1"),
    line(5, "::endgroup::"),
    ev(
        6, "run.phase.completed", {"phase": "build", "status": "succeeded", "duration_ms": 900}, 2.0
    ),
    ev(7, "run.phase.started", {"phase": "test"}, 2.0),
    line(8, "\x1b[0Ksection_start:1:unit[collapsed=true]\r\x1b[0KUnit tests"),
    line(9, "ValueError: bad"),
    line(10, "\x1b[0Ksection_end:1:unit\r\x1b[0K"),
    line(11, "error: something", level="error"),
    ev(12, "run.error", {"stage": "run", "code": "x", "message": "y"}),
    ev(13, "run.completed", {"status": "failed"}, 5.0),
]


def test_phases_and_markers_become_nested_sections(js_page: Any) -> None:
    sections = index_of(
        js_page,
        EVENTS,
        "return index.sections.map((s) => [s.kind, s.name, s.headerSeq, s.endSeq, s.depth, s.status, s.durationMs, s.collapsedDefault])",
    )
    assert sections == [
        ["phase", "build", 2, 6, 0, "succeeded", 900, False],
        ["github", "Install", 3, 5, 1, None, 0, True],
        ["phase", "test", 7, 12, 0, None, 3000, False],  # ended by run.completed
        ["gitlab", "Unit tests", 8, 10, 1, None, 0, True],  # [collapsed=true]
    ]


def test_error_lines_and_run_errors_are_listed(js_page: Any) -> None:
    assert index_of(js_page, EVENTS, "return index.errors") == [9, 11, 12]


def test_folding_hides_rows_and_maps_indexes(js_page: Any) -> None:
    result = index_of(
        js_page,
        EVENTS,
        """const out = {};
           out.count = folded.count;                       // both groups fold by default
           out.seqs = [...Array(folded.count).keys()].map((i) => folded.seqAt(i));
           out.hidden4 = folded.indexOfSeq(4);
           out.idx11 = folded.indexOfSeq(11);
           folded.toggle(2);                               // fold the whole build phase
           out.afterFold = [...Array(folded.count).keys()].map((i) => folded.seqAt(i));
           folded.reveal(4);                               // a jump to 4 unfolds phase and group
           out.afterReveal = folded.count;
           return out;""",
    )
    # a section's closing marker folds with it (4-5 and 9-10)
    assert result["seqs"] == [1, 2, 3, 6, 7, 8, 11, 12, 13]
    assert result["count"] == 9
    assert result["hidden4"] == -1
    assert result["idx11"] == 6
    assert result["afterFold"] == [1, 2, 7, 8, 11, 12, 13]
    assert result["afterReveal"] == 11  # only the GitLab section (9-10) stays folded


def test_marker_and_error_parsing(js_page: Any) -> None:
    result = index_of(
        js_page,
        [],
        """return [parseMarker('::group::  Build it '), parseMarker('plain'),
                   parseMarker('section_end:12:name'), isErrorLine({message: 'Traceback (most recent call last):'}),
                   isErrorLine({message: 'no error here'}), isErrorLine({message: 'x', level: 'error'})]""",
    )
    assert result[0]["name"] == "Build it" and result[0]["collapsed"] is True
    assert result[1] is None
    assert result[2] == {"kind": "close", "style": "gitlab", "key": "name"}
    assert result[3:] == [True, False, True]


def test_a_replayed_run_queued_does_not_turn_running_back_to_queued(js_page: Any) -> None:
    """Regression (issue 19 item 10): an external run streaming showed `queued`."""
    status = js_page.evaluate(
        """async ([run, events]) => {
          const { initialRunState, reduceEvents, withRun } = await import('/static/reducer.js');
          let s = reduceEvents(initialRunState(run), events);
          const fromEvents = s.status;
          s = withRun(s, { ...run, status: 'queued' });   // a lagging row
          return [fromEvents, s.status];
        }""",
        [
            {**RUN, "status": "running"},
            [ev(1, "run.queued", {"status": "queued"}), line(2, "hello")],
        ],
    )
    assert status == ["running", "running"]
