"""How the client commands print runs (runevents.cli_format, issue 19 item 13)."""

from __future__ import annotations

from typing import Any

from runevents.cli_format import format_duration, run_details, runs_table, short_id, strip_ansi

RUN_ID = "run_01JD3Z8K2M4N6P8Q0R2S4T6V8W"


def run(i: int, status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    return {
        "id": RUN_ID[:-2] + f"{i:02d}",
        "workspace_id": "demo",
        "configuration_id": "extract-with-a-longer-name",
        "status": status,
        "created_at": "2026-12-06T19:20:43.123456Z",
        "started_at": "2026-12-06T19:20:44Z",
        "completed_at": "2026-12-06T19:21:49.500Z",
        "exit_code": 0,
        "event_count": 1234,
        "row_count": 56789,
        **extra,
    }


def test_a_pipe_gets_every_value_whole() -> None:
    lines = runs_table([run(1), run(2, "cancelled")], terminal=False)
    assert lines[0].split() == [
        "RUN", "CONFIGURATION", "STATUS", "CREATED", "DURATION", "EXIT", "EVENTS", "ROWS",
    ]  # fmt: skip
    assert lines[1].split() == [
        RUN_ID[:-2] + "01", "extract-with-a-longer-name", "succeeded",
        "2026-12-06T19:20:43.123456Z", "1m05s", "0", "1234", "56789",
    ]  # fmt: skip
    assert "…" not in "\n".join(lines)


def test_a_narrow_terminal_shortens_ids_and_drops_columns_never_statuses() -> None:
    lines = runs_table([run(1), run(2, "cancelled")], terminal=True, width=80)
    assert all(len(x) <= 80 for x in lines), lines
    assert short_id(RUN_ID[:-2] + "01") in lines[1]
    assert " succeeded " in lines[1] and " cancelled " in lines[2]
    assert "DURATION" in lines[0] and "STATUS" in lines[0]
    wide = runs_table([run(1)], terminal=True, width=200)
    assert RUN_ID[:-2] + "01" in wide[1] and "EVENTS" in wide[0]


def test_durations_and_ansi() -> None:
    assert [format_duration(x) for x in (None, 850, 12_340, 245_000, 7_380_000)] == [
        "", "850ms", "12.3s", "4m05s", "2h03m",
    ]  # fmt: skip
    assert strip_ansi("\x1b[1;32mok\x1b[0m \x1b]0;title\x07done\x1b[K") == "ok done"


def test_run_details_reads_as_text() -> None:
    summary = {
        "failure": {"stage": "run", "code": "bad", "message": "no"},
        "phases": [{"phase": "extracting", "status": "failed", "duration_ms": 1200}],
        "tables": {"table_count": 2, "row_count": 10},
        "validation": {"issues_total": 3, "issues_by_severity": {"error": 3}},
    }
    text = "\n".join(run_details({"run": run(1, "failed"), "summary": summary}, "http://x/r"))
    assert text.startswith(RUN_ID[:-2] + "01  failed\n")
    for part in (
        "failure        run/bad: no",
        "extracting",
        "1.2s",
        "2 tables, 10 rows",
        "3 (3 error)",
        "web            http://x/r",
    ):
        assert part in text, part


def test_runs_ls_overflowed_terminals_narrower_than_61_columns() -> None:
    """Regression: below 61 columns every line (the header too) was 61 wide: with every
    optional column gone, run, status, created and duration were still shown whole.
    README: on a terminal it fits the width, ids shortened first, statuses never cut."""
    runs = [
        run(1),
        run(2, "cancelled", configuration_id="c" * 128, exit_code=None),
        run(3, "queued", started_at=None, completed_at=None, exit_code=None, event_count=None),
    ]
    for width in range(16, 200):
        lines = runs_table(runs, terminal=True, width=width)
        assert [x for x in lines if len(x) > width] == [], width
        header = lines[0].split()
        assert header[0] == "RUN" and "STATUS" in header, (width, lines[0])
        for line, shown in zip(lines[1:], runs, strict=True):
            cells = line.split()  # no blank in a cell before STATUS's
            cell, status = cells[0], cells[header.index("STATUS")]
            assert status == shown["status"], (width, line)
            # the run still shows which it is: its id, shortened, or its end
            assert cell in (shown["id"], short_id(shown["id"])) or (
                cell.startswith("…") and shown["id"].endswith(cell[1:])
            ), (width, line)
    assert "CREATED" in runs_table(runs, terminal=True, width=60)[0]
    assert "DURATION" in runs_table(runs, terminal=True, width=40)[0]
