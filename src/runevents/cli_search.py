"""``runevents search PATTERN -w WS``: search across runs from the command line (contract 12).

Prints hits like grep -- ``run_id:sequence: message`` -- with the matches
coloured when stdout is a terminal, and a progress line on stderr (runs
searched, bytes, hits) while the search goes on. Pages through the server's
answers with the cursor until ``--limit`` hits are printed or the runs are
exhausted. ``--json`` prints each hit as the server sent it (NDJSON). Exit
status as grep: 0 with hits, 1 without, 2 on an error.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from runevents.cli import app
from runevents.cli_client import Client, Server, Token, _call, checked_name
from runevents.cli_output import terminal_safe
from runevents.exceptions import InvalidInput
from runevents.settings import parse_duration

#: hits asked for per request (the server's maximum)
PAGE = 1000


def _params(
    pattern: str,
    *,
    regex: bool,
    since: str | None,
    config: str | None,
    status: list[str] | None,
    stream: str | None,
    level: str | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"q": pattern}
    if regex:
        params["regex"] = "true"
    if since:
        try:
            params["created_after"] = (datetime.now(UTC) - parse_duration(since)).isoformat()
        except InvalidInput as exc:
            raise typer.BadParameter(exc.message, param_hint="--since") from None
        except OverflowError:  # further back than year 1
            raise typer.BadParameter(f"{since!r} is too long", param_hint="--since") from None
    if config:
        params["configuration_id"] = config
    if status:
        params["status"] = status
    if stream:
        params["stream"] = stream
    if level:
        params["level"] = level
    return params


def hit_text(hit: dict[str, Any], *, terminal: bool = False) -> Text:
    """``run_id:sequence: message`` with the matches highlighted (as grep --color).

    For a ``terminal`` the message is the producer's text made safe
    (``cli_output.terminal_safe``): piece by piece between the match offsets, which
    count in the message as stored.
    """
    raw: str = hit["message"]
    if not terminal:
        message = Text(raw)
        for start, end in hit["match"]:
            message.stylize("bold red", start, end)
    else:
        message, done = Text(), 0
        for start, end in sorted(hit["match"]):
            start = max(start, done)
            message.append(terminal_safe(raw[done:start], keep_sgr=False))
            message.append(terminal_safe(raw[start:end], keep_sgr=False), "bold red")
            done = max(done, end)
        message.append(terminal_safe(raw[done:], keep_sgr=False))
    return Text.assemble(
        (hit["run_id"], "magenta"),
        (":", "cyan"),
        (str(hit["sequence"]), "green"),
        (": ", "cyan"),
        message,
    )


@app.command("search")
def search_cmd(
    pattern: Annotated[str, typer.Argument(help="Text (case-insensitive), or RE2 with --regex")],
    workspace: Annotated[str, typer.Option("--workspace", "-w", help="Workspace")],
    since: Annotated[
        str | None, typer.Option("--since", help="Only runs created this recently (7d, 36h)")
    ] = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help="Configuration")] = None,
    status: Annotated[
        list[str] | None, typer.Option("--status", help="Run status (repeatable)")
    ] = None,
    regex: Annotated[bool, typer.Option("--regex", "-E", help="PATTERN is an RE2 regex")] = False,
    stream: Annotated[str | None, typer.Option("--stream", help="stdout | stderr")] = None,
    level: Annotated[str | None, typer.Option("--level", help="debug|info|warning|error")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Stop after this many hits")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per hit")] = False,
    server: Server = None,
    token: Token = None,
) -> None:
    """Search the console lines of a workspace's runs, newest runs first."""
    checked_name(workspace, "workspace id")
    if config is not None:
        checked_name(config, "configuration id")
    params = _params(
        pattern, regex=regex, since=since, config=config, status=status, stream=stream, level=level
    )
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False)

    async def work(client: Client) -> int:
        printed = runs = scanned = 0
        cursor = None
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as progress:
            task = progress.add_task("searching")
            while printed < limit:
                page = dict(params, limit=min(PAGE, limit - printed))
                if cursor:
                    page["cursor"] = cursor
                done: dict[str, Any] = {}
                async for line in client.search(workspace, page):
                    if line.get("done"):
                        done = line
                        break
                    printed += 1
                    if as_json:
                        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
                    elif out.is_terminal:
                        out.print(hit_text(line, terminal=True))
                    else:
                        sys.stdout.write(hit_text(line).plain + "\n")
                    progress.update(task, description=f"searching: {printed} hits")
                runs += done.get("runs_scanned", 0)
                scanned += done.get("bytes_scanned", 0)
                status_line = f"{printed} hits, {runs} runs, {scanned / 1e6:.1f} MB read"
                progress.update(task, description=f"searching: {status_line}")
                cursor = done.get("cursor")
                if not cursor:
                    break
        sys.stdout.flush()
        more = " (more: raise --limit)" if cursor else ""
        err.print(f"[dim]{printed} hits in {runs} runs{more}[/]")
        return 0 if printed else 1

    raise typer.Exit(code=_call(server, token, work))
