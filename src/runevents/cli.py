"""The ``runevents`` command line (Typer + Rich).

Handlers stay thin: they build :class:`Settings` from flags (flags win over
``RUNEVENTS_*`` variables, which ``Settings`` reads) and call the App, the
manager or the HTTP client. Server-side commands: ``serve``, ``worker``,
``compact``, ``retention``, ``reindex``, ``token new``. Client commands that
talk to a running server live in ``cli_client.py`` and are registered here.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from runevents.exceptions import RuneventsError
from runevents.settings import Settings

app = typer.Typer(
    name="runevents",
    help="Event log store for runs: append-only NDJSON logs, SQL run index, live SSE.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")
console = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Local data directory [env: RUNEVENTS_DATA_DIR]"),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="postgresql://user:pw@host:5432/db or sqlite:///path.db [env: RUNEVENTS_DATABASE_URL]",
    ),
]
StorageUrl = Annotated[
    str | None,
    typer.Option(
        "--storage-url",
        help="file:///path or s3://bucket/prefix [env: RUNEVENTS_STORAGE_URL]",
    ),
]


def build_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the given (non-None) flags on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _fail(exc: RuneventsError) -> typer.Exit:
    # the message is data, not markup ("[[token]]" must survive), and must not wrap
    console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [env: RUNEVENTS_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env: RUNEVENTS_PORT]")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Configurations TOML [env: RUNEVENTS_CONFIG_FILE]"),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Register the demo configuration and start a run")
    ] = False,
    tokens: Annotated[
        Path | None,
        typer.Option("--tokens", help="Tokens TOML; turns on auth [env: RUNEVENTS_TOKENS_FILE]"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Runs the embedded worker executes at once; 0 = none "
            "[env: RUNEVENTS_WORKER_CONCURRENCY]",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level")] = "info",
) -> None:
    """Start the API, the web UI and an embedded worker."""
    import uvicorn

    from runevents.api.app import create_app
    from runevents.auth import check_bind, load_tokens

    try:
        settings = build_settings(
            host=host,
            port=port,
            data_dir=data_dir,
            database_url=database_url,
            storage_url=storage_url,
            config_file=config,
            demo=demo or None,
            start_demo_run=demo or None,
            tokens_file=tokens,
            worker_concurrency=workers,
        )
        registry = load_tokens(settings.tokens_file) if settings.tokens_file else None
        check_bind(settings.host, registry)
        # fail fast on a bad configuration file, before binding the port
        from runevents.app import load_configurations

        load_configurations(settings)
    except RuneventsError as exc:
        raise _fail(exc) from exc
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    shown = "127.0.0.1" if settings.host in {"0.0.0.0", "::"} else settings.host
    url = f"http://{shown}:{settings.port}/"
    console.print(f"[bold green]runevents[/] serving on [link={url}]{url}[/link]")
    database = _redact(settings.resolved_database_url)
    console.print(f"  data: {settings.data_dir.resolve()}  database: {database}")
    if registry is None:
        console.print(
            "  [yellow]auth is OFF (open mode, loopback only);"
            " use --tokens FILE to require tokens[/]"
        )
    if settings.demo:
        console.print(f"  demo: a demo run starts now -> open {url}workspaces/demo")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=5,
    )


def _redact(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


@app.command()
def worker(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: Annotated[Path | None, typer.Option("--config", help="Configurations TOML")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Register the demo configuration")] = False,
    concurrency: Annotated[int, typer.Option(help="Runs executed at once")] = 4,
) -> None:
    """Run a standalone worker against the same database and storage as a server."""
    from runevents.app import App

    settings = build_settings(
        data_dir=data_dir,
        database_url=database_url,
        storage_url=storage_url,
        config_file=config,
        demo=demo or None,
        worker_concurrency=max(1, concurrency),
        maintenance_interval_seconds=0,
    )
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        app_ = await App.open(settings, worker=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        assert app_.worker is not None
        console.print(f"[bold green]runevents worker[/] {app_.worker.worker_id} started")
        try:
            await stop.wait()
        finally:
            await app_.close()

    try:
        asyncio.run(main())
    except RuneventsError as exc:
        raise _fail(exc) from exc


@token_app.command("new")
def token_new(
    name: Annotated[str, typer.Option(help="Token name (shown in logs)")],
    role: Annotated[str, typer.Option(help="read | write | admin")],
    workspace: Annotated[
        list[str], typer.Option("--workspace", help="Workspace (repeatable; '*' for all)")
    ],
) -> None:
    """Print a new random token once, and the [[token]] entry for the tokens file."""
    from runevents.auth import generate_token

    try:
        token, entry = generate_token(name=name, role=role, workspaces=workspace)
    except RuneventsError as exc:
        raise _fail(exc) from exc
    console.print("[bold]New token[/] (shown once, store it now):")
    typer.echo(token)
    console.print("\n[bold]Add this entry to your tokens file:[/]")
    typer.echo(entry)


def main() -> None:
    """Console-script entry point."""
    # importing registers their commands on `app`
    from runevents import cli_client, cli_maintenance, cli_search  # noqa: F401

    app()
