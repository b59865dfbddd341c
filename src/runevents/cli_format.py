"""How the client commands print runs (issue 19): for people on a terminal, for pipes.

* Not a terminal (a pipe, ``grep``, a file): every value whole (full run ids,
  RFC 3339 times with their zone), one run per line, columns padded with
  spaces; nothing is ever cut. An empty cell (no exit code yet) is ``-``, so
  every line has the same fields for ``awk``.
* A terminal: fitted to its width, every line (the header too) at most that
  many columns. Run ids are shortened first (``run_01JD3…T6V8W``), then the
  least useful columns go (``LAYOUTS``), and below the run and its status alone
  the ids keep only their end (``…Q0R2S4T6V8W``); a status is never cut. Times
  are local, with the zone.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

#: CSI / OSC / two-byte escape sequences (colours, cursor moves, titles)
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
GAP = "  "
#: an empty cell: a blank would shift the fields ``awk`` splits on whitespace
EMPTY = "-"
#: every column of `runs ls`, in order (a pipe always gets them all)
COLUMNS = ("run", "configuration", "status", "created", "duration", "exit", "events", "rows")
#: the columns a terminal shows when all do not fit: the first of these that fits. The
#: least useful go first; then, of the two times, the one that still fits (created, the
#: wider, preferred); the run and its status always stay
LAYOUTS = (
    COLUMNS,
    ("run", "configuration", "status", "created", "duration", "exit", "rows"),
    ("run", "configuration", "status", "created", "duration", "exit"),
    ("run", "configuration", "status", "created", "duration"),
    ("run", "status", "created", "duration"),
    ("run", "status", "created"),
    ("run", "status", "duration"),
    ("run", "status"),
)


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def local_time(value: object) -> str:
    """``2026-12-06 19:20:43 CET``: local time with its zone ("" when unknown)."""
    moment = parse_time(value)
    if moment is None:
        return ""
    local = moment.astimezone()
    zone = local.tzname() or local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {zone}"


def duration_ms(run: dict[str, Any], now: datetime | None = None) -> int | None:
    """completed - started, or now - started while the run goes on."""
    start = parse_time(run.get("started_at"))
    if start is None:
        return None
    end = parse_time(run.get("completed_at"))
    if end is None:
        end = now or datetime.now(start.tzinfo)
    return max(0, int((end - start).total_seconds() * 1000))


def format_duration(ms: int | None) -> str:
    """``850ms``, ``12.3s``, ``4m05s``, ``2h03m``."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    total = int(seconds)
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def short_id(run_id: str) -> str:
    """``run_01JD3Z8K2M4N6P8Q0R2S4T6V8W`` -> ``run_01JD3…T6V8W`` (still unique in practice)."""
    return run_id if len(run_id) <= 16 else f"{run_id[:9]}…{run_id[-5:]}"


def tail_id(run_id: str, room: int) -> str:
    """``run_id`` in ``room`` columns: ``…`` and its end (a ULID's random part tells runs apart)."""
    return run_id if len(run_id) <= room else "…" + run_id[len(run_id) - room + 1 :]


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def runs_table(runs: list[dict[str, Any]], *, terminal: bool, width: int = 80) -> list[str]:
    """The ``runs ls`` lines (a header first), ``EMPTY`` in every empty cell."""
    columns = list(COLUMNS)
    rows = []
    for run in runs:
        rows.append(
            {
                "run": run["id"],
                "configuration": run["configuration_id"],
                "status": run["status"],
                "created": local_time(run["created_at"]) if terminal else run["created_at"],
                "duration": format_duration(duration_ms(run)),
                "exit": _cell(run.get("exit_code")),
                "events": _cell(run.get("event_count")),
                "rows": _cell(run.get("row_count")),
            }
        )
        rows[-1] = {name: value or EMPTY for name, value in rows[-1].items()}

    def widths(cols: list[str]) -> dict[str, int]:
        return {c: max([len(c), *(len(r[c]) for r in rows)]) for c in cols}

    def total(cols: list[str]) -> int:
        w = widths(cols)
        return sum(w.values()) + len(GAP) * (len(cols) - 1)

    if terminal:
        if total(columns) > width:
            for r in rows:
                r["run"] = short_id(r["run"])
        # the run and its status alone are the last layout, used even when they do not fit
        columns = next((list(c) for c in LAYOUTS if total(list(c)) <= width), list(LAYOUTS[-1]))
        over = total(columns) - width
        if over > 0:
            # narrower still: the ids give up what is missing (never below the header's
            # width); a status is never cut
            room = max(len("run"), widths(["run"])["run"] - over)
            for r, run in zip(rows, runs, strict=True):
                r["run"] = tail_id(run["id"], room)
    w = widths(columns)
    out = [GAP.join(c.upper().ljust(w[c]) for c in columns).rstrip()]
    for r in rows:
        out.append(GAP.join(r[c].ljust(w[c]) for c in columns).rstrip())
    return out


def run_details(answer: dict[str, Any], web_url: str) -> list[str]:
    """``runs show``: the run as a person reads it."""
    run = answer["run"]
    summary = answer.get("summary") or {}
    lines = [f"{run['id']}  {run['status']}"]

    def field(name: str, value: object) -> None:
        if value not in (None, ""):
            lines.append(f"  {name:<14} {value}")

    field("workspace", run["workspace_id"])
    field(
        "configuration", run["configuration_id"] + ("  (external)" if run.get("external") else "")
    )
    field("created", local_time(run.get("created_at")))
    field("started", local_time(run.get("started_at")))
    field("completed", local_time(run.get("completed_at")))
    field("duration", format_duration(duration_ms(run)))
    field("exit code", run.get("exit_code"))
    field("events", run.get("event_count"))
    field("log", run.get("log_state"))
    failure = summary.get("failure") or run.get("failure")
    if failure:
        field("failure", f"{failure.get('stage')}/{failure.get('code')}: {failure.get('message')}")
    tables = summary.get("tables") or {}
    if tables.get("table_count"):
        field("tables", f"{tables['table_count']} tables, {_cell(tables.get('row_count'))} rows")
    validation = summary.get("validation") or {}
    if validation.get("issues_total"):
        by = ", ".join(f"{n} {s}" for s, n in (validation.get("issues_by_severity") or {}).items())
        field("issues", f"{validation['issues_total']} ({by})")
    phases = summary.get("phases") or []
    if phases:
        lines.append("  phases")
        for p in phases:
            lines.append(
                f"    {p.get('phase')!s:<20} {_cell(p.get('status')):<10} "
                f"{format_duration(p.get('duration_ms'))}".rstrip()
            )
    field("web", web_url)
    return lines
