"""The first minutes with runevents, from the command line (issue 19 items 11-14).

``serve --demo`` keeps a live run and says what to do about a busy port;
Ctrl-C hands a server's runs back; ``runs ls`` / ``runs show`` read well in a
pipe and on an 80-column terminal (a real pseudo-terminal); ``runevents run``
prints the run's web URL, keeps ANSI codes off a pipe, says "reconnecting…"
and, on Ctrl-C, that the run goes on and how to follow or cancel it.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from runevents.cli_format import strip_ansi
from tests.acceptance.conftest import (
    CLI_TIMEOUT,
    Processes,
    Server,
    clean_env,
    cli,
    log_path,
    poll,
)

pytestmark = pytest.mark.slow

ACTIVE = {"queued", "building", "running"}
RUN_ID_RE = re.compile(r"\brun_[0-9A-HJKMNP-TV-Z]{26}\b")


def demo_runs(server: Server) -> list[dict[str, Any]]:
    return list(server.http.get("/api/v1/workspaces/demo/runs").json()["items"])


def cancel(server: Server, run: dict[str, Any]) -> None:
    """Cancel as a client does: a 503 (the run's writer is moving) is retried."""
    url = f"/api/v1/workspaces/demo/configurations/extract/runs/{run['id']}/cancel"

    def accepted() -> bool:
        r = server.http.post(url)
        assert r.status_code in (202, 409, 503), r.text  # 409: it had ended
        return r.status_code != 503

    poll(f"run {run['id']} to take the cancel", accepted, 30, interval=0.2)


def test_a_second_demo_on_a_busy_port_says_how_and_queues_nothing(processes: Processes) -> None:
    """Regression (issue 19 item 11): the second server queued a demo run, then
    died on the bind with uvicorn's traceback, leaving the run queued forever."""
    data = processes.tmp / "data"
    first = processes.serve("--demo", data_dir=data)
    port = first.url.rsplit(":", 1)[1]
    second = subprocess.run(
        [sys.executable, "-m", "runevents", "serve", "--demo", "--host", "127.0.0.1",
         "--port", port, "--data-dir", str(data)],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, env=clean_env(),
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert second.returncode == 2, second.stderr
    assert f"port {port}" in second.stderr and "already in use" in second.stderr
    assert f"--port {int(port) + 1}" in second.stderr
    assert "Traceback" not in second.stderr
    runs = demo_runs(first)
    assert len(runs) == 1, runs  # only the first server's demo run
    cancel(first, runs[0])


def test_the_demo_keeps_a_live_run_and_ctrl_c_hands_runs_back(processes: Processes) -> None:
    """Regression (issue 19 item 11): the demo's one run had ended by the time a
    newcomer looked; a server stopped with Ctrl-C left its runs `running`."""
    data = processes.tmp / "data"
    server = processes.serve(
        "--demo", data_dir=data, env={"RUNEVENTS_DEMO_RUN_INTERVAL_SECONDS": "1"}
    )
    first = poll("the demo run", lambda: demo_runs(server), 30)[0]
    cancel(server, first)
    # the demo starts another one while none is live
    second = poll(
        "a new live demo run",
        lambda: next(
            (r for r in demo_runs(server) if r["id"] != first["id"] and r["status"] in ACTIVE), None
        ),
        30,
    )
    server.wait_running(second)
    # Ctrl-C (SIGINT, as a terminal sends it): the run ends cancelled, with the reason
    os.kill(server.pid, signal.SIGINT)
    assert server.popen.wait(timeout=60) == 0, server.log()
    last = json.loads(log_path(data, second).read_bytes().splitlines()[-1])
    assert last["type"] == "run.completed"
    assert last["payload"]["status"] == "cancelled"
    assert last["payload"]["failure"]["code"] == "server_shutdown"
    # the row says so too (read by a server started afterwards, without --demo)
    again = processes.serve(name="again", data_dir=data)
    run = again.get(second)["run"]
    assert run["status"] == "cancelled"
    assert run["failure"]["code"] == "server_shutdown"


# ---- the client commands -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    procs = Processes(tmp_path_factory.mktemp("newcomer"))
    try:
        srv = procs.serve(
            "--demo", data_dir=procs.tmp / "data", env={"RUNEVENTS_DEMO_RUN_INTERVAL_SECONDS": "0"}
        )
        # the listing tests need one cancelled run: wait until the cancel has taken
        # (a CI run once saw none: a 503 to the cancel, sent while the embedded
        # worker was taking the run, had been ignored)
        for run in poll("the demo run", lambda: demo_runs(srv), 30):
            cancel(srv, run)
            srv.wait_status(run, {"cancelled"}, 30)
        yield srv
    finally:
        procs.close()


@pytest.fixture(scope="module")
def finished(server: Server) -> dict[str, Any]:
    run = cli("run", "demo", "extract", "-o", "speed=40", "-o", "fail=false", server=server.url)
    assert run.returncode == 0, run.stderr
    found = RUN_ID_RE.search(run.stderr)
    assert found is not None
    done = server.wait_status(
        {"id": found[0], "workspace_id": "demo", "configuration_id": "extract"}, {"succeeded"}, 30
    )
    return {"cli": run, "run": done["run"]}


def test_run_prints_its_web_url_and_no_ansi_in_a_pipe(
    server: Server, finished: dict[str, Any]
) -> None:
    """Regression (issue 19 item 14): escape codes went into pipes and files."""
    done, run = finished["cli"], finished["run"]
    assert f"web: {server.url}/workspaces/demo/runs/{run['id']}" in done.stderr
    assert "\x1b[" not in done.stdout
    assert len(done.stdout.splitlines()) > 5
    colored = cli(
        "run", "demo", "extract", "-o", "speed=40", "-o", "fail=false", "--color", "always",
        server=server.url,
    )  # fmt: skip
    assert colored.returncode == 0, colored.stderr
    assert "\x1b[" in colored.stdout


def test_runs_ls_in_a_pipe_prints_whole_values(server: Server, finished: dict[str, Any]) -> None:
    """Regression (issue 19 item 13): ids were cut with "…" in pipes, so grep missed them."""
    run = finished["run"]
    listed = cli("runs", "ls", "-w", "demo", server=server.url)
    assert listed.returncode == 0, listed.stderr
    # one run per line on stdout (README); the column names go to stderr
    rows = listed.stdout.splitlines()
    assert all(RUN_ID_RE.match(r) and len(r.split()) == 8 for r in rows), rows
    header = listed.stderr.splitlines()[0]
    assert header.split() == [
        "RUN",
        "CONFIGURATION",
        "STATUS",
        "CREATED",
        "DURATION",
        "EXIT",
        "EVENTS",
        "ROWS",
    ]
    mine = next(r for r in rows if run["id"] in r)
    assert "…" not in listed.stdout
    assert run["created_at"] in mine  # the whole RFC 3339 value, zone included
    assert re.search(r"(Z|[+-]\d\d:\d\d)$", run["created_at"])
    assert re.search(r"\b\d+(\.\d)?(ms|s)\b|\b\d+m\d\ds\b", mine), mine  # a duration
    assert " succeeded " in mine
    as_json = cli("runs", "ls", "-w", "demo", "--json", server=server.url)
    page = json.loads(as_json.stdout)
    assert run["id"] in [r["id"] for r in page["items"]]


def on_a_terminal(args: list[str], url: str, columns: int = 80) -> str:
    """Run a client command with stdout on a pseudo-terminal ``columns`` wide."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = clean_env(RUNEVENTS_SERVER=url)
    env.pop("COLUMNS", None)  # the terminal's own width, as for a user
    proc = subprocess.Popen(
        [sys.executable, "-m", "runevents", *args],
        stdout=follower, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    os.close(follower)
    out = b""
    deadline = time.monotonic() + CLI_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the follower side closed: the command ended
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    return strip_ansi(out.decode("utf-8", "replace")).replace("\r\n", "\n")


def test_runs_ls_on_an_80_column_terminal_keeps_statuses_whole(
    server: Server, finished: dict[str, Any]
) -> None:
    """Regression (issue 19 item 13): at 80 columns the status column was cut to "suc…"."""
    text = on_a_terminal(["runs", "ls", "-w", "demo"], server.url)
    lines = [x for x in text.splitlines() if x.strip()]
    assert all(len(x) <= 80 for x in lines), lines
    assert "STATUS" in lines[0] and "DURATION" in lines[0]
    run = finished["run"]
    short = f"{run['id'][:9]}…{run['id'][-5:]}"
    mine = next(x for x in lines if short in x)
    assert re.search(r"\bsucceeded\b", mine), mine
    assert any(re.search(r"\bcancelled\b", x) for x in lines[1:])
    # times are local, with their zone
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z+\-0-9]+", mine), mine


def test_runs_show_reads_as_text_and_json_with_json(
    server: Server, finished: dict[str, Any]
) -> None:
    run = finished["run"]
    shown = cli("runs", "show", run["id"], server=server.url)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert text.splitlines()[0] == f"{run['id']}  succeeded"
    for label in ("configuration", "created", "duration", "exit code", "phases", "web"):
        assert re.search(rf"^\s+{label}\b", text, re.M), (label, text)
    assert f"{server.url}/workspaces/demo/runs/{run['id']}" in text
    as_json = cli("runs", "show", run["id"], "--json", server=server.url)
    assert json.loads(as_json.stdout) == server.get(run)


def start_following(server: Server, tmp: Path, speed: str) -> tuple[subprocess.Popen[bytes], Path]:
    err = tmp / "run.err"
    with err.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runevents", "run", "demo", "extract",
             "-o", f"speed={speed}", "-o", "fail=false"],
            stdout=subprocess.DEVNULL, stderr=f, stdin=subprocess.DEVNULL,
            env=clean_env(RUNEVENTS_SERVER=server.url),
        )  # fmt: skip
    return proc, err


def test_ctrl_c_on_run_says_the_run_goes_on(server: Server, tmp_path: Path) -> None:
    """Regression (issue 19 item 14): Ctrl-C exited silently; users thought the run had stopped."""
    proc, err = start_following(server, tmp_path, "0.3")
    try:
        run_id = poll("the run id", lambda: RUN_ID_RE.search(err.read_text()), 60)[0]
        run = {"id": run_id, "workspace_id": "demo", "configuration_id": "extract"}
        server.wait_running(run)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        said = err.read_text()
        assert "the run goes on" in said
        assert f"runevents tail {run_id}" in said and f"runevents cancel {run_id}" in said
        assert server.get(run)["run"]["status"] in ACTIVE  # it does go on
        cancel(server, run)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_run_says_reconnecting_when_the_stream_is_lost(
    processes: Processes, tmp_path: Path
) -> None:
    srv = processes.serve(
        "--demo", data_dir=processes.tmp / "data", env={"RUNEVENTS_DEMO_RUN_INTERVAL_SECONDS": "0"}
    )
    proc, err = start_following(srv, tmp_path, "0.3")
    try:
        run_id = poll("the run id", lambda: RUN_ID_RE.search(err.read_text()), 60)[0]
        srv.wait_running({"id": run_id, "workspace_id": "demo", "configuration_id": "extract"})
        processes.remember(srv.descendants())  # the run's child outlives a kill -9
        srv.kill9()
        poll("reconnecting…", lambda: "reconnecting…" in err.read_text(), 60)
        assert proc.poll() is None  # still trying
    finally:
        proc.kill()
        proc.wait()
