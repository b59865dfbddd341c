"""Defects an outside tester found in the CLI, each with the regression that shows it.

Client commands run in process (Typer's CliRunner) against a fake client, so a
test sees whether any request would have been made; commands whose failure is
about the process (a closed stdout) runs as a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner, Result

from runevents import cli, cli_client, cli_maintenance, cli_search  # noqa: F401 (commands)
from runevents.client import ClientError

RUN_ID = "run_01JD3Z8K2M4N6P8Q0R2S4T6V8W"
#: the exit code of `run` and `tail` when the command itself fails (docker run's)
CLI_FAILED = 125
ESC = "\x1b"


def a_run(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "id": RUN_ID[:-2] + f"{i:02d}",
        "workspace_id": "acme",
        "configuration_id": "etl",
        "status": "succeeded",
        "created_at": "2026-12-06T19:20:43.123456Z",
        "started_at": "2026-12-06T19:20:44Z",
        "completed_at": "2026-12-06T19:21:49.500Z",
        "exit_code": 0,
        "event_count": 12,
        "row_count": 3,
        **extra,
    }


#: a run still queued: no exit code, no duration, no counts yet
QUEUED = a_run(
    1, status="queued", started_at=None, completed_at=None, exit_code=None, event_count=None
)


class FakeClient:
    """Stands for the HTTP client: answers from memory."""

    def __init__(self, runs: list[dict[str, Any]]) -> None:
        self.runs = runs

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def list_json(self, workspace_id: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"items": self.runs, "next_cursor": None}

    async def lookup(self, run_id: str) -> dict[str, Any]:
        return {"run": self.runs[0], "summary": None}

    async def create_json(self, workspace: str, config: str, options: Any) -> dict[str, Any]:
        json.dumps(options, allow_nan=False)  # as httpx encodes the request body
        return {"run": self.runs[0], "summary": None}


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str | None]]:
    """Every client the CLI makes (a made client is where requests start)."""
    clients: list[tuple[str | None, str | None]] = []

    def fake(server: str | None, token: str | None) -> FakeClient:
        clients.append((server, token))
        return FakeClient([a_run(0), QUEUED])

    monkeypatch.setattr(cli_client, "_client", fake)
    return clients


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1"})
    # a traceback shows as an exception other than the clean exit
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: {result.exception!r}") from result.exception
    return result


# -- 1. hostile ids ---------------------------------------------------------------
HOSTILE_IDS = ["../../../metrics?", "..", ".", "../x", "a?x", "a/b", "_x", "x" * 129]


@pytest.mark.parametrize(
    "command",
    [
        ["runs", "ls", "-w", "{}"],
        ["runs", "ls", "-w", "acme", "-c", "{}"],
        ["search", "foo", "-w", "{}"],
        ["search", "foo", "-w", "acme", "-c", "{}"],
        ["run", "acme", "{}"],
        ["run", "{}", "etl"],
        ["tail", "{}"],
        ["events", "{}"],
        ["cancel", "{}"],
        ["runs", "show", "{}"],
    ],
)
def test_a_hostile_workspace_id_crashed_runs_ls(command: list[str], made: list[Any]) -> None:
    """Regression: `runs ls -w '../../../metrics?'` went to /metrics and crashed on its
    answer; `run acme ..` got 405. Contract 1 ids are checked before any request."""
    # `run` and `tail` pass a run's exit code through: their own failures exit 125
    expected = CLI_FAILED if command[0] in {"run", "tail"} else 2
    for bad in HOSTILE_IDS:
        result = invoke(*[bad if part == "{}" else part for part in command])
        assert result.exit_code == expected, (bad, result.output)
        assert result.stderr.startswith("error: ") and "invalid" in result.stderr, result.stderr
        assert made == [], bad  # no client, so no request


# -- 2. terminal escape injection ---------------------------------------------------
HOSTILE_LINE = (
    f"hello {ESC}]52;c;ZWNobyBwd25lZA==\x07 {ESC}]0;TITLE\x07 {ESC}[2J done {ESC}[31mred{ESC}[0m"
)


def test_a_producer_s_escapes_reached_the_terminal_of_tail_run_and_search(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Regression: on a terminal `tail`/`run` printed a producer's OSC 52 (clipboard), OSC 0
    (title) and ESC[2J unchanged; `search` too. Only SGR colours may pass."""
    event = {"type": "console.line", "payload": {"stream": "stdout", "message": HOSTILE_LINE}}
    cli_client._print_event(event, True)  # type: ignore[arg-type]
    shown = capsys.readouterr().out
    assert shown == f"hello    done {ESC}[31mred{ESC}[0m\n"

    hit = {"run_id": RUN_ID, "sequence": 7, "message": HOSTILE_LINE, "match": [[0, 5]]}
    terminal = Console(file=io.StringIO(), force_terminal=True, color_system="standard")
    terminal.print(cli_search.hit_text(hit, terminal=True))
    printed = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert "]52;" not in printed and "]0;" not in printed and "[2J" not in printed
    assert "hello" in printed and "TITLE" not in printed


# -- 3. runs ls in a pipe -------------------------------------------------------------
def test_runs_ls_in_a_pipe_shifted_awk_fields_and_printed_a_header(made: list[Any]) -> None:
    """Regression: an empty cell (no exit code yet) was blanks, so awk's fields shifted,
    and the header was on stdout. README: in a pipe, one run per line."""
    result = invoke("runs", "ls", "-w", "acme")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [a_run(0)["id"], QUEUED["id"]]
    assert {len(line.split()) for line in lines} == {8}
    assert lines[1].split()[5:] == ["-", "-", "3"]  # exit, events, rows
    assert result.stderr.split()[:3] == ["RUN", "CONFIGURATION", "STATUS"]


# -- 4. tracebacks instead of clean errors --------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["run", "acme", "ok", "-o", "x=NaN"],
        ["run", "acme", "ok", "-o", "x=1e999"],
        ["run", "acme", "ok", "-o", "x=-Infinity"],
        ["compact", "--older-than", "99999999999999d"],
        ["compact", "--older-than", "999999d"],
        ["retention", "--older-than", "99999999999999d"],
        ["search", "foo", "-w", "acme", "--since", "99999999999999d"],
    ],
)
def test_nan_options_and_huge_durations_gave_tracebacks(args: list[str], made: list[Any]) -> None:
    """Regression: `-o x=NaN` / `1e999` raised ValueError in the JSON encoder,
    `--older-than 99999999999999d` OverflowError: now one line and the usage exit code
    (125 from `run`, whose exit code is otherwise its run's)."""
    result = invoke(*args)
    assert result.exit_code == (CLI_FAILED if args[0] == "run" else 2), result.output
    assert "Traceback" not in result.output
    assert made == []


@pytest.mark.parametrize("case", ["serve", "worker", "busy"])
def test_a_bad_or_busy_port_gave_tracebacks_in_serve_and_worker(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: `serve --port 99999` and `worker --metrics-port 99999` raised OverflowError,
    `worker --metrics-port <busy>` OSError (serve said so cleanly)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("runevents.logs.configure", lambda *args: None)  # our own logging
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args, said = {
            "serve": (["serve", "--port", "99999"], "invalid --port 99999"),
            "worker": (["worker", "--metrics-port", "99999"], "invalid --metrics-port 99999"),
            "busy": (
                ["worker", "--metrics-port", str(port)],
                f"port {port} on 127.0.0.1 is already in use",
            ),
        }[case]
        done = invoke(*args, "--data-dir", "d")
    assert done.exit_code == 2, done.output
    errors = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and said in errors[0], done.stderr


# -- 5. maintenance on a data dir that does not exist ---------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["reindex", "--data-dir", "missing"],
        ["compact", "--older-than", "0s", "--data-dir", "missing"],
        ["retention", "--older-than", "0s", "--data-dir", "missing"],
        ["reindex"],  # an empty working directory: the default ./runevents-data
    ],
)
def test_maintenance_on_a_missing_data_dir_made_an_empty_database(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: reindex/compact on a --data-dir that does not exist created a fresh
    database there and reported success (rc 0)."""
    monkeypatch.chdir(tmp_path)
    done = invoke(*args)
    assert done.exit_code == 2, done.output
    assert "does not exist" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created


# -- 6. --help loses bracketed words to Rich markup -----------------------------------
def _commands(command: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, [*path, name])
    return found


def test_help_lost_env_names_and_the_token_entry_to_rich_markup() -> None:
    """Regression: `[env: RUNEVENTS_SERVER]` vanished from --help, and `token new --help`
    said "the [] entry" for "the [[token]] entry"."""
    checked = 0
    for path, command in _commands(typer.main.get_command(cli.app), []):
        names = {
            name for p in command.params for name in re.findall(r"env: (RUNEVENTS_\w+)", p.help or "")
        }  # fmt: skip
        if not names:
            continue
        shown = invoke(*path, "--help").stdout
        for name in names:
            assert f"[env: {name}]" in shown, (path, name, shown)
            checked += 1
    assert checked >= 20
    assert "the [[token]] entry" in invoke("token", "new", "--help").stdout


# -- 7. a closed stdout ---------------------------------------------------------------
CLOSED_STDOUT = textwrap.dedent(
    """
    import sys
    from runevents import cli, cli_client

    RUN = {run!r}

    class Fake:
        async def __aenter__(self): return self
        async def __aexit__(self, *exc): return None
        async def list_json(self, workspace_id, params):
            return {{"items": [RUN] * 50, "next_cursor": None}}
        async def lookup(self, run_id):
            return {{"run": RUN, "summary": None}}

    cli_client._client = lambda server, token: Fake()
    sys.argv = ["runevents", *sys.argv[1:]]
    cli.main()
    """
).format(run=a_run())


@pytest.mark.parametrize("args", [["runs", "ls"], ["runs", "show", RUN_ID]])
def test_a_closed_stdout_made_runs_ls_exit_1(args: list[str]) -> None:
    """Regression: `runevents runs ls | head -1` exited 1 on the broken pipe."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        done = subprocess.run(
            [sys.executable, "-c", CLOSED_STDOUT, *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


# -- 8. a password in --server ---------------------------------------------------------
def test_a_password_in_server_was_printed_in_errors_and_web_links(
    made: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: `--server http://user:pw@host` printed pw in the error of an
    unreachable server and in the `web:` link."""
    server = "http://user:s3cret@127.0.0.1:9"
    shown = invoke("runs", "show", RUN_ID, "--server", server)
    assert shown.exit_code == 0, shown.output
    assert "web            http://***@127.0.0.1:9/workspaces/acme/runs/" in shown.stdout

    monkeypatch.setattr(cli_client, "_client", cli_client.Client)  # the real one
    unreachable = invoke("runs", "ls", "-w", "acme", "--server", server)
    assert unreachable.exit_code == 2
    assert "cannot reach the server at http://***@127.0.0.1:9" in unreachable.stderr
    assert "s3cret" not in shown.output + unreachable.output


# -- 9. runs ls wider than the terminal ------------------------------------------------
def _on_a_terminal(args: list[str], width: int) -> tuple[list[str], str, int]:
    """The CLOSED_STDOUT program's stdout lines on a pseudo-terminal ``width`` columns wide."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", CLOSED_STDOUT, *args],
        stdout=child,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": str(width), "NO_COLOR": "1"},
    )
    os.close(child)
    shown = b""
    with contextlib.suppress(OSError):  # EIO: the program closed the terminal
        while data := os.read(main, 65536):
            shown += data
    os.close(main)
    assert proc.stderr is not None
    errors = proc.stderr.read().decode()
    proc.stderr.close()
    return shown.decode().replace("\r\n", "\n").splitlines(), errors, proc.wait(timeout=60)


@pytest.mark.parametrize("width", [40, 52, 60, 61, 80, 120])
def test_runs_ls_header_overflowed_the_terminal_width(width: int) -> None:
    """Regression: `COLUMNS=60 runevents runs ls` on a terminal printed a 61-column header
    (and rows): with every optional column dropped the table was still 61 wide, and
    nothing narrower was tried. README: on a terminal it fits the width."""
    lines, errors, code = _on_a_terminal(["runs", "ls"], width)
    assert code == 0, errors
    header, *rows = lines
    assert header.split()[0] == "RUN" and "STATUS" in header.split(), lines
    assert len(rows) == 50, lines
    assert [x for x in lines if len(x) > width] == []
    assert all(" succeeded" in x for x in rows)  # a status is never cut


# -- 10. compact --dry-run said "saved 0 B" ----------------------------------------------
def test_compact_dry_run_reported_saved_0_b(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: `compact --dry-run` ended with "bytes 4.0 KiB -> 4.0 KiB (saved 0 B)";
    a dry run compresses nothing: it says what it would compact (like `retention
    --dry-run`), the runs and their plain log bytes."""
    from runevents import app as app_module
    from runevents import maintenance

    ids = [a_run(i)["id"] for i in range(2)]

    class Opened:
        manager = None

        async def close(self) -> None:
            return None

    async def opened(settings: object, worker: bool) -> Opened:
        return Opened()

    async def dry(manager: object, age: object, **kw: Any) -> maintenance.Report:
        assert kw["dry_run"] is True
        return maintenance.Report(
            "compact", dry_run=True, runs=2, bytes_before=4096, bytes_after=4096, run_ids=ids
        )

    monkeypatch.setattr(app_module.App, "open", opened)
    monkeypatch.setattr(maintenance, "compact", dry)
    done = invoke("compact", "--older-than", "1d", "--dry-run", "--data-dir", str(tmp_path))
    assert done.exit_code == 0, done.output
    assert "compact: would change 2 run(s); 4.0 KiB of plain logs to compress" in done.stderr
    assert "saved" not in done.stderr
    assert done.stdout.split() == ids  # the runs it would compact, one a line


# -- 11. worker --concurrency 0 ----------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-1"])
def test_worker_concurrency_0_was_accepted_and_ran_nothing(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: `worker --concurrency 0` (or -1) started a worker; refused now as
    Click refuses any bad value: one usage error, exit 2, no worker started."""
    from runevents import app as app_module

    async def opened(settings: object, worker: bool) -> None:
        raise AssertionError(f"a worker started with --concurrency {value}")

    monkeypatch.setattr(app_module.App, "open", opened)
    monkeypatch.setattr("runevents.logs.configure", lambda *args: None)  # our own logging
    done = invoke("worker", "--concurrency", value, "--data-dir", str(tmp_path))
    assert done.exit_code == 2, done.output
    assert "--concurrency" in done.stderr and "greater than or equal to 1" in done.stderr


# -- 12. a failure of `run` itself looked like a run that exited 2 -------------------------
def completed(exit_code: int) -> dict[str, Any]:
    payload = {"status": "failed", "execution": {"exit_code": exit_code}}
    return {"type": "run.completed", "sequence": 9, "payload": payload}


class Failing(FakeClient):
    """The server answers every request with ``error`` (a bad token, an unknown run)."""

    def __init__(self, error: Exception) -> None:
        super().__init__([a_run(0)])
        self.error = error

    async def create_json(self, workspace: str, config: str, options: Any) -> dict[str, Any]:
        raise self.error

    async def lookup(self, run_id: str) -> dict[str, Any]:
        raise self.error


UNAUTHORIZED = ClientError("HTTP 401: a valid bearer token is required (--token)", 401)
NOT_FOUND = ClientError("HTTP 404: run not found", 404, "run_not_found")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["run", "acme", "etl", "--server", "http://127.0.0.1:9"], None),  # unreachable
        (["tail", RUN_ID, "--server", "http://127.0.0.1:9"], None),
        (["run", "acme", "etl"], UNAUTHORIZED),
        (["tail", RUN_ID], NOT_FOUND),
        (["run", "acme", "etl"], RuntimeError("a bug of ours")),  # a traceback exited 1
        (["run", "acme"], None),  # Click's own usage errors
        (["run", "acme", "etl", "--no-such-flag"], None),
        (["run", "acme", "etl", "-o", "x"], None),
        (["run", "acme", "etl", "-o", "x=NaN"], None),
        (["run", "acme", "../etl"], None),
        (["tail", "not-a-run-id"], None),
        (["tail", RUN_ID, "--after", "many"], None),
    ],
)
def test_a_cli_error_of_run_exited_2_like_a_run_that_exited_2(
    args: list[str], error: Exception | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: `run` exits with its run's exit code, but its own failures (server
    unreachable, bad token, run not found, bad arguments) exited 2 too, so a script
    could not tell them from a run that exited 2. Now 125, as `docker run` does."""
    if error is not None:
        monkeypatch.setattr(cli_client, "_client", lambda server, token: Failing(error))
    elif "--server" in args:
        monkeypatch.setattr(cli_client, "_client", cli_client.Client)  # the real one
    else:
        monkeypatch.setattr(cli_client, "_client", lambda server, token: FakeClient([]))
    done = invoke(*args)
    assert done.exit_code == CLI_FAILED, done.output
    assert done.stderr.strip(), "the failure is said on stderr"


@pytest.mark.parametrize("command", [["run", "acme", "etl"], ["tail", RUN_ID]])
def test_a_run_that_exited_2_still_exits_2_and_other_commands_keep_2(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the exit 125 regression: a run's own 2 passes through, and the
    commands that pass no run's code through still exit 2 on their own failures."""

    class Follows(FakeClient):
        async def follow(self, run: Any, after: int = 0, on_retry: Any = None) -> Any:
            yield completed(2)

    monkeypatch.setattr(cli_client, "_client", lambda server, token: Follows([a_run(0)]))
    assert invoke(*command).exit_code == 2
    monkeypatch.setattr(cli_client, "_client", lambda server, token: Failing(NOT_FOUND))
    for other in (["runs", "show", RUN_ID], ["cancel", RUN_ID], ["events", RUN_ID]):
        assert invoke(*other).exit_code == 2, other
    assert invoke("runs", "ls", "--limit", "many").exit_code == 2
