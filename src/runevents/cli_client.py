"""Client commands: talk to a running server over HTTP.

``runevents run WS CFG``, ``tail RUN_ID``, ``runs ls``, ``runs show RUN_ID``,
``events RUN_ID``, ``cancel RUN_ID``. The server URL and token come from
``--server``/``--token`` or ``RUNEVENTS_SERVER``/``RUNEVENTS_TOKEN``.

Output follows where it goes (issue 19): console lines keep their ANSI colours
on a terminal and lose them in a pipe (``--color`` overrides); ``runs ls``
prints whole values to a pipe and fits a terminal (``cli_format``); ``--json``
gives scripts the API's JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, NoReturn, TypeVar

import typer
from rich.markup import escape

from runevents.cli import PassThrough, app, console, stdout_closed, usage_error
from runevents.cli_format import run_details, runs_table
from runevents.cli_output import redact, terminal_safe
from runevents.client import AsyncClient, ClientError, Event
from runevents.exceptions import InvalidInput
from runevents.ids import check_name, check_run_id
from runevents.settings import ClientSettings

runs_app = typer.Typer(help="List and inspect runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

# "\\[": Rich markup would take "[env: ...]" for a tag and drop it from --help
Server = Annotated[
    str | None, typer.Option("--server", help="Server URL \\[env: RUNEVENTS_SERVER]")
]
Token = Annotated[str | None, typer.Option("--token", help="Bearer token \\[env: RUNEVENTS_TOKEN]")]
Color = Annotated[
    Literal["auto", "always", "never"],
    typer.Option("--color", help="ANSI colours of the console lines: auto = only on a terminal"),
]
T = TypeVar("T")

#: exit code of `runevents run` for a cancelled run (like a shell's SIGINT)
EXIT_CANCELLED = 130
#: after Ctrl-C, the command exits within this many seconds whatever it was doing
FORCE_EXIT_SECONDS = 2.0


class Client(AsyncClient):
    """The public client, plus the API's JSON as the CLI prints it (``runs show --json``)."""

    async def lookup(self, run_id: str) -> dict[str, Any]:
        run = await self.get_run(run_id)
        return {"run": run.raw, "summary": run.summary}

    async def create_json(
        self, workspace_id: str, configuration_id: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        run = await self.create_run(workspace_id, configuration_id, options=options)
        return {"run": run.raw, "summary": run.summary}

    async def cancel_json(self, run: dict[str, Any]) -> dict[str, Any]:
        return {"run": (await self.cancel(run)).raw}

    async def list_json(self, workspace_id: str, params: dict[str, Any]) -> dict[str, Any]:
        page = await self.list_runs(
            workspace_id,
            status=params.get("status") or None,
            configuration_id=params.get("configuration_id"),
            limit=int(params.get("limit", 50)),
        )
        return {"items": [r.raw for r in page.items], "next_cursor": page.next_cursor}


def _client(server: str | None, token: str | None) -> Client:
    settings = ClientSettings()
    return Client(server or settings.server, token or settings.token)


def _server_url(server: str | None) -> str:
    return (server or ClientSettings().server).rstrip("/")


def web_url(server: str | None, run: dict[str, Any]) -> str:
    """The run's page in the web UI (contract section 9), without the URL's credentials."""
    url = _server_url(server)
    return redact(f"{url}/workspaces/{run['workspace_id']}/runs/{run['id']}", url)


def checked_name(value: str, what: str) -> str:
    """``value`` if it is a valid workspace/configuration id (contract 1), else a clean exit 2.

    Checked before any request: a path-like id (``..``, ``../../../metrics?``) would
    otherwise reach another URL of the server.
    """
    try:
        return check_name(value, what)
    except InvalidInput as exc:
        raise usage_error(f"{terminal_safe(repr(value), keep_sgr=False)}: {exc.message}") from None


def checked_run_id(value: str) -> str:
    """``value`` if it is a run id (``run_`` + ULID), else a clean exit 2 before any request."""
    try:
        return check_run_id(value)
    except InvalidInput as exc:
        raise usage_error(f"{terminal_safe(repr(value), keep_sgr=False)}: {exc.message}") from None


def _retrying(attempt: int, reason: str) -> None:
    shown = escape(terminal_safe(redact(reason), keep_sgr=False))
    console.print(
        f"[yellow]reconnecting…[/] the event stream was lost ({shown}); attempt {attempt}",
        highlight=False,
        soft_wrap=True,
    )


def _call(
    server: str | None,
    token: str | None,
    work: Callable[[Client], Awaitable[T]],
    interrupted: Callable[[], None] | None = None,
) -> T:
    stopped: list[bool] = []

    def leave() -> NoReturn:
        # the stream did not let go in time: say what happened and exit at once (nothing
        # local to clean up; the run itself lives on the server)
        if interrupted is not None:
            interrupted()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_CANCELLED)

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_interrupt() -> None:
            # Ctrl-C cancels the work; a cancel that something swallows (a stream being
            # closed, a reconnect in flight) must not keep the command running: a second
            # Ctrl-C, or FORCE_EXIT_SECONDS without an exit, leaves at once
            if stopped or task is None:
                leave()
            stopped.append(True)
            task.cancel()
            loop.call_later(FORCE_EXIT_SECONDS, leave)

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
        client = _client(server, token)
        async with client:
            return await work(client)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if not stopped:
            raise
        if interrupted is not None:
            interrupted()
        raise typer.Exit(code=EXIT_CANCELLED) from None
    except ClientError as exc:
        # the message quotes the server URL (no password in it) and the server's own
        # text (no control sequences from it)
        url = server or ClientSettings().server
        raise usage_error(terminal_safe(redact(exc.message, url), keep_sgr=False)) from exc
    except KeyboardInterrupt:
        if interrupted is not None:
            interrupted()
        raise typer.Exit(code=EXIT_CANCELLED) from None
    except BrokenPipeError:
        # the reader of our stdout went away (`runevents events ... | head`): stop quietly
        raise stdout_closed() from None


def _wants_color(color: str) -> bool:
    """ANSI codes only where a terminal renders them (or when asked)."""
    if color != "auto":
        return color == "always"
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _print_event(event: Event, color: bool = True) -> None:
    """Console lines go to stdout/stderr (colours kept when ``color``); other events as dim notes.

    Everything shown is the producer's text: only SGR colours may reach the terminal
    (``cli_output.terminal_safe``), never a clipboard write, a title or a screen clear.
    """
    payload = event.get("payload") or {}
    if event.get("type") == "console.line":
        out = sys.stderr if payload.get("stream") == "stderr" else sys.stdout
        message = str(payload.get("message", ""))
        print(terminal_safe(message, keep_sgr=color), file=out, flush=True)
    elif event.get("type") in {"run.phase.started", "build.phase.started"}:
        phase = escape(terminal_safe(str(payload.get("phase", "")), keep_sgr=False))
        console.print(f"[dim]── {event['type']}: {phase}[/]", highlight=False)
    elif event.get("type") == "run.completed":
        # a producer's own run.error is the summary's failure when the payload has none
        failure = payload.get("failure") or (payload.get("summary") or {}).get("failure") or {}
        reason = f" ({failure.get('code')}: {failure.get('message')})" if failure else ""
        status = terminal_safe(f"{payload.get('status')}{reason}", keep_sgr=False)
        console.print(
            f"[bold]run.completed[/]: {escape(status)}",
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
            continue
        try:
            # Python reads NaN, Infinity and 1e999 as floats that JSON cannot carry
            json.dumps(options[key], allow_nan=False)
        except ValueError:
            raise usage_error(
                f"--option {pair}: {value} is not a number JSON can carry; "
                f"for the text, quote it: -o '{key}=\"{value}\"'"
            ) from None
    return options


@app.command("run", cls=PassThrough)
def run_cmd(
    workspace_id: str,
    configuration_id: str,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Run option KEY=VALUE (repeatable)")
    ] = None,
    server: Server = None,
    token: Token = None,
    color: Color = "auto",
) -> None:
    """Start a run, follow its console live, and exit with the run's exit code.

    Ctrl-C stops following; the run goes on on the server (tail or cancel it).
    A failure of the command itself exits 125.
    """
    checked_name(workspace_id, "workspace id")
    checked_name(configuration_id, "configuration id")
    options = _parse_options(option or [])
    colored = _wants_color(color)
    started: dict[str, Any] = {}

    async def work(client: Client) -> int:
        created = await client.create_json(workspace_id, configuration_id, options)
        run = created["run"]
        started.update(run)
        console.print(f"[bold]{run['id']}[/] queued ({workspace_id}/{configuration_id})")
        console.print(f"  web: {web_url(server, run)}", highlight=False, soft_wrap=True)
        last = None
        async for event in client.follow(run, on_retry=_retrying):
            _print_event(event, colored)
            last = event
        return _exit_code(last)

    def interrupted() -> None:
        if not started:
            return
        run_id = started["id"]
        flag = f" --server {redact(_server_url(server))}" if server else ""
        console.print(
            f"\n[bold]Stopped following {run_id}[/]; the run goes on on the server.\n"
            f"  follow it:  runevents tail {run_id}{flag}\n"
            f"  cancel it:  runevents cancel {run_id}{flag}\n"
            f"  web:        {web_url(server, started)}",
            highlight=False,
            soft_wrap=True,
        )

    raise typer.Exit(code=_call(server, token, work, interrupted))


@app.command("tail", cls=PassThrough)
def tail_cmd(
    run_id: str,
    after: Annotated[int, typer.Option("--after", help="Start after this sequence")] = 0,
    server: Server = None,
    token: Token = None,
    color: Color = "auto",
) -> None:
    """Follow a run's events live (replaying after --after), resuming after drops.

    Exits with the run's exit code; a failure of the command itself exits 125.
    """
    checked_run_id(run_id)
    colored = _wants_color(color)

    async def work(client: Client) -> int:
        run = (await client.lookup(run_id))["run"]
        last = None
        async for event in client.follow(run, after, on_retry=_retrying):
            _print_event(event, colored)
            last = event
        if last is not None and last.get("type") == "run.completed":
            return _exit_code(last)
        # --after was already past run.completed: the run's own outcome
        run = (await client.lookup(run_id))["run"]
        return _status_exit_code(run["status"], run["exit_code"])

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
    checked_run_id(run_id)
    # the text as stored into a pipe or file; on a terminal, nothing but its colours
    # may drive the terminal (as for tail)
    terminal = sys.stdout.isatty()

    async def work(client: Client) -> None:
        run = (await client.lookup(run_id))["run"]
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
                    message = str(event["payload"].get("message", ""))
                    print(terminal_safe(message, keep_sgr=True) if terminal else message)
        sys.stdout.flush()

    _call(server, token, work)


@app.command("cancel")
def cancel_cmd(run_id: str, server: Server = None, token: Token = None) -> None:
    """Cancel a run."""
    checked_run_id(run_id)

    async def work(client: Client) -> dict[str, Any]:
        run = (await client.lookup(run_id))["run"]
        return await client.cancel_json(run)

    answer = _call(server, token, work)
    run = answer.get("run", answer)
    console.print(f"[bold]{run_id}[/]: cancel requested (status {run.get('status')})")


@runs_app.command("ls")
def runs_ls(
    workspace: Annotated[str, typer.Option("--workspace", "-w", help="Workspace")] = "demo",
    status: Annotated[list[str] | None, typer.Option("--status", help="Status filter")] = None,
    configuration: Annotated[str | None, typer.Option("--configuration", "-c")] = None,
    limit: Annotated[int, typer.Option(help="How many")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON, for scripts")] = False,
    server: Server = None,
    token: Token = None,
) -> None:
    """List runs, newest first (whole values in a pipe; fitted to a terminal)."""
    checked_name(workspace, "workspace id")
    if configuration is not None:
        checked_name(configuration, "configuration id")
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if configuration:
        params["configuration_id"] = configuration

    page = _call(server, token, lambda c: c.list_json(workspace, params))
    if as_json:
        typer.echo(json.dumps(page, indent=2))
        return
    terminal = sys.stdout.isatty()
    width = shutil.get_terminal_size((80, 24)).columns
    header, *lines = runs_table(page["items"], terminal=terminal, width=width)
    # README: in a pipe, one run per line -- every stdout line is a run, so the column
    # names go to stderr there, for the person watching
    typer.echo(header, err=not terminal)
    for text in lines:
        typer.echo(text)
    if page.get("next_cursor"):
        console.print(f"[dim]more runs: raise --limit (showing {len(page['items'])})[/]")


@runs_app.command("show")
def runs_show(
    run_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON, for scripts")] = False,
    server: Server = None,
    token: Token = None,
) -> None:
    """A run's metadata and summary (as JSON with --json)."""
    checked_run_id(run_id)
    answer = _call(server, token, lambda c: c.lookup(run_id))
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    for text in run_details(answer, web_url(server, answer["run"])):
        # a failure message or a phase name is the producer's text
        typer.echo(terminal_safe(text, keep_sgr=False))
