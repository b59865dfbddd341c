"""The demo job: a spreadsheet extraction that reports what it does as events.

Run by the demo configuration (``runevents.toml``) through the executor, which
passes ``RUNEVENTS_OPTIONS_FILE`` (options ``speed``, ``fail``, ``seed``; see
``runevents.demo``), ``RUNEVENTS_RUN_DIR`` (scratch space for its output) and
``RUNEVENTS_BUILD_DIR`` (the environment the build step prepared).

It prints ordinary lines (some with ANSI colour), warnings on stderr, and
structured events as one JSON object per line: ``run.phase.started`` /
``run.phase.completed`` around the phases discovering, extracting, validating
and writing; ``run.table.summary`` per table; ``run.validation.issue`` and a
``run.validation.summary``; and, when it fails, a ``run.error`` before exiting 1.
SIGTERM (a cancel) ends it at once with exit code 143. Standard library only.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

BOLD, DIM, RED, GREEN, YELLOW, CYAN, RESET = (
    "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[36m", "\x1b[0m",
)  # fmt: skip

#: the source files and their sheets (None: a CSV has no sheet)
SOURCES: list[tuple[str, list[str | None]]] = [
    ("sales_2024.xlsx", ["Orders", "Returns", "Customers"]),
    ("inventory.xlsx", ["Stock", "Warehouses"]),
    ("suppliers.csv", [None]),
]
COLUMNS = {
    "Orders": ["order_id", "customer_id", "order_date", "sku", "quantity", "amount", "currency"],
    "Returns": ["return_id", "order_id", "return_date", "reason", "amount"],
    "Customers": ["customer_id", "name", "country", "segment", "created"],
    "Stock": ["sku", "warehouse", "quantity", "updated"],
    "Warehouses": ["warehouse", "city", "capacity"],
    None: ["supplier_id", "name", "country", "lead_time_days", "rating", "contact"],
}
#: issue code -> (severity, message template, sample bad values)
ISSUES: dict[str, tuple[str, str, list[str]]] = {
    "missing_value": ("warning", "value is empty", [""]),
    "bad_date": ("error", "not a date: {value!r}", ["2024-13-01", "31/02/2024", "N/A"]),
    "duplicate_key": ("error", "duplicate key {value!r}", ["A-1042", "C-0007"]),
    "negative_amount": ("warning", "negative amount {value}", ["-12.50", "-0.01"]),
    "unknown_currency": ("info", "unknown currency code {value!r}", ["XYZ", "EUR "]),
}
#: share of runs that fail when the ``fail`` option is absent
FAILURE_RATE = 0.2
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}
#: share of the run's duration per phase
PHASE_SHARE = {"discovering": 0.1, "extracting": 0.55, "validating": 0.25, "writing": 0.1}
ROWS_PER_PROGRESS_LINE = 250


class Stopped(Exception):
    """SIGTERM arrived (the run was cancelled)."""


@dataclass
class Table:
    """One extracted table and the issues found in it."""

    source_file: str
    source_sheet: str | None
    table_index: int
    columns: list[str]
    row_count: int
    issues: list[dict[str, Any]] = field(default_factory=list)

    @property
    def table_id(self) -> str:
        return f"{self.source_file}#{self.source_sheet or 'csv'}"

    @property
    def label(self) -> str:
        return self.source_file + (f"[{self.source_sheet}]" if self.source_sheet else "")


def say(text: str = "") -> None:
    """A console line on stdout."""
    print(text, flush=True)


def warn(text: str) -> None:
    """A console line on stderr (the run's warnings)."""
    print(text, file=sys.stderr, flush=True)


def emit(kind: str, **payload: Any) -> None:
    """A structured event: one JSON object with a string ``type``, on stdout."""
    print(json.dumps({"type": kind, "payload": payload}), flush=True)


def validation_counts(issues: list[dict[str, Any]]) -> dict[str, Any]:
    """The validation block of the telemetry payloads (contract section 2.1)."""
    by_severity = Counter(issue["severity"] for issue in issues)
    by_code = Counter(issue["code"] for issue in issues)
    ranked = [s for s in by_severity if s in SEVERITY_RANK]
    return {
        "issues_total": len(issues),
        "issues_by_severity": dict(by_severity),
        "issues_by_code": dict(by_code),
        "max_severity": max(ranked, key=SEVERITY_RANK.__getitem__) if ranked else None,
    }


class Job:
    """The extraction, paced to last ``duration`` seconds."""

    def __init__(self, rng: random.Random, duration: float, fails: bool, out_dir: Path) -> None:
        self.rng = rng
        self.duration = duration
        self.fails = fails
        self.out_dir = out_dir
        self.tables: list[Table] = []

    def pause(self, seconds: float) -> None:
        time.sleep(max(seconds, 0.0))

    def phase(self, name: str, message: str) -> float:
        emit("run.phase.started", phase=name, message=message)
        say(f"{BOLD}{CYAN}==> {name}{RESET} {message}")
        return time.monotonic()

    def phase_done(self, name: str, started: float, status: str = "succeeded") -> None:
        duration_ms = int((time.monotonic() - started) * 1000)
        emit("run.phase.completed", phase=name, status=status, duration_ms=duration_ms)

    def run(self) -> int:
        self.discover()
        self.extract()
        if not self.validate():
            return 1
        self.write()
        total = sum(t.row_count for t in self.tables)
        say(f"{GREEN}{BOLD}Done:{RESET} {len(self.tables)} tables, {total:,} rows")
        return 0

    def discover(self) -> None:
        budget = self.duration * PHASE_SHARE["discovering"]
        started = self.phase("discovering", "scanning the input folder")
        self.pause(budget / 3)
        warn(f"{YELLOW}WARNING{RESET}: skipping ~$sales_2024.xlsx (an Excel lock file)")
        for name, sheets in SOURCES:
            self.pause(budget / (3 * len(SOURCES)))
            kind = "csv" if sheets == [None] else f"workbook, {len(sheets)} sheets"
            say(f"  found {name} {DIM}({kind}){RESET}")
            for index, sheet in enumerate(sheets):
                columns = COLUMNS[sheet]
                rows = self.rng.randint(60, 2400)
                self.tables.append(Table(name, sheet, index, columns, rows))
        say(f"{len(SOURCES)} source files, {len(self.tables)} tables")
        self.pause(budget / 3)
        self.phase_done("discovering", started)

    def extract(self) -> None:
        budget = self.duration * PHASE_SHARE["extracting"]
        steps = sum(t.row_count // ROWS_PER_PROGRESS_LINE + 1 for t in self.tables)
        started = self.phase("extracting", f"reading {len(self.tables)} tables")
        for table in self.tables:
            say(f"{CYAN}→{RESET} reading {BOLD}{table.label}{RESET}")
            for first in range(1, table.row_count + 1, ROWS_PER_PROGRESS_LINE):
                self.pause(budget / steps)
                last = min(first + ROWS_PER_PROGRESS_LINE - 1, table.row_count)
                say(f"  {DIM}rows {first:>5}-{last:<5}{RESET} {GREEN}✓{RESET}")
            table.issues = self.find_issues(table)
            empty = sum(1 for issue in table.issues if issue["code"] == "missing_value")
            if empty:
                warn(f"{YELLOW}WARNING{RESET}: {table.label}: {empty} empty cells")
            emit(
                "run.table.summary",
                table_id=table.table_id,
                source_file=table.source_file,
                source_sheet=table.source_sheet,
                table_index=table.table_index,
                row_count=table.row_count,
                column_count=len(table.columns),
                validation=validation_counts(table.issues),
            )
            say(f"  {GREEN}✓{RESET} {table.row_count:,} rows x {len(table.columns)} columns")
        self.phase_done("extracting", started)

    def find_issues(self, table: Table) -> list[dict[str, Any]]:
        issues = []
        for _ in range(self.rng.choice([0, 0, 1, 2, 3, 5])):
            code = self.rng.choice(sorted(ISSUES))
            severity, template, values = ISSUES[code]
            value = self.rng.choice(values)
            issues.append(
                {
                    "severity": severity,
                    "code": code,
                    "field": self.rng.choice(table.columns),
                    "row": self.rng.randint(1, table.row_count),
                    "message": template.format(value=value),
                    "table_id": table.table_id,
                }
            )
        return issues

    def validate(self) -> bool:
        budget = self.duration * PHASE_SHARE["validating"]
        issues = [issue for table in self.tables for issue in table.issues]
        started = self.phase("validating", f"checking {len(self.tables)} tables")
        fail_at = self.rng.randrange(len(self.tables)) if self.fails else -1
        for index, table in enumerate(self.tables):
            self.pause(budget / len(self.tables))
            if index == fail_at:
                self.fail(table, started)
                return False
            for issue in table.issues:
                emit("run.validation.issue", **issue)
                colour = RED if issue["severity"] == "error" else YELLOW
                say(
                    f"  {colour}{issue['severity']:>7}{RESET} {table.label} row {issue['row']}"
                    f" {issue['field']}: {issue['message']}"
                )
            if not table.issues:
                say(f"  {GREEN}✓{RESET} {table.label}: no issues")
        emit("run.validation.summary", **validation_counts(issues))
        self.phase_done("validating", started)
        return True

    def fail(self, table: Table, started: float) -> None:
        column = self.rng.choice(table.columns)
        row = self.rng.randint(1, table.row_count)
        message = f"{table.label}: column {column!r} expected a number, found 'twelve' (row {row})"
        try:
            parse_number("twelve", message)
        except ValueError:
            warn(traceback.format_exc().rstrip())
        emit("run.error", stage="run", code="schema_mismatch", message=message, phase="validating")
        self.phase_done("validating", started, status="failed")

    def write(self) -> None:
        budget = self.duration * PHASE_SHARE["writing"]
        started = self.phase("writing", f"writing normalized tables to {self.out_dir}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for table in self.tables:
            self.pause(budget / len(self.tables))
            path = self.out_dir / f"{table.table_id.replace('#', '__')}.csv"
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(table.columns)
                for row in range(1, min(table.row_count, 20) + 1):
                    writer.writerow([f"{column}-{row}" for column in table.columns])
            say(f"  wrote {path.name} {DIM}({table.row_count:,} rows){RESET}")
        self.phase_done("writing", started)


def parse_number(text: str, context: str) -> float:
    """A cell's number; ValueError naming ``context`` when it is not one."""
    try:
        return float(text)
    except ValueError:
        raise ValueError(context) from None


def load_options() -> dict[str, Any]:
    """The run options (an empty object when run by hand)."""
    path = os.environ.get("RUNEVENTS_OPTIONS_FILE")
    if not path:
        return {}
    options = json.loads(Path(path).read_text(encoding="utf-8"))
    return options if isinstance(options, dict) else {}


def check_environment() -> None:
    """Report the environment the build step prepared (warn if there is none)."""
    build_dir = os.environ.get("RUNEVENTS_BUILD_DIR")
    lock = Path(build_dir) / "requirements.lock" if build_dir else None
    if lock is None or not lock.is_file():
        warn(f"{YELLOW}WARNING{RESET}: no prepared environment found; continuing without it")
        return
    data = json.loads(lock.read_text(encoding="utf-8"))
    say(f"environment: Python {data['python']}, {len(data['modules'])} modules locked")


@dataclass(frozen=True)
class Plan:
    """What this run will do, decided up front from the options."""

    seed: str
    #: seconds the run lasts (20-40 s at speed 1)
    duration: float
    fails: bool


def plan(options: dict[str, Any], run_id: str | None) -> tuple[Plan, random.Random]:
    """The run's plan and the random generator driving its data, from options and run id."""
    speed = options.get("speed", 1)
    speed = float(speed) if isinstance(speed, int | float) and speed > 0 else 1.0
    seed = str(options.get("seed", run_id or random.random()))
    rng = random.Random(seed)
    fail = options.get("fail")
    fails = fail if isinstance(fail, bool) else rng.random() < FAILURE_RATE
    return Plan(seed=seed, duration=rng.uniform(20, 40) / speed, fails=fails), rng


def main() -> int:
    """Run the extraction with the options the executor passed."""
    the_plan, rng = plan(load_options(), os.environ.get("RUNEVENTS_RUN_ID"))
    run_dir = os.environ.get("RUNEVENTS_RUN_DIR") or tempfile.mkdtemp(prefix="runevents-demo-")
    job = Job(rng, the_plan.duration, the_plan.fails, Path(run_dir) / "output")

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped

    signal.signal(signal.SIGTERM, stop)
    say(
        f"{BOLD}demo extraction{RESET}"
        f" {DIM}(seed {the_plan.seed}, about {the_plan.duration:.0f}s){RESET}"
    )
    check_environment()
    try:
        return job.run()
    except Stopped:
        warn(f"{YELLOW}received SIGTERM: stopping{RESET}")
        return 143


if __name__ == "__main__":
    raise SystemExit(main())
