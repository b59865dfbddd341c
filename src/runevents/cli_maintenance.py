"""``runevents compact | retention | reindex``: maintenance from the command line.

Same ``--data-dir`` / ``--database-url`` / ``--storage-url`` options as
``serve``; safe while a server runs on the same data. Long work shows a Rich
progress bar and ends with a summary of what changed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from runevents.cli import (
    DatabaseUrl,
    DataDir,
    StorageUrl,
    _bad_setting,
    _fail,
    app,
    build_settings,
    console,
    usage_error,
)
from runevents.exceptions import RuneventsError
from runevents.settings import Settings, parse_duration

if TYPE_CHECKING:
    # imported lazily at run time: every CLI command (also the HTTP client ones)
    # loads this module, and the App pulls in SQLAlchemy and Alembic
    from runevents.app import App
    from runevents.maintenance import Report
    from runevents.models import Run

OlderThan = Annotated[
    str, typer.Option("--older-than", help="Age since completed_at, like 0s, 36h, 7d")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="List what would change; change nothing")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the report as JSON")]


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"


def _run_pass(
    settings_kw: dict[str, object],
    label: str,
    work: Callable[[App, Callable[[Run | None, int | None], None]], Awaitable[Report]],
    as_json: bool,
) -> None:
    try:
        settings = build_settings(**settings_kw, maintenance_interval_seconds=0)
    except ValidationError as exc:
        raise _bad_setting(exc) from exc
    _check_data_dir(settings)

    async def main() -> Report:
        from runevents.app import App

        app_ = await App.open(settings, worker=False)
        try:
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=as_json,
            ) as bar:
                task = bar.add_task(label, total=None)

                def progress(run: Run | None, total: int | None) -> None:
                    if total is not None:
                        bar.update(task, total=total)
                    else:
                        bar.advance(task)

                return await work(app_, progress)
        finally:
            await app_.close()

    try:
        report = asyncio.run(main())
    except RuneventsError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(_summary(report))
        if report.recovered:
            console.print(
                f"finished {len(report.recovered)} compaction(s) an interrupted pass left"
            )
        if report.skipped:
            console.print(f"skipped {report.skipped} run(s) another process was working on")
        if report.dry_run:
            # stdout, one per line: the list is the answer (pipe it, count it)
            for run_id in report.run_ids:
                typer.echo(run_id)
    for error in report.errors:
        console.print(f"[red]error:[/] {error}")
    if report.errors:
        raise typer.Exit(code=1)


def _summary(report: Report) -> str:
    """The last line of a pass: what it changed, or with --dry-run what it would change."""
    head = f"[bold]{report.action}[/]: "
    if not report.dry_run:
        return (
            f"{head}changed {report.runs} run(s); bytes {_human(report.bytes_before)} -> "
            f"{_human(report.bytes_after)} (saved {_human(report.bytes_saved)})"
        )
    if report.action == "compact":
        # a dry run compresses nothing, so the compressed size (and the saving) is unknown:
        # what it would compact is the plain logs' bytes
        return (
            f"{head}would change {report.runs} run(s); {_human(report.bytes_before)} of plain "
            "logs to compress (the saving is known only by compacting)"
        )
    return (
        f"{head}would change {report.runs} run(s); bytes {_human(report.bytes_before)} -> "
        f"{_human(report.bytes_after)} (would save {_human(report.bytes_saved)})"
    )


def _check_data_dir(settings: Settings) -> None:
    """Refuse a data dir that does not exist when the data is in it (the default database or
    log store): opening the App would create a fresh, empty one there, and the pass would
    report success on nothing (a typo in --data-dir, or the wrong working directory).

    With both --database-url and --storage-url given the data dir only holds this
    process's scratch files (contract 10: it may be empty or new), so it may be missing.
    """
    if settings.data_dir.is_dir():
        return
    if settings.database_url and settings.storage_url:
        return
    where = settings.data_dir.resolve()
    raise usage_error(
        f"data directory {where} does not exist: pass the --data-dir of the server's data "
        "(or RUNEVENTS_DATA_DIR), or --database-url and --storage-url"
    )


def _duration(text: str) -> timedelta:
    try:
        age = parse_duration(text)
        # the passes count from now: an age past year 1 (or 9999) overflows there
        datetime.now(UTC) - age
        datetime.now(UTC) + age
    except RuneventsError as exc:
        raise _fail(exc) from exc
    except OverflowError:
        raise usage_error(f"invalid duration {text!r}: too long") from None
    return age


@app.command("compact")
def compact_cmd(
    older_than: OlderThan,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Compress the logs of runs that ended more than --older-than ago."""
    from runevents.maintenance import compact

    age = _duration(older_than)
    _run_pass(
        {"data_dir": data_dir, "database_url": database_url, "storage_url": storage_url},
        "compacting",
        lambda a, p: compact(a.manager, age, dry_run=dry_run, progress=p),
        as_json,
    )


@app.command("retention")
def retention_cmd(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Delete the bodies of runs that ended longer ago than this (0s, 36h, 7d)",
        ),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    keep_per_configuration: Annotated[
        int | None,
        typer.Option(min=0, help="Keep the bodies of the N newest runs per configuration"),
    ] = None,
    max_bytes: Annotated[
        int | None,
        typer.Option(min=0, help="Delete the oldest bodies until the rest take at most this"),
    ] = None,
    delete_delay: Annotated[
        str | None,
        typer.Option(
            "--delete-delay",
            help="Delete expired bodies this long after expiring them, so reads that "
            "started before finish (0s: now; default RUNEVENTS_DELETE_DELAY_SECONDS, "
            "60 s). A later pass or a server's repair loop deletes them",
        ),
    ] = None,
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Delete the log bodies of ended runs by age, count or size (rows and summaries stay)."""
    from runevents.maintenance import retention

    if older_than is None and keep_per_configuration is None and max_bytes is None:
        console.print(
            "[bold red]error:[/] give --older-than, --keep-per-configuration or --max-bytes"
        )
        raise typer.Exit(code=2)
    age = None if older_than is None else _duration(older_than)
    delay = None if delete_delay is None else _duration(delete_delay).total_seconds()
    _run_pass(
        {
            "data_dir": data_dir,
            "database_url": database_url,
            "storage_url": storage_url,
            "delete_delay_seconds": delay,
        },
        "retention",
        lambda a, p: retention(
            a.manager,
            age,
            keep_per_configuration=keep_per_configuration,
            max_bytes=max_bytes,
            dry_run=dry_run,
            progress=p,
        ),
        as_json,
    )


@app.command("reindex")
def reindex_cmd(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    as_json: AsJson = False,
) -> None:
    """Rebuild every run row and summary from the logs alone."""
    from runevents.maintenance import reindex

    _run_pass(
        {"data_dir": data_dir, "database_url": database_url, "storage_url": storage_url},
        "reindexing",
        lambda a, p: reindex(a.manager, progress=p),
        as_json,
    )
