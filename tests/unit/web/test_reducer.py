"""The run view's pure reducer (web/static/reducer.js), run in Chromium."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.web.builders import RUN, ev, line

pytestmark = pytest.mark.browser

REDUCE = """async ([run, summary, events]) => {
  const m = await import('/static/reducer.js');
  let s = m.initialRunState(run, summary);
  s = m.reduceEvents(s, events);
  return {state: s, validation: m.validationView(s), tables: m.tablesView(s)};
}"""


def reduce(
    page: Any, events: list[dict[str, Any]], run: dict[str, Any] | None = None, summary: Any = None
) -> Any:
    return page.evaluate(REDUCE, [run or RUN, summary, events])


def test_a_live_run_builds_header_phases_and_counts(js_page: Any) -> None:
    events = [
        ev(1, "run.queued", {"status": "queued", "mode": "execute"}, 0.0),
        ev(2, "build.started", {"status": "building"}, 0.1),
        ev(3, "build.phase.started", {"phase": "resolve"}, 0.1),
        ev(
            4,
            "build.phase.completed",
            {"phase": "resolve", "status": "succeeded", "duration_ms": 300},
            0.4,
        ),
        ev(5, "build.completed", {"status": "succeeded", "exit_code": 0}, 0.5),
        ev(6, "run.started", {"status": "running"}, 1.0),
        ev(7, "run.phase.started", {"phase": "extracting"}, 1.0),
        line(8, "\x1b[32mok\x1b[0m row 1"),
        line(9, "careful", stream="stderr", level="warning"),
        ev(10, "run.table.summary", {"table_id": "t1", "source_file": "a.xlsx", "row_count": 10}),
        ev(11, "run.table.summary", {"table_id": "t2", "source_file": "b.csv", "row_count": 5}),
        ev(12, "run.validation.issue", {"severity": "error", "code": "bad_date"}),
        ev(13, "run.phase.started", {"phase": "writing"}, 3.5),
    ]
    out = reduce(js_page, events)
    s = out["state"]
    assert s["status"] == "running"
    assert s["startedAt"] == events[5]["created_at"]
    assert s["lastSequence"] == 13
    assert s["console"] == {
        "lines": 2,
        "byStream": {"stdout": 1, "stderr": 1},
        "byLevel": {"info": 1, "warning": 1},
    }
    phases = [
        (p["scope"], p["phase"], p["status"], p["durationMs"], p["open"]) for p in s["phases"]
    ]
    # a new phase of the same scope ends the previous one (2.5 s after it started)
    assert phases == [
        ("build", "resolve", "succeeded", 300, False),
        ("run", "extracting", None, 2500, False),
        ("run", "writing", None, None, True),
    ]
    assert out["tables"]["table_count"] == 2
    assert out["tables"]["row_count"] == 15
    assert out["tables"]["input_file_count"] == 2
    assert out["validation"] == {
        "issues_total": 1,
        "issues_by_severity": {"error": 1},
        "max_severity": "error",
    }
    assert s["completed"] is False


def test_run_completed_sets_status_failure_summary_and_closes_phases(js_page: Any) -> None:
    summary = {
        "status": "failed",
        "failure": {"stage": "run", "code": "bad_input", "message": "boom"},
        "execution": {"exit_code": 1, "started_at": "2026-11-24T06:00:01.000000Z",
                      "completed_at": "2026-11-24T06:00:09.000000Z", "duration_ms": 8000},
        "phases": [{"scope": "run", "phase": "extracting", "status": None, "duration_ms": 7000}],
        "tables": {"input_file_count": 1, "table_count": 1, "row_count": 3, "by_file": []},
        "validation": {"issues_total": 2, "issues_by_severity": {"warning": 2}, "issues_by_code": {}, "max_severity": "warning"},
        "console": {"lines": 1, "by_stream": {"stdout": 1}},
    }  # fmt: skip
    events = [
        ev(1, "run.started", {}, 1.0),
        ev(2, "run.phase.started", {"phase": "extracting"}, 2.0),
        ev(3, "run.error", {"stage": "run", "code": "bad_input", "message": "boom"}, 8.0),
        ev(4, "run.completed", {"status": "failed", "failure": None,
                                "execution": summary["execution"], "summary": summary}, 9.0),
    ]  # fmt: skip
    s = reduce(js_page, events)["state"]
    assert s["status"] == "failed"
    assert s["completed"] is True
    assert s["exitCode"] == 1
    assert s["failure"]["code"] == "bad_input"
    assert s["summary"]["validation"]["max_severity"] == "warning"
    assert all(not p["open"] for p in s["phases"])
    assert s["phases"][0]["durationMs"] == 7000


def test_failure_falls_back_to_the_last_run_error(js_page: Any) -> None:
    events = [
        ev(1, "run.error", {"stage": "build", "code": "first", "message": "a"}),
        ev(2, "run.error", {"stage": "run", "code": "second", "message": "b"}),
        ev(3, "run.completed", {"status": "failed", "failure": None}),
    ]
    s = reduce(js_page, events)["state"]
    assert s["failure"]["code"] == "second"


def test_replayed_sequences_are_ignored_and_counted(js_page: Any) -> None:
    events = [line(1, "a"), line(2, "b"), line(2, "b"), line(1, "a"), line(3, "c"), line(3, "c")]
    s = reduce(js_page, events)["state"]
    assert s["console"]["lines"] == 3
    assert s["duplicates"] == 3
    assert s["lastSequence"] == 3
    assert s["applied"] == 3


def test_reducer_is_pure(js_page: Any) -> None:
    result = js_page.evaluate(
        """async (events) => {
          const m = await import('/static/reducer.js');
          const s0 = m.initialRunState(null, null);
          const frozen = JSON.stringify(s0);
          const s1 = m.reduceEvents(s0, events);
          return {unchanged: JSON.stringify(s0) === frozen, differs: s0 !== s1, again: JSON.stringify(m.reduceEvents(s0, events)) === JSON.stringify(s1)};
        }""",
        [ev(1, "run.started"), ev(2, "run.phase.started", {"phase": "x"}), line(3, "hi")],
    )
    assert result == {"unchanged": True, "differs": True, "again": True}


def test_an_ended_run_starts_from_its_summary(js_page: Any) -> None:
    run = {**RUN, "status": "succeeded", "started_at": "2026-11-24T06:00:01.000000Z",
           "completed_at": "2026-11-24T06:00:03.000000Z", "exit_code": 0}  # fmt: skip
    summary = {
        "status": "succeeded", "failure": None,
        "execution": {"exit_code": 0, "duration_ms": 2000},
        "phases": [{"scope": "build", "phase": "resolve", "status": "succeeded", "duration_ms": 5},
                   {"scope": "run", "phase": "load", "status": "succeeded", "duration_ms": 1500}],
        "tables": {"input_file_count": 2, "table_count": 3, "row_count": None, "by_file": []},
        "validation": {"issues_total": 0, "issues_by_severity": {}, "max_severity": None},
    }  # fmt: skip
    out = reduce(js_page, [], run=run, summary=summary)
    s = out["state"]
    assert s["completed"] is True
    assert s["status"] == "succeeded"
    assert [p["phase"] for p in s["phases"]] == ["resolve", "load"]
    assert out["tables"]["row_count"] is None
    assert out["validation"]["max_severity"] is None


def test_a_lagging_run_row_does_not_undo_run_completed(js_page: Any) -> None:
    out = js_page.evaluate(
        """async ([run, events]) => {
          const m = await import('/static/reducer.js');
          let s = m.reduceEvents(m.initialRunState(run), events);
          s = m.withRun(s, {...run, status: 'running'});
          const after = m.withRun(s, {...run, status: 'succeeded', exit_code: 0});
          return [s.status, after.status, after.exitCode];
        }""",
        [RUN, [ev(1, "run.started"), ev(2, "run.completed", {"status": "succeeded"})]],
    )
    assert out == ["succeeded", "succeeded", 0]
