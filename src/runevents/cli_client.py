"""Client commands: talk to a running server over HTTP.

``runevents run WS CFG``, ``tail RUN_ID``, ``runs ls``, ``runs show RUN_ID``,
``events RUN_ID``, ``cancel RUN_ID``. The server URL and token come from
``--server``/``--token`` or ``RUNEVENTS_SERVER``/``RUNEVENTS_TOKEN``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runevents.cli import app, console
from runevents.client import AsyncClient, ClientError, Event, Run, RunPage
from runevents.settings import ClientSettings

runs_app = typer.Typer(help="List and inspect runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

Server = Annotated[str | None, typer.Option("--server", help="Server URL [env: RUNEVENTS_SERVER]")]
Token = Annotated[str | None, typer.Option("--token", help="Bearer token [env: RUNEVENTS_TOKEN]")]
T = TypeVar("T")

#: exit code of `runevents run` for a cancelled run (like a shell's SIGINT)
EXIT_CANCELLED = 130


def _client(server: str | None, token: str | None) -> AsyncClient:
    settings = ClientSettings()
    return AsyncClient(server or settings.server, token or settings.token)


def _call(server: str | None, token: str | None, work: Callable[[AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with _client(server, token) as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except ClientError as exc:
        # the message is text, not markup ("[[token]]"), and is never wrapped mid-path
        console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from exc
    except KeyboardInterrupt:
        raise typer.Exit(code=EXIT_CANCELLED) from None
    except BrokenPipeError:
        # the reader of our stdout went away (`runevents events ... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(code=0) from None


def _print_event(event: Event) -> None:
    """Console lines go to stdout/stderr as-is (ANSI kept); other events as dim notes."""
    payload = event.get("payload") or {}
    if event.get("type") == "console.line":
        out = sys.stderr if payload.get("stream") == "stderr" else sys.stdout
        print(payload.get("message", ""), file=out, flush=True)
    elif event.get("type") in {"run.phase.started", "build.phase.started"}:
        phase = escape(str(payload.get("phase", "")))
        console.print(f"[dim]── {event['type']}: {phase}[/]", highlight=False)
    elif event.get("type") == "run.completed":
        # a producer's own run.error is the summary's failure when the payload has none
        failure = payload.get("failure") or (payload.get("summary") or {}).get("failure") or {}
        reason = f" ({failure.get('code')}: {failure.get('message')})" if failure else ""
        console.print(
            f"[bold]run.completed[/]: {payload.get('status')}{escape(reason)}",
            highlight=False,
            soft_wrap=True,
        )


def _status_exit_code(status: object, exit_code: object) -> int:
    """0 succeeded, 130 cancelled, else the run's exit code (1 when it has none)."""
    if status == "succeeded":
        return 0
    if status == "cancelled":
        return EXIT_CANCELLED
    return exit_code if isinstance(exit_code, int) and 0 < exit_code < 256 else 1


def _exit_code(event: Event | None) -> int:
    """The exit code for a run that ended with ``event`` (its run.completed)."""
    if event is None:
        return 1
    payload = event.get("payload") or {}
    execution = payload.get("execution") or {}
    return _status_exit_code(payload.get("status"), execution.get("exit_code"))


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


@app.command("run")
def run_cmd(
    workspace_id: str,
    configuration_id: str,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Run option KEY=VALUE (repeatable)")
    ] = None,
    server: Server = None,
    token: Token = None,
) -> None:
    """Start a run, follow its console live, and exit with the run's exit code."""
    options = _parse_options(option or [])

    async def work(client: AsyncClient) -> int:
        run = await client.create_run(workspace_id, configuration_id, options=options)
        console.print(f"[bold]{run.id}[/] queued ({workspace_id}/{configuration_id})")
        last = None
        async for event in client.follow(run):
            _print_event(event)
            last = event
        return _exit_code(last)

    raise typer.Exit(code=_call(server, token, work))


@app.command("tail")
def tail_cmd(
    run_id: str,
    after: Annotated[int, typer.Option("--after", help="Start after this sequence")] = 0,
    server: Server = None,
    token: Token = None,
) -> None:
    """Follow a run's events live (replaying after --after), resuming after drops."""

    async def work(client: AsyncClient) -> int:
        run = await client.get_run(run_id)
        last = None
        async for event in client.follow(run, after):
            _print_event(event)
            last = event
        if last is not None and last.get("type") == "run.completed":
            return _exit_code(last)
        # --after was already past run.completed: the run's own outcome
        run = await client.get_run(run_id)
        return _status_exit_code(run.status, run.exit_code)

    raise typer.Exit(code=_call(server, token, work))


@app.command("events")
def events_cmd(
    run_id: str,
    fmt: Annotated[str, typer.Option("--format", help="ndjson | text")] = "ndjson",
    after: Annotated[int, typer.Option("--after", help="Start after this sequence")] = 0,
    server: Server = None,
    token: Token = None,
) -> None:
    """Download a run's log (NDJSON as stored, or the console text)."""
    if fmt not in {"ndjson", "text"}:
        raise typer.BadParameter("use ndjson or text", param_hint="--format")

    async def work(client: AsyncClient) -> None:
        run = await client.get_run(run_id)
        pending = b""
        async for chunk in client.download(run, after):
            if fmt == "ndjson":
                sys.stdout.buffer.write(chunk)
                continue
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                event = json.loads(line)
                if event.get("type") == "console.line":
                    print(event["payload"].get("message", ""))
        sys.stdout.flush()

    _call(server, token, work)


@app.command("cancel")
def cancel_cmd(run_id: str, server: Server = None, token: Token = None) -> None:
    """Cancel a run."""

    async def work(client: AsyncClient) -> Run:
        return await client.cancel(await client.get_run(run_id))

    run = _call(server, token, work)
    console.print(f"[bold]{run_id}[/]: cancel requested (status {run.status})")


@runs_app.command("ls")
def runs_ls(
    workspace: Annotated[str, typer.Option("--workspace", "-w", help="Workspace")] = "demo",
    status: Annotated[list[str] | None, typer.Option("--status", help="Status filter")] = None,
    configuration: Annotated[str | None, typer.Option("--configuration", "-c")] = None,
    limit: Annotated[int, typer.Option(help="How many")] = 20,
    server: Server = None,
    token: Token = None,
) -> None:
    """List runs, newest first."""

    async def work(client: AsyncClient) -> RunPage:
        return await client.list_runs(
            workspace, status=status or None, configuration_id=configuration, limit=limit
        )

    page = _call(server, token, work)
    table = Table()
    # run ids are copied from here: never wrap or cut them, whatever the width
    table.add_column("run", no_wrap=True, min_width=30)
    for name in ("configuration", "status", "created", "exit", "events", "rows"):
        table.add_column(name)
    for run in page.items:
        rows = run.raw.get("row_count")
        table.add_row(
            run.id,
            run.configuration_id,
            run.status,
            (run.created_at or "")[:19],
            "" if run.exit_code is None else str(run.exit_code),
            str(run.event_count),
            "" if rows is None else str(rows),
        )
    Console(highlight=False).print(table)
    if page.next_cursor:
        console.print(f"[dim]more runs: raise --limit (showing {len(page.items)})[/]")


@runs_app.command("show")
def runs_show(run_id: str, server: Server = None, token: Token = None) -> None:
    """A run's metadata and summary, as JSON."""

    async def work(client: AsyncClient) -> Run:
        return await client.get_run(run_id)

    run = _call(server, token, work)
    typer.echo(json.dumps({"run": run.raw, "summary": run.summary}, indent=2))
