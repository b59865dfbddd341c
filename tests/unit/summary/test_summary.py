"""The run summary: one test per rule of contract section 2.1, plus properties."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runevents.exceptions import InvalidEvent
from runevents.masking import MASKED_KEY
from runevents.summary import (
    SNIPPET_BYTES,
    SUMMARY_SCHEMA,
    RunSummaryBuilder,
    run_fields,
    summarize_lines,
)
from tests.unit.summary.builders import (
    Ev,
    completed,
    console,
    envelope,
    events_strategy,
    issue,
    shaped_payloads,
    summarize,
    table,
    ts,
)

# -- the whole object ---------------------------------------------------------------


def test_example_object_shape() -> None:
    events: list[Ev] = [
        ("run.queued", ts(0), {"status": "queued", "mode": "execute", "options": {}}),
        ("run.started", ts(100), {"status": "running"}),
        ("run.phase.started", ts(200), {"phase": "extracting"}),
        console("row 1 ok"),
        console("careful", stream="stderr", level="warning"),
        ("run.phase.completed", ts(1000), {
            "phase": "extracting", "status": "succeeded", "duration_ms": 800,
        }),
        table("t1", "a.xlsx", 4, validation={
            "issues_total": 2, "issues_by_severity": {"error": 2},
        }),
        table("t2", "a.xlsx", 6),
        table("t3", "b.xlsx", 5, validation={"issues_total": 1}),
        ("run.validation.summary", ts(1200), {
            "issues_total": 3,
            "issues_by_severity": {"error": 2, "warning": 1},
            "issues_by_code": {"missing": 3},
            "max_severity": "error",
        }),
        ("run.error", ts(1300), {"stage": "run", "code": "bad_input", "message": "bad cell"}),
        completed(
            5330,
            "failed",
            failure=None,
            execution={
                "exit_code": 1, "started_at": ts(100),
                "completed_at": ts(5330), "duration_ms": 5230,
            },
            artifacts={"output_paths": [], "events_path": "x"},
        ),
    ]  # fmt: skip
    assert summarize(events) == {
        "schema": "runevents.run_summary/v1",
        "status": "failed",
        "failure": {"stage": "run", "code": "bad_input", "message": "bad cell"},
        "execution": {
            "exit_code": 1,
            "started_at": ts(100),
            "completed_at": ts(5330),
            "duration_ms": 5230,
        },
        "events": {
            "total": 12,
            "by_type": {
                "console.line": 2,
                "run.completed": 1,
                "run.error": 1,
                "run.phase.completed": 1,
                "run.phase.started": 1,
                "run.queued": 1,
                "run.started": 1,
                "run.table.summary": 3,
                "run.validation.summary": 1,
            },
            "ignored": 0,
        },
        "console": {
            "lines": 2,
            "by_stream": {"stderr": 1, "stdout": 1},
            "by_level": {"info": 1, "warning": 1},
            "truncated": 0,
            "masked": 0,
        },
        "phases": [
            {"scope": "run", "phase": "extracting", "status": "succeeded", "duration_ms": 800}
        ],
        "tables": {
            "input_file_count": 2,
            "table_count": 3,
            "row_count": 15,
            "by_file": [
                {"source_file": "a.xlsx", "table_count": 2, "row_count": 10, "issues_total": 2},
                {"source_file": "b.xlsx", "table_count": 1, "row_count": 5, "issues_total": 1},
            ],
        },
        "validation": {
            "issues_total": 3,
            "issues_by_severity": {"error": 2, "warning": 1},
            "issues_by_code": {"missing": 3},
            "max_severity": "error",
        },
        "truncated": {},
    }
    assert SUMMARY_SCHEMA == "runevents.run_summary/v1"


# -- status and failure ----------------------------------------------------------------


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_status_is_the_run_completed_status(status: str) -> None:
    assert summarize([completed(status=status)])["status"] == status


def test_status_null_without_run_completed_partial_log() -> None:
    summary = summarize([("run.started", ts(0), {}), console()])
    assert summary["status"] is None
    assert summary["failure"] is None
    assert summary["execution"] == {
        "exit_code": None,
        "started_at": ts(0),
        "completed_at": None,
        "duration_ms": None,
    }


def test_failure_is_the_run_completed_failure() -> None:
    failure = {"stage": "build", "code": "build_failed", "message": "pip failed"}
    events = [
        ("run.error", ts(1), {"stage": "run", "code": "other", "message": "m"}),
        completed(status="failed", failure=failure),
    ]
    assert summarize(events)["failure"] == failure


def test_failure_falls_back_to_the_last_run_error_when_failed() -> None:
    events = [
        ("run.error", ts(1), {"stage": "run", "code": "first", "message": "a"}),
        ("run.error", ts(2), {"stage": "run", "code": "second", "message": "b", "phase": "p"}),
        completed(status="failed", failure=None),
    ]
    assert summarize(events)["failure"] == {"stage": "run", "code": "second", "message": "b"}


def test_failure_null_when_run_did_not_fail_despite_run_error() -> None:
    events = [
        ("run.error", ts(1), {"stage": "run", "code": "x", "message": "a"}),
        completed(status="succeeded"),
    ]
    assert summarize(events)["failure"] is None


def test_failure_null_when_failed_without_any_run_error() -> None:
    assert summarize([completed(status="failed")])["failure"] is None


# -- execution ---------------------------------------------------------------------------


def test_execution_comes_from_the_run_completed_payload() -> None:
    execution = {"exit_code": 3, "started_at": "s", "completed_at": "c", "duration_ms": 7}
    events = [("run.started", ts(0), {}), completed(9000, execution=execution)]
    assert summarize(events)["execution"] == execution


def test_execution_fallback_from_first_run_started_and_run_completed() -> None:
    events = [
        ("run.started", ts(100), {}),
        ("run.started", ts(200), {}),
        completed(5330),
    ]
    assert summarize(events)["execution"] == {
        "exit_code": None,
        "started_at": ts(100),
        "completed_at": ts(5330),
        "duration_ms": 5230,
    }


def test_execution_fallback_without_run_started_has_null_duration() -> None:
    assert summarize([completed(5000)])["execution"] == {
        "exit_code": None,
        "started_at": None,
        "completed_at": ts(5000),
        "duration_ms": None,
    }


def test_execution_fallback_accepts_utc_offsets_and_long_fractions() -> None:
    events = [
        ("run.started", "2026-11-24T08:00:00.5+02:00", {}),
        ("run.completed", "2026-11-24T06:00:01.7500009Z", {"status": "succeeded"}),
    ]
    assert summarize(events)["execution"]["duration_ms"] == 1250


def test_execution_fallback_unparseable_timestamp_gives_null_duration() -> None:
    events = [("run.started", "yesterday", {}), completed(5000)]
    assert summarize(events)["execution"]["duration_ms"] is None


# -- events ------------------------------------------------------------------------------


def test_events_total_counts_every_event_including_run_completed() -> None:
    events = [("x.custom", ts(0), 5), console(), completed()]
    summary = summarize(events)
    assert summary["events"]["total"] == 3
    assert summary["events"]["by_type"] == {"console.line": 1, "run.completed": 1, "x.custom": 1}


# -- console -----------------------------------------------------------------------------


def test_console_lines_by_stream_and_by_level() -> None:
    events = [
        console(stream="stdout", level="info"),
        console(stream="stdout", level="debug"),
        console(stream="stderr", level="warning"),
        console(stream="stderr", level="warning"),
    ]
    assert summarize(events)["console"] == {
        "lines": 4,
        "by_stream": {"stderr": 2, "stdout": 2},
        "by_level": {"debug": 1, "info": 1, "warning": 2},
        "truncated": 0,
        "masked": 0,
    }


def test_console_truncated_counts_lines_cut_at_the_cap() -> None:
    events = [
        console("aaaa… [truncated 10 bytes]", truncated=True),
        console("short", truncated=False),
        console("b… [truncated 3 bytes]", truncated=True),
        console("no flag"),
    ]
    assert summarize(events)["console"]["truncated"] == 2


def test_console_snippet_is_the_tail_joined_by_newlines() -> None:
    builder = RunSummaryBuilder()
    for type_, at, payload in [console("one"), console("two"), table("t", "f"), console("three")]:
        builder.add(type_, at, payload)
    assert builder.console_snippet == "one\ntwo\nthree"


def test_console_snippet_at_most_4096_bytes() -> None:
    builder = RunSummaryBuilder()
    for i in range(2000):
        builder.add(*console(f"line {i:05d}"))
    snippet = builder.console_snippet
    assert len(snippet.encode()) <= SNIPPET_BYTES
    assert snippet.endswith("line 01999")
    assert len(snippet.encode()) > SNIPPET_BYTES - 20
    assert "line 01990\nline 01991\n" in snippet


def test_console_snippet_cut_on_a_character_boundary() -> None:
    builder = RunSummaryBuilder()
    builder.add(*console("€" * 3000))  # 3 bytes each: 9000 bytes
    snippet = builder.console_snippet
    assert set(snippet) == {"€"}
    assert len(snippet.encode()) <= SNIPPET_BYTES
    assert len(snippet) == SNIPPET_BYTES // 3

    builder.add(*console("ab"))
    snippet = builder.console_snippet
    assert snippet.endswith("€\nab")
    assert len(snippet.encode()) <= SNIPPET_BYTES


def test_console_snippet_survives_lone_surrogates() -> None:
    builder = RunSummaryBuilder()
    # Not reachable through add_line (msgspec rejects lone surrogates), but add() takes any str.
    builder.add("console.line", ts(0), {"message": "a\ud800b"})
    assert builder.console_snippet == "a?b"


# -- phases ------------------------------------------------------------------------------


def test_phases_one_entry_per_start_in_order() -> None:
    events = [
        ("run.phase.started", ts(0), {"phase": "a"}),
        ("build.phase.started", ts(1), {"phase": "b"}),
        ("run.phase.started", ts(2), {"phase": "c"}),
        ("run.phase.completed", ts(3), {"phase": "never-started", "status": "succeeded"}),
        completed(10),
    ]
    phases = summarize(events)["phases"]
    assert [(p["scope"], p["phase"]) for p in phases] == [
        ("run", "a"),
        ("build", "b"),
        ("run", "c"),
    ]


def test_phase_status_from_completed_event_else_null() -> None:
    events = [
        ("run.phase.started", ts(0), {"phase": "a"}),
        ("run.phase.completed", ts(5), {"phase": "a", "status": "failed", "duration_ms": 5}),
        ("run.phase.started", ts(6), {"phase": "b"}),
        completed(10),
    ]
    assert [p["status"] for p in summarize(events)["phases"]] == ["failed", None]


def test_phase_duration_is_the_completed_event_duration_ms() -> None:
    events = [
        ("run.phase.started", ts(0), {"phase": "a"}),
        ("run.phase.completed", ts(5000), {"phase": "a", "status": "succeeded", "duration_ms": 42}),
    ]
    assert summarize(events)["phases"][0]["duration_ms"] == 42


def test_phase_duration_between_the_two_events_when_completed_lacks_duration_ms() -> None:
    events = [
        ("run.phase.started", ts(100), {"phase": "a"}),
        ("run.phase.started", ts(200), {"phase": "b"}),
        ("run.phase.completed", ts(1600), {"phase": "a", "status": "succeeded"}),
        completed(9000),
    ]
    assert summarize(events)["phases"][0]["duration_ms"] == 1500


def test_phase_duration_to_the_next_phase_start_of_the_same_scope() -> None:
    events = [
        ("run.phase.started", ts(100), {"phase": "a"}),
        ("build.phase.started", ts(300), {"phase": "other-scope"}),
        ("run.phase.started", ts(700), {"phase": "b"}),
        ("run.phase.completed", ts(800), {"phase": "b", "status": "succeeded"}),
        completed(9000),
    ]
    phases = summarize(events)["phases"]
    assert phases[0]["duration_ms"] == 600
    assert phases[1] == {
        "scope": "build",
        "phase": "other-scope",
        "status": None,
        "duration_ms": 8700,
    }


def test_phase_duration_to_the_run_end_without_a_later_start() -> None:
    events = [("build.phase.started", ts(250), {"phase": "install"}), completed(1250)]
    assert summarize(events)["phases"][0]["duration_ms"] == 1000


def test_phase_duration_null_without_run_end_partial_log() -> None:
    events = [("run.phase.started", ts(250), {"phase": "a"})]
    assert summarize(events)["phases"][0]["duration_ms"] is None


def test_phase_completed_closes_latest_open_start_of_same_name() -> None:
    events = [
        ("run.phase.started", ts(0), {"phase": "a"}),
        ("run.phase.started", ts(10), {"phase": "a"}),
        ("run.phase.completed", ts(30), {"phase": "a", "status": "succeeded"}),
        ("build.phase.completed", ts(40), {"phase": "a", "status": "failed"}),
        completed(100),
    ]
    phases = summarize(events)["phases"]
    assert phases == [
        {"scope": "run", "phase": "a", "status": None, "duration_ms": 10},
        {"scope": "run", "phase": "a", "status": "succeeded", "duration_ms": 20},
    ]


# -- tables ------------------------------------------------------------------------------


def test_tables_one_per_distinct_table_id_later_replaces_earlier() -> None:
    events = [table("t1", "a.csv", 5), table("t1", "b.csv", 7), table("t2", "b.csv", 1)]
    tables = summarize(events)["tables"]
    assert tables["table_count"] == 2
    assert tables["row_count"] == 8
    assert tables["input_file_count"] == 1
    assert tables["by_file"] == [
        {"source_file": "b.csv", "table_count": 2, "row_count": 8, "issues_total": 0}
    ]


def test_input_file_count_counts_distinct_source_files() -> None:
    events = [table("t1", "a"), table("t2", "a"), table("t3", "b"), table("t4", "c")]
    assert summarize(events)["tables"]["input_file_count"] == 3


def test_row_count_zero_with_no_tables() -> None:
    assert summarize([completed()])["tables"] == {
        "input_file_count": 0,
        "table_count": 0,
        "row_count": 0,
        "by_file": [],
    }


def test_row_count_null_when_any_table_row_count_null_or_missing() -> None:
    missing = table("t3", "b", 1)
    del missing[2]["row_count"]
    events = [table("t1", "a", 4), table("t2", "a", None), missing, table("t4", "c", 2)]
    tables = summarize(events)["tables"]
    assert tables["row_count"] is None
    assert [f["row_count"] for f in tables["by_file"]] == [None, None, 2]


@pytest.mark.parametrize("bad", ["10", 1.5, 10.0, True, [1], {"n": 1}])
def test_row_count_other_non_integer_makes_the_event_malformed(bad: Any) -> None:
    summary = summarize([table("t1", "a", 3), table("t2", "a", bad)])
    assert summary["events"]["ignored"] == 1
    assert summary["tables"]["table_count"] == 1
    assert summary["tables"]["row_count"] == 3


def test_by_file_sorted_by_source_file_with_issues_total() -> None:
    events = [
        table("t1", "z.xlsx", 1, validation={"issues_total": 4}),
        table("t2", "a.xlsx", 2, validation={"issues_by_severity": {"info": 2, "error": 1}}),
        table("t3", "m.xlsx", 3),
        table("t4", "a.xlsx", 5, validation={"issues_total": 1}),
    ]
    assert summarize(events)["tables"]["by_file"] == [
        {"source_file": "a.xlsx", "table_count": 2, "row_count": 7, "issues_total": 4},
        {"source_file": "m.xlsx", "table_count": 1, "row_count": 3, "issues_total": 0},
        {"source_file": "z.xlsx", "table_count": 1, "row_count": 1, "issues_total": 4},
    ]


# -- validation --------------------------------------------------------------------------


def test_validation_the_last_run_validation_summary_wins() -> None:
    events = [
        table("t", "a", validation={"issues_total": 9, "issues_by_severity": {"critical": 9}}),
        issue("critical"),
        ("run.validation.summary", ts(0), {
            "issues_total": 100, "issues_by_severity": {"critical": 100},
        }),
        ("run.validation.summary", ts(1), {
            "issues_total": 2,
            "issues_by_severity": {"warning": 2},
            "issues_by_code": {"blank": 2},
            "max_severity": "warning",
        }),
    ]  # fmt: skip
    assert summarize(events)["validation"] == {
        "issues_total": 2,
        "issues_by_severity": {"warning": 2},
        "issues_by_code": {"blank": 2},
        "max_severity": "warning",
    }


def test_validation_else_sums_of_the_tables_validation() -> None:
    events = [
        table("t1", "a", validation={
            "issues_total": 3,
            "issues_by_severity": {"error": 1, "warning": 2},
            "issues_by_code": {"missing": 3},
            "max_severity": "error",
        }),
        table("t2", "b", validation={
            "issues_total": 2,
            "issues_by_severity": {"warning": 1, "critical": 1},
            "issues_by_code": {"missing": 1, "type": 1},
        }),
        table("t3", "b"),
        issue("info"),
    ]  # fmt: skip
    assert summarize(events)["validation"] == {
        "issues_total": 5,
        "issues_by_severity": {"critical": 1, "error": 1, "warning": 3},
        "issues_by_code": {"missing": 4, "type": 1},
        "max_severity": "critical",
    }


def test_validation_else_counts_of_run_validation_issue_events() -> None:
    events = [table("t", "a"), issue("warning", "a"), issue("error", "b"), issue("warning", "b")]
    assert summarize(events)["validation"] == {
        "issues_total": 3,
        "issues_by_severity": {"error": 1, "warning": 2},
        "issues_by_code": {"a": 1, "b": 2},
        "max_severity": "error",
    }


def test_validation_else_zeros_and_empty_maps() -> None:
    assert summarize([table("t", "a"), completed()])["validation"] == {
        "issues_total": 0,
        "issues_by_severity": {},
        "issues_by_code": {},
        "max_severity": None,
    }


@pytest.mark.parametrize(
    ("severities", "expected"),
    [
        (["info"], "info"),
        (["info", "warning"], "warning"),
        (["warning", "error", "info"], "error"),
        (["critical", "error"], "critical"),
    ],
)
def test_max_severity_ranks_info_warning_error_critical(
    severities: list[str], expected: str
) -> None:
    assert summarize([issue(s) for s in severities])["validation"]["max_severity"] == expected


def test_other_severity_names_are_counted_but_never_max() -> None:
    validation = summarize([issue("fatal"), issue("notice"), issue("info")])["validation"]
    assert validation["issues_by_severity"] == {"fatal": 1, "info": 1, "notice": 1}
    assert validation["max_severity"] == "info"
    assert summarize([issue("fatal")])["validation"]["max_severity"] is None


def test_max_severity_needs_a_positive_count() -> None:
    payload = {"issues_total": 0, "issues_by_severity": {"error": 0}, "max_severity": "error"}
    summary = summarize([("run.validation.summary", ts(0), payload)])
    assert summary["validation"]["max_severity"] is None


def test_declared_max_severity_used_only_without_by_severity() -> None:
    payload = {"issues_total": 2, "max_severity": "warning"}
    validation = summarize([("run.validation.summary", ts(0), payload)])["validation"]
    assert validation == {
        "issues_total": 2,
        "issues_by_severity": {},
        "issues_by_code": {},
        "max_severity": "warning",
    }
    payload = {"issues_total": 2, "max_severity": "fatal"}
    assert (
        summarize([("run.validation.summary", ts(0), payload)])["validation"]["max_severity"]
        is None
    )


# -- malformed telemetry -------------------------------------------------------------------

GOOD_TABLE = table("t", "a")[2]

MALFORMED: list[tuple[str, Any]] = [
    ("run.table.summary", "not an object"),
    ("run.table.summary", {**GOOD_TABLE, "table_id": 7}),
    ("run.table.summary", {k: v for k, v in GOOD_TABLE.items() if k != "table_id"}),
    ("run.table.summary", {**GOOD_TABLE, "source_file": None}),
    ("run.table.summary", {**GOOD_TABLE, "source_sheet": 3}),
    ("run.table.summary", {**GOOD_TABLE, "table_index": "0"}),
    ("run.table.summary", {**GOOD_TABLE, "column_count": 2.0}),
    ("run.table.summary", {**GOOD_TABLE, "validation": "none"}),
    ("run.table.summary", {**GOOD_TABLE, "validation": {"issues_total": "3"}}),
    ("run.table.summary", {**GOOD_TABLE, "validation": {"issues_by_code": {"x": True}}}),
    ("run.validation.summary", {"issues_total": "3"}),
    ("run.validation.summary", {"issues_total": False}),
    ("run.validation.summary", {"issues_by_severity": ["error"]}),
    ("run.validation.summary", {"issues_by_severity": {"error": 1.0}}),
    ("run.validation.summary", {"max_severity": 3}),
    ("run.validation.summary", None),
    ("run.validation.issue", {"severity": 3, "code": "x"}),
    ("run.validation.issue", {"code": "x"}),
    ("run.validation.issue", {"severity": "error", "code": None}),
    ("run.validation.issue", {"severity": "error", "code": "x", "message": ["m"]}),
    ("run.error", {"stage": "run", "code": 5, "message": "m"}),
    ("run.error", {"stage": "run", "code": "c", "message": "m", "phase": 1}),
    ("run.error", []),
    ("run.phase.started", {"phase": 1}),
    ("run.phase.started", {}),
    ("build.phase.completed", {"phase": "p", "duration_ms": "5"}),
    ("run.phase.completed", {"phase": "p", "duration_ms": True}),
    ("run.phase.completed", {"phase": "p", "status": 0}),
    ("console.line", {"stream": 1, "level": "info", "message": "m"}),
    ("console.line", "text"),
]


@pytest.mark.parametrize(("type_", "payload"), MALFORMED)
def test_malformed_telemetry_is_skipped_and_counted_in_ignored(type_: str, payload: Any) -> None:
    good = [
        ("run.phase.started", ts(0), {"phase": "p"}),
        issue("info", "i"),
        ("run.error", ts(0), {"stage": "run", "code": "kept", "message": "m"}),
        console("kept"),
    ]
    baseline = summarize([*good, completed(status="failed")])
    summary = summarize([*good, (type_, ts(1), payload), completed(status="failed")])
    assert summary["events"]["ignored"] == 1
    assert summary["events"]["total"] == baseline["events"]["total"] + 1
    assert summary["events"]["by_type"][type_] == baseline["events"]["by_type"].get(type_, 0) + 1
    for key in ("failure", "console", "phases", "tables", "validation"):
        assert summary[key] == baseline[key], key


def test_bool_is_not_an_integer_count() -> None:
    summary = summarize([table("t", "a", True), table("u", "a", 2)])
    assert summary["events"]["ignored"] == 1
    assert summary["tables"]["row_count"] == 2


def test_payload_of_event_types_the_summary_does_not_read_is_never_malformed() -> None:
    events = [("run.queued", ts(0), "?"), ("run.started", ts(0), 1), ("x.y", None, None)]
    assert summarize(events)["events"]["ignored"] == 0


# -- run.completed's own summary ---------------------------------------------------------


def _run_events() -> list[Ev]:
    return [
        ("run.queued", ts(0), {"status": "queued"}),
        ("run.started", ts(10), {"status": "running"}),
        ("build.phase.started", ts(11), {"phase": "venv"}),
        console("building", level="debug"),
        table("t1", "a.csv", 3, validation={"issues_total": 1, "issues_by_severity": {"info": 1}}),
        issue("error"),
        ("run.error", ts(20), {"stage": "run", "code": "c", "message": "m"}),
    ]


def test_run_completed_summary_is_ignored_so_rebuild_from_stored_log_is_identical() -> None:
    events = _run_events()
    final_payload = {"status": "failed", "failure": None, "execution": None}
    built = summarize([*events, ("run.completed", ts(99), final_payload)])

    stored = [envelope(i + 1, *event) for i, event in enumerate(events)]
    bogus = {"schema": "bogus", "status": "succeeded", "events": {"total": 1}}
    stored_final = {**final_payload, "summary": built}
    stored.append(envelope(len(stored) + 1, "run.completed", ts(99), stored_final))
    assert summarize_lines(stored) == built

    stored[-1] = envelope(len(stored), "run.completed", ts(99), {**final_payload, "summary": bogus})
    assert summarize_lines(stored) == built


def test_build_is_repeatable_and_does_not_alias_state() -> None:
    builder = RunSummaryBuilder()
    for event in [*_run_events(), completed(99, execution={"exit_code": 1})]:
        builder.add(*event)
    first = builder.build()
    first["execution"]["exit_code"] = 77
    first["validation"]["issues_by_code"]["z"] = 1
    first["phases"].append({})
    second = builder.build()
    assert second == builder.build()
    assert second["execution"] == {"exit_code": 1}
    assert "z" not in second["validation"]["issues_by_code"]
    assert len(second["phases"]) == 1


def test_live_summary_grows_as_events_arrive() -> None:
    builder = RunSummaryBuilder()
    builder.add(*console())
    assert builder.build()["console"]["lines"] == 1
    builder.add(*console())
    assert builder.build()["console"]["lines"] == 2


# -- lines -------------------------------------------------------------------------------


def test_add_line_rejects_a_line_that_is_not_an_envelope() -> None:
    builder = RunSummaryBuilder()
    builder.add_line(envelope(1, "console.line", ts(0), {"message": "ok"}))
    with pytest.raises(InvalidEvent, match="line 2"):
        builder.add_line(b"{not json")
    with pytest.raises(InvalidEvent):
        builder.add_line(b'{"type": 5}')
    with pytest.raises(InvalidEvent):
        builder.add_line(b"[1, 2]")


def test_add_line_skips_blank_lines() -> None:
    assert summarize_lines([b"\n", b"  "])["events"]["total"] == 0


def test_add_chunk_splits_on_newline_only() -> None:
    message = "a\u2028b\u2029c\rd\x85e"
    data = envelope(1, "console.line", ts(0), {"message": message}) + envelope(2, "x", ts(0), {})
    builder = RunSummaryBuilder()
    builder.add_chunk(data)
    assert builder.build()["events"]["total"] == 2
    assert builder.console_snippet == message


def test_run_fields_mirror_the_summary() -> None:
    summary = summarize([table("t", "a", 4), table("u", "b", 5), issue("warning")])
    assert run_fields(summary) == {
        "input_file_count": 2,
        "table_count": 2,
        "row_count": 9,
        "max_validation_severity": "warning",
    }


# -- properties --------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(events_strategy)
def test_property_random_events_never_raise_and_build_is_deterministic(events: list[Ev]) -> None:
    builder = RunSummaryBuilder()
    for event in events:
        builder.add(*event)
    summary = builder.build()
    assert summary == builder.build()
    assert summary == summarize(events)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["events"]["total"] == len(events)
    assert summary["events"]["total"] == sum(summary["events"]["by_type"].values())
    assert 0 <= summary["events"]["ignored"] <= len(events)
    assert len(builder.console_snippet.encode()) <= SNIPPET_BYTES
    assert summary["schema"] == SUMMARY_SCHEMA


@settings(max_examples=75, deadline=None)
@given(events_strategy, shaped_payloads)
def test_property_rebuild_from_stored_log_reproduces_summary(
    events: list[Ev], final: dict[str, Any]
) -> None:
    events = [e for e in events if e[0] != "run.completed"]
    final_event: Ev = ("run.completed", ts(10**8), final)
    built = summarize([*events, final_event])
    lines = [envelope(i + 1, *event) for i, event in enumerate(events)]
    lines.append(envelope(len(lines) + 1, "run.completed", ts(10**8), {**final, "summary": built}))
    assert summarize_lines(lines) == built


def reference_snippet(messages: list[str]) -> str:
    tail = "\n".join(messages).encode("utf-8", "replace")[-SNIPPET_BYTES:]
    return tail.decode("utf-8", "ignore")  # drops only a partial first character


# Runs of one (possibly multi-byte) character reach the 4 KiB window cheaply.
repeated = st.builds(
    lambda char, n: char * n, st.sampled_from(["a", "€", "\U0001f600", "xé"]), st.integers(0, 5000)
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="a€\U0001f600\n", max_size=40) | repeated, max_size=30))
def test_property_console_snippet_equals_the_tail_of_all_messages(messages: list[str]) -> None:
    builder = RunSummaryBuilder()
    for message in messages:
        builder.add(*console(message))
    assert builder.console_snippet == reference_snippet(messages)


# -- regressions: integers the row cannot hold, non-object blocks, U+0000 ----------------

INT64_MAX = 2**63 - 1


@pytest.mark.parametrize("huge", [2**63, 10**20, -(2**63) - 1])
def test_huge_row_count_leaves_the_run_stuck_in_running(huge: int) -> None:
    # regression (summary defect 1): a row_count past 64 bits reached the row's BIGINT
    # row_count and failed every completion (SQLite OverflowError; Postgres out of range)
    summary = summarize([table("t1", "a", 3), table("t2", "a", huge), completed()])
    assert summary["events"]["ignored"] == 1
    assert summary["tables"]["row_count"] == 3
    assert run_fields(summary)["row_count"] == 3


def test_huge_row_count_sums_saturate_at_the_row_column_range() -> None:
    # regression (summary defect 1): two in-range values whose sum overflows 64 bits
    half = 2**62
    block = {
        "issues_total": half,
        "issues_by_severity": {"error": half},
        "issues_by_code": {"c": half},
    }
    events = [
        table("t1", "a", half, validation=block),
        table("t2", "a", half, validation=block),
        table("t3", "b", -half),
        ("console.line", ts(0), {"message": "m", MASKED_KEY: INT64_MAX}),
        ("console.line", ts(0), {"message": "m", MASKED_KEY: INT64_MAX}),
        completed(),
    ]
    summary = summarize(events)
    assert summary["events"]["ignored"] == 0
    # file a's exact sum (2**63) is shown saturated; the run's total is exact until shown
    # (2**62 + 2**62 - 2**62), so the order tables come in never matters
    assert summary["tables"]["row_count"] == half
    assert summary["tables"]["by_file"][0]["row_count"] == INT64_MAX
    assert summary["tables"]["by_file"][1]["row_count"] == -half
    two = summarize([table("t1", "a", half), table("t2", "b", half), completed()])
    assert two["tables"]["row_count"] == INT64_MAX
    assert run_fields(two)["row_count"] == INT64_MAX
    assert summary["tables"]["by_file"][0]["issues_total"] == INT64_MAX
    validation = summary["validation"]
    assert validation["issues_total"] == INT64_MAX
    assert validation["issues_by_severity"] == {"error": INT64_MAX}
    assert validation["issues_by_code"] == {"c": INT64_MAX}
    assert summary["console"]["masked"] == INT64_MAX
    # a run.validation.summary without issues_total sums its map: saturated too
    alone = summarize(
        [
            (
                "run.validation.summary",
                ts(0),
                {"issues_by_severity": block["issues_by_severity"] | {"info": half}},
            )
        ]
    )
    assert alone["validation"]["issues_total"] == INT64_MAX
    for bad in (2**63, 10**20):
        bad_block = {"issues_total": bad}
        malformed = summarize([("run.validation.summary", ts(0), bad_block)])
        assert malformed["events"]["ignored"] == 1


def test_huge_row_count_exit_code_the_row_cannot_hold_is_null_in_the_row() -> None:
    # regression (summary defect 1): execution.exit_code goes to a 32-bit column
    from runevents.summary import row_exit_code  # here: new with the fix

    for code, expected in ((3, 3), (2**31, None), (10**20, None), (True, None), ("1", None)):
        summary = summarize([completed(status="failed", execution={"exit_code": code})])
        assert summary["execution"]["exit_code"] == code  # the summary keeps it as sent
        assert row_exit_code(summary) == expected


@pytest.mark.parametrize("block", ["boom", 5, ["a"], True])
@pytest.mark.parametrize("key", ["failure", "execution"])
def test_run_completed_with_a_non_object_failure_or_execution(key: str, block: Any) -> None:
    # regression (summary defect 2): the whole run.completed was malformed, so the
    # summary said status null and completed_at null while the row said failed
    error = ("run.error", ts(5), {"stage": "run", "code": "c", "message": "m"})
    started = ("run.started", ts(1000), {"status": "running"})
    summary = summarize([started, error, completed(at=3000, status="failed", **{key: block})])
    assert summary["events"]["ignored"] == 0
    assert summary["status"] == "failed"
    assert summary["execution"]["completed_at"] == ts(3000)
    if key == "failure":
        # read as absent: the last run.error stands in (contract 2.1)
        assert summary["failure"] == {"stage": "run", "code": "c", "message": "m"}
        assert summary["execution"]["duration_ms"] == 2000
    else:
        assert summary["execution"] == {
            "exit_code": None,
            "started_at": ts(1000),
            "completed_at": ts(3000),
            "duration_ms": 2000,
        }


def test_summary_string_containing_nul_is_the_same_in_row_and_log() -> None:
    # regression (summary defect 3): the row (db/rows.scrub: Postgres cannot store U+0000)
    # showed U+FFFD where the stored run.completed kept U+0000: two different objects
    from runevents.db.rows import scrub

    nul = "\x00"
    events: list[Ev] = [
        ("run.phase.started", ts(0), {"phase": f"p\u2028q{nul}"}),
        ("run.phase.completed", ts(1), {"phase": f"p\u2028q{nul}", "status": f"ok{nul}"}),
        ("run.phase.started", ts(2), {"phase": f"{nul}" * 300}),  # a long name: hashed key
        issue(f"err{nul}", f"c{nul}"),
        issue("error", "c\ufffd"),  # the same shown key: counted together
        table("t1", f"f{nul}.xlsx", 2),
        console("m", stream=f"s{nul}", level=f"l{nul}"),
        (f"x{nul}.custom", ts(3), {}),
        ("run.error", ts(4), {"stage": f"s{nul}", "code": f"c{nul}", "message": f"m{nul}"}),
        completed(
            status="failed",
            execution={"exit_code": 1, f"n{nul}": {"deep": [f"v{nul}"]}},
        ),
    ]
    summary = summarize(events)
    text = json.dumps(summary, ensure_ascii=False)
    assert nul not in text
    assert scrub(summary) == summary
    assert summary["phases"][0]["phase"] == "p\u2028q\ufffd"
    assert summary["phases"][0]["status"] == "ok\ufffd"
    assert summary["validation"]["issues_by_code"] == {"c\ufffd": 2}
    assert summary["failure"] == {"stage": "s\ufffd", "code": "c\ufffd", "message": "m\ufffd"}
    assert summary["execution"]["n\ufffd"] == {"deep": ["v\ufffd"]}
    assert summary["tables"]["by_file"][0]["source_file"] == "f\ufffd.xlsx"
    # rebuilt from the log (JSON, where U+0000 survives as \u0000): the same object
    lines = [envelope(i + 1, *e) for i, e in enumerate(events)]
    assert summarize_lines(lines) == summary
    # a table's validation keys too
    keyed = summarize([table("t", "f", 1, validation={"issues_by_code": {f"k{nul}": 1}})])
    assert keyed["validation"]["issues_by_code"] == {"k\ufffd": 1}
