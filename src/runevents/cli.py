"""The ``runevents`` command line (Typer + Rich).

Handlers stay thin: they build :class:`Settings` from flags (flags win over
``RUNEVENTS_*`` variables, which ``Settings`` reads) and call the App, the
manager or the HTTP client. Server-side commands: ``serve``, ``worker``,
``compact``, ``retention``, ``reindex``, ``token new``. Client commands that
talk to a running server live in ``cli_client.py`` and are registered here.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from runevents import logs
from runevents.exceptions import ConfigError, RuneventsError
from runevents.settings import Settings


def stdout_closed() -> typer.Exit:
    """The reader of stdout went away (``runevents runs ls | head -1``): a normal end, exit 0.

    stdout is pointed at /dev/null so that the interpreter's last flush of what is
    still buffered does not fail again on the way out.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return typer.Exit(code=0)


class _Commands(TyperGroup):
    """The ``runevents`` group: a closed stdout ends any command with exit 0.

    Left to Typer, a broken pipe exits 1, for whichever command happened to be
    writing when the reader left.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            result = super().invoke(ctx)
            # what is still buffered must reach the pipe (or fail) here, not at exit
            sys.stdout.flush()
            return result
        except BrokenPipeError:
            raise stdout_closed() from None


#: the usage exit code (Click's), of every command but those that pass a run's code through
EXIT_USAGE = 2
#: the exit code of ``run`` and ``tail`` when the command itself fails (bad arguments, server
#: unreachable, bad token, run not found): they exit with the run's own code otherwise, so a
#: failure must not look like a run that exited 2 (``docker run``'s convention)
EXIT_CLI_FAILED = 125
#: the exit code of a failure of the command running now (``PassThrough`` sets it)
_FAILURE_CODE = contextvars.ContextVar("failure_code", default=EXIT_USAGE)


class PassThrough(TyperCommand):
    """A command whose exit code is a run's: every failure of its own exits 125.

    Click's parse errors (a missing argument, a bad option) are raised before the
    callback runs, an error of ours as :func:`usage_error` (which asks
    :func:`failure_code`), anything unforeseen as a traceback that would exit 1.
    """

    # ``Any``: the Context type is that of the Click Typer bundles (as ``_Commands`` has it)
    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except typer.TyperException as exc:  # Click's usage errors (Typer bundles Click)
            exc.exit_code = EXIT_CLI_FAILED
            raise

    def invoke(self, ctx: Any) -> Any:
        token = _FAILURE_CODE.set(EXIT_CLI_FAILED)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, BrokenPipeError):
            raise  # an exit code chosen already; a closed stdout is the group's (exit 0)
        except typer.TyperException as exc:
            exc.exit_code = EXIT_CLI_FAILED
            raise
        except Exception:
            # a bug of ours: shown as Python would, with an exit code no run has
            traceback.print_exc()
            raise typer.Exit(code=EXIT_CLI_FAILED) from None
        finally:
            _FAILURE_CODE.reset(token)


def failure_code() -> int:
    """The exit code of a failure of the command running now: 125 in ``run``/``tail``, else 2."""
    return _FAILURE_CODE.get()


app = typer.Typer(
    name="runevents",
    help="Event log store for runs: append-only NDJSON logs, SQL run index, live SSE.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_Commands,
)
token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")
console = Console(stderr=True)

# "\\[env: ...]" in help texts: Rich markup would take "[env: ...]" for a tag and drop it
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Local data directory \\[env: RUNEVENTS_DATA_DIR]"),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="postgresql://user:pw@host:5432/db or sqlite:///path.db "
        "\\[env: RUNEVENTS_DATABASE_URL]",
    ),
]
StorageUrl = Annotated[
    str | None,
    typer.Option(
        "--storage-url",
        help="file:///path or s3://bucket/prefix \\[env: RUNEVENTS_STORAGE_URL]",
    ),
]
LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="Server log lines: text, or json (one object per line) \\[env: RUNEVENTS_LOG_FORMAT]",
    ),
]
LogLevelOption = Annotated[
    str | None,
    typer.Option("--log-level", help="Log level \\[env: RUNEVENTS_LOG_LEVEL]"),
]


def build_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the given (non-None) flags on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _bad_setting(exc: ValidationError) -> typer.Exit:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    # a rule across settings (Settings._check_live_tier) names them in its message
    shown = f"{where}: {first['msg']}" if where else first["msg"]
    console.print(f"[bold red]error:[/] {escape(shown)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def usage_error(message: str) -> typer.Exit:
    """One ``error:`` line on stderr and the usage exit code (2; 125 in ``run`` and ``tail``,
    see :data:`EXIT_CLI_FAILED`), instead of a traceback."""
    # the message is data, not markup ("[[token]]" must survive), and must not wrap
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=failure_code())


def _fail(exc: RuneventsError) -> typer.Exit:
    return usage_error(exc.message)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address \\[env: RUNEVENTS_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port \\[env: RUNEVENTS_PORT]")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Configurations TOML \\[env: RUNEVENTS_CONFIG_FILE]"),
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo", help="Register the demo configuration and keep a demo run live (one a minute)"
        ),
    ] = False,
    tokens: Annotated[
        Path | None,
        typer.Option("--tokens", help="Tokens TOML; turns on auth \\[env: RUNEVENTS_TOKENS_FILE]"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Runs the embedded worker executes at once; 0 = none "
            "\\[env: RUNEVENTS_WORKER_CONCURRENCY]",
        ),
    ] = None,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            "--forwarded-allow-ips",
            help="Proxies trusted for X-Forwarded-Proto/-For (comma-separated, or '*'), "
            "so the session cookie is Secure behind a TLS-terminating proxy "
            "\\[env: RUNEVENTS_FORWARDED_ALLOW_IPS]",
        ),
    ] = None,
    advertise_url: Annotated[
        str | None,
        typer.Option(
            "--advertise-url",
            help="Where the other replicas of a deployment reach this one (http://host:port); "
            "default: the bind address, a wildcard bind advertising this machine's address "
            "\\[env: RUNEVENTS_ADVERTISE_URL]",
        ),
    ] = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
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
            log_level=log_level,
            log_format=log_format,
            forwarded_allow_ips=forwarded_allow_ips,
            advertise_url=advertise_url,
        )
        # before anything logs (check_bind warns about open mode)
        logs.configure(settings.log_level, settings.log_format)
        registry = load_tokens(settings.tokens_file) if settings.tokens_file else None
        check_bind(settings.host, registry)
        # fail fast on a bad configuration file, before binding the port
        from runevents.app import load_configurations

        load_configurations(settings)
        # before the app starts (and queues a demo run): a busy port ends here, cleanly
        _check_port(settings.host, settings.port)
    except RuneventsError as exc:
        raise _fail(exc) from exc
    except ValidationError as exc:
        raise _bad_setting(exc) from exc
    _announce(settings, open_mode=registry is None)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's lines go through logs.configure's handler
        timeout_graceful_shutdown=5,
        # the app applies the trusted-proxy headers itself (settings.forwarded_allow_ips)
        proxy_headers=False,
    )


def _announce(settings: Settings, *, open_mode: bool) -> None:
    """Say where the server listens: to the terminal, or as log lines in ``--log-format json``
    (a log pipeline then sees only JSON objects on stderr)."""
    shown = "127.0.0.1" if settings.host in {"0.0.0.0", "::"} else settings.host
    url = f"http://{shown}:{settings.port}/"
    database = _redact(settings.resolved_database_url)
    if settings.log_format == "json":
        log = logging.getLogger("runevents")
        log.info(
            "serving on %s (data: %s, database: %s)", url, settings.data_dir.resolve(), database
        )
        if open_mode:
            log.warning(
                "auth is OFF (open mode, loopback only); use --tokens FILE to require tokens"
            )
        return
    console.print(f"[bold green]runevents[/] serving on [link={url}]{url}[/link]")
    console.print(f"  data: {settings.data_dir.resolve()}  database: {database}")
    if open_mode:
        console.print(
            "  [yellow]auth is OFF (open mode, loopback only);"
            " use --tokens FILE to require tokens[/]"
        )
    if settings.demo:
        console.print(
            f"  demo: a demo run starts now, and another each minute while none is live"
            f" -> open {url}workspaces/demo"
        )
    console.print("  Ctrl-C stops the server; the runs it executes end cancelled (server_shutdown)")


def _check_port(host: str, port: int, flag: str = "--port") -> None:
    """Fail with what to do when ``host:port`` is taken (issue 19: a second ``dev.py demo``)."""
    if not 0 <= port <= 65535:
        # socket.bind would raise OverflowError (a traceback) for --port 99999
        raise ConfigError(f"invalid {flag} {port}: use a port from 1 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # uvicorn sets SO_REUSEADDR too: only a port someone listens on counts as busy
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
            if flag != "--port":
                raise ConfigError(
                    f"port {port} on {host} is already in use; pick another: {flag} {port + 1}"
                ) from exc
            raise ConfigError(
                f"port {port} on {host} is already in use (is another runevents serve or "
                f"`dev.py demo` running?). Stop it, or pick another port: --port {port + 1} "
                f"(python3 dev.py demo --port {port + 1})"
            ) from exc


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
    concurrency: Annotated[
        # 0 would start a worker that never takes a run: refused like any bad value (exit 2)
        int, typer.Option(min=1, help="Runs executed at once (at least 1)")
    ] = 4,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Serve Prometheus metrics on this port (no auth: bind it privately)",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address of --metrics-port")
    ] = "127.0.0.1",
) -> None:
    """Run a standalone worker against the same database and storage as a server."""
    from runevents.app import App

    try:
        settings = build_settings(
            data_dir=data_dir,
            database_url=database_url,
            storage_url=storage_url,
            config_file=config,
            demo=demo or None,
            worker_concurrency=concurrency,
            maintenance_interval_seconds=0,
            log_level=log_level,
            log_format=log_format,
        )
    except ValidationError as exc:
        raise _bad_setting(exc) from exc
    if metrics_port is not None:
        from runevents.metrics import serve_metrics

        try:
            # a busy port fails here with a message, as `serve --port` does
            _check_port(metrics_host, metrics_port, "--metrics-port")
            serve_metrics(metrics_host, metrics_port)
        except ConfigError as exc:
            raise _fail(exc) from exc
        except OSError as exc:  # someone took the port between the check and the bind
            raise usage_error(
                f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc}"
            ) from exc
    logs.configure(settings.log_level, settings.log_format)

    async def main() -> None:
        app_ = await App.open(settings, worker=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        assert app_.worker is not None
        if settings.log_format == "json":
            logging.getLogger("runevents").info(
                "runevents worker %s started", app_.worker.worker_id
            )
        else:
            console.print(f"[bold green]runevents worker[/] {app_.worker.worker_id} started")
        try:
            await stop.wait()
        finally:
            await app_.close()

    try:
        asyncio.run(main())
    except RuneventsError as exc:
        raise _fail(exc) from exc


# given here, escaped: as a docstring Rich markup would print "the [] entry"
@token_app.command(
    "new",
    help=escape("Print a new random token once, and the [[token]] entry for the tokens file."),
)
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
