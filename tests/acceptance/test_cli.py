"""The client commands as a user runs them, against a live ``runevents serve --demo``.

``runevents run`` (live console, the run's exit code), ``tail`` (live and
``--after N``), ``runs ls`` / ``runs show``, ``events --format ndjson|text`` (the
NDJSON is the stored log byte for byte), ``cancel``; clear errors (exit 2, message
on stderr) for an unreachable server, a malformed or unknown run id, and a
missing, unknown or foreign token on a server started with ``--tokens``.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from runevents.api.app import create_app
from runevents.app import App
from runevents.auth import TokenRegistry
from runevents.cli_format import strip_ansi
from runevents.settings import Settings
from tests.acceptance.conftest import (
    CLI_TIMEOUT,
    Processes,
    Server,
    clean_env,
    cli,
    free_port,
    log_path,
    poll,
)
from tests.fixtures.app import asgi_client, bearer

# every test starts `runevents` processes (a few seconds each on the shared machine)
pytestmark = pytest.mark.slow

ENDED = {"succeeded", "failed", "cancelled"}
#: a bare "run_" + ULID, as the CLI prints it
RUN_ID_RE = re.compile(r"\brun_[0-9A-HJKMNP-TV-Z]{26}\b")


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``runevents serve --demo`` (open mode, embedded worker, SQLite) for the module."""
    procs = Processes(tmp_path_factory.mktemp("cli"))
    try:
        server = procs.serve("--demo", data_dir=procs.tmp / "data")
        # --demo queues a ~30 s run at start; it is not ours: cancel it to spare the CPU
        page = server.http.get("/api/v1/workspaces/demo/runs").json()
        for run in page["items"]:
            if run["status"] not in ENDED:
                server.http.post(
                    f"/api/v1/workspaces/demo/configurations/extract/runs/{run['id']}/cancel"
                )
        yield server
    finally:
        procs.close()


@pytest.fixture(scope="module")
def finished(demo_server: Server) -> dict[str, dict[str, Any]]:
    """Two ended demo runs: ``ok`` (succeeded) and ``bad`` (failed)."""
    ok = demo_server.create_run("demo", "extract", speed=50, fail=False, seed=11)
    bad = demo_server.create_run("demo", "extract", speed=50, fail=True, seed=12)
    assert demo_server.wait_status(ok, ENDED)["run"]["status"] == "succeeded"
    assert demo_server.wait_status(bad, ENDED)["run"]["status"] == "failed"
    return {"ok": demo_server.get(ok)["run"], "bad": demo_server.get(bad)["run"]}


def console(events: list[dict[str, Any]], stream: str | None = None) -> list[str]:
    """The console messages of ``events`` (of one stream, or all)."""
    return [
        e["payload"]["message"]
        for e in events
        if e["type"] == "console.line" and stream in (None, e["payload"]["stream"])
    ]


def expected_stdout(events: list[dict[str, Any]]) -> str:
    """What ``run`` / ``tail`` print on stdout: the stdout console lines, as they are."""
    return "".join(f"{m}\n" for m in console(events, "stdout"))


class LiveCommand:
    """A ``runevents`` command whose stdout is read line by line as it comes."""

    def __init__(self, server: Server, *args: str, stderr_file: Path) -> None:
        self.stderr_file = stderr_file
        with stderr_file.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "runevents", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=clean_env(RUNEVENTS_SERVER=server.url),
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        assert self.popen.stdout is not None
        threading.Thread(target=self._read, args=(self.popen.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.put(raw.decode("utf-8", "replace"))
        self.lines.put(None)

    def first_line(self, timeout: float = CLI_TIMEOUT) -> str:
        line = self.lines.get(timeout=timeout)
        assert line is not None, f"no output; stderr:\n{self.stderr()}"
        self.out.append(line)
        return line

    def finish(self, timeout: float = CLI_TIMEOUT) -> tuple[int, str]:
        """Wait for the exit; (exit code, all of stdout)."""
        deadline = time.monotonic() + timeout
        while (line := self.lines.get(timeout=max(0.1, deadline - time.monotonic()))) is not None:
            self.out.append(line)
        return self.popen.wait(timeout=max(1.0, deadline - time.monotonic())), "".join(self.out)

    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def test_run_follows_the_console_live_and_tail_joins_the_live_run(
    demo_server: Server, tmp_path: Path
) -> None:
    run_cmd = LiveCommand(
        demo_server,
        *("run", "demo", "extract", "-o", "speed=2", "-o", "fail=false", "-o", "seed=21"),
        stderr_file=tmp_path / "run.err",
    )
    tail_cmd = None
    try:
        first = run_cmd.first_line()
        run_id = poll("the run id on stderr", lambda: RUN_ID_RE.search(run_cmd.stderr()), 30)[0]
        answer = demo_server.http.get(f"/api/v1/runs/{run_id}").json()
        run = answer["run"]
        # the first line arrived while the run was still going: it streams live
        assert run["status"] in {"building", "running"}, (run["status"], first)

        tail_cmd = LiveCommand(
            demo_server, "tail", run_id, "--color", "always", stderr_file=tmp_path / "tail.err"
        )
        tail_cmd.first_line()
        status = demo_server.get(run)["run"]["status"]
        assert status in {"building", "running"}, f"tail came too late to follow live: {status}"
        tail_code, tail_out = tail_cmd.finish()
        run_code, run_out = run_cmd.finish()
    finally:
        run_cmd.kill()
        if tail_cmd is not None:
            tail_cmd.kill()

    # The clients exit on the run.completed event; the row is finished right
    # after it (log first, then row: the seal's fsync lies in between), so a
    # GET at that instant may still say running.
    done = demo_server.wait_status(run, ENDED, timeout=30)
    assert done["run"]["status"] == "succeeded", done
    events = demo_server.events(run)
    assert run_code == 0, run_cmd.stderr()
    assert tail_code == 0, tail_cmd.stderr()
    # both printed every stdout line of the run, in order; ANSI codes only where
    # asked for: stdout is a pipe here (issue 19), `tail --color always` keeps them
    assert run_out == strip_ansi(expected_stdout(events))
    assert "\x1b[" not in run_out
    assert tail_out == expected_stdout(events)
    assert "\x1b[" in tail_out
    assert "run.completed: succeeded" in run_cmd.stderr()
    # stderr lines of the job go to stderr
    for message in console(events, "stderr")[:3]:
        assert strip_ansi(message) in run_cmd.stderr()


def test_run_exits_with_the_run_s_exit_code(demo_server: Server) -> None:
    ok = cli("run", "demo", "extract", "-o", "speed=50", "-o", "fail=false", server=demo_server.url)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("\n") > 5
    run_id = RUN_ID_RE.search(ok.stderr)
    assert run_id is not None, ok.stderr

    bad = cli("run", "demo", "extract", "-o", "speed=50", "-o", "fail=true", server=demo_server.url)
    found = RUN_ID_RE.search(bad.stderr)
    assert found is not None, bad.stderr
    found_run = demo_server.http.get(f"/api/v1/runs/{found[0]}").json()["run"]
    # the CLI exits on run.completed; the row finishes just after it (see above)
    run = demo_server.wait_status(found_run, ENDED, timeout=30)["run"]
    assert run["status"] == "failed"
    assert run["exit_code"] not in (None, 0)
    assert bad.returncode == run["exit_code"], bad.stderr
    assert "run.completed: failed" in bad.stderr

    # the command's own failure: 125 (docker run's), never a code a run could exit with
    unknown = cli("run", "demo", "no-such-config", server=demo_server.url)
    assert unknown.returncode == 125
    assert "no-such-config" in unknown.stderr and "HTTP 404" in unknown.stderr


def test_tail_after_n_starts_after_n(demo_server: Server, finished: dict[str, Any]) -> None:
    run = finished["ok"]
    events = demo_server.events(run)
    after = next(e["sequence"] for e in events if e["type"] == "console.line" and e["sequence"] > 5)
    done = cli("tail", run["id"], "--after", str(after), server=demo_server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == strip_ansi(expected_stdout([e for e in events if e["sequence"] > after]))
    assert console(events, "stdout")[0] not in done.stdout.splitlines()[:1]

    bad = cli("tail", finished["bad"]["id"], server=demo_server.url)
    assert bad.returncode == finished["bad"]["exit_code"], bad.stderr


def test_events_ndjson_is_the_stored_log_and_text_is_the_console(
    demo_server: Server, finished: dict[str, Any]
) -> None:
    run = finished["ok"]
    stored = log_path(demo_server.data_dir, run).read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "runevents", "events", run["id"], "--format", "ndjson"],
        capture_output=True,
        timeout=CLI_TIMEOUT,
        env=clean_env(RUNEVENTS_SERVER=demo_server.url),
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == stored

    text = cli("events", run["id"], "--format", "text", server=demo_server.url)
    assert text.returncode == 0, text.stderr
    events = [json.loads(line) for line in stored.splitlines()]
    assert text.stdout == "".join(f"{m}\n" for m in console(events))

    wrong = cli("events", run["id"], "--format", "xml", server=demo_server.url)
    assert wrong.returncode == 2
    assert "ndjson or text" in wrong.stderr


def test_runs_ls_and_show(demo_server: Server, finished: dict[str, Any]) -> None:
    ok, bad = finished["ok"], finished["bad"]
    listed = cli("runs", "ls", "-w", "demo", server=demo_server.url)
    assert listed.returncode == 0, listed.stderr
    ids = RUN_ID_RE.findall(listed.stdout)
    assert ok["id"] in ids and bad["id"] in ids
    assert ids.index(bad["id"]) < ids.index(ok["id"])  # newest first

    failed = cli("runs", "ls", "-w", "demo", "--status", "failed", server=demo_server.url)
    assert failed.returncode == 0, failed.stderr
    assert bad["id"] in failed.stdout and ok["id"] not in failed.stdout

    shown = cli("runs", "show", ok["id"], "--json", server=demo_server.url)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == demo_server.get(ok)


def test_cancel_a_running_run(demo_server: Server) -> None:
    run = demo_server.create_run("demo", "extract", speed=0.5, fail=False, seed=31)
    demo_server.wait_running(run)
    done = cli("cancel", run["id"], server=demo_server.url)
    assert done.returncode == 0, done.stderr
    assert "cancel requested" in done.stderr
    assert demo_server.wait_status(run, ENDED, timeout=60)["run"]["status"] == "cancelled"
    assert cli("tail", run["id"], server=demo_server.url).returncode == 130

    again = cli("cancel", run["id"], server=demo_server.url)
    assert again.returncode == 2
    assert "HTTP 409" in again.stderr


def test_clear_errors_for_an_unreachable_server_and_bad_run_ids(demo_server: Server) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    done = cli("runs", "ls", "-w", "demo", server=nowhere)
    assert done.returncode == 2
    assert f"cannot reach the server at {nowhere}" in done.stderr
    assert "Traceback" not in done.stderr

    malformed = cli("runs", "show", "not-a-run", server=demo_server.url)
    assert malformed.returncode == 2
    assert "invalid run_id" in malformed.stderr

    unknown = cli("tail", "run_" + "0" * 26, server=demo_server.url)
    assert unknown.returncode == 125  # tail exits with the run's code: its own failures 125
    assert "HTTP 404" in unknown.stderr


def new_token(workspace: str) -> tuple[str, str]:
    """``runevents token new``: (the token, its [[token]] entry)."""
    done = cli(
        "token", "new", "--name", f"t-{workspace}", "--role", "write", "--workspace", workspace
    )
    assert done.returncode == 0, done.stderr
    token, entry = done.stdout.strip().split("\n", 1)
    assert entry.startswith("[[token]]"), done.stdout
    return token.strip(), entry


def test_tokens_required_and_scoped(tmp_path: Path) -> None:
    demo_token, demo_entry = new_token("demo")
    other_token, other_entry = new_token("other")
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text(f"{demo_entry}\n\n{other_entry}\n")
    procs = Processes(tmp_path)
    try:
        server = procs.serve("--tokens", str(tokens_file), data_dir=tmp_path / "data")
        missing = cli("runs", "ls", "-w", "demo", server=server.url)
        assert missing.returncode == 2
        assert "HTTP 401" in missing.stderr and "--token" in missing.stderr

        wrong = cli("runs", "ls", "-w", "demo", server=server.url, token="not-a-token")
        assert wrong.returncode == 2 and "HTTP 401" in wrong.stderr

        listed = cli("runs", "ls", "-w", "demo", server=server.url, token=demo_token)
        assert listed.returncode == 0, listed.stderr
        flag = [sys.executable, "-m", "runevents", "runs", "ls", "-w", "demo"]
        flag += ["--server", server.url, "--token", demo_token]
        by_flag = subprocess.run(
            flag, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=clean_env()
        )
        assert by_flag.returncode == 0, by_flag.stderr

        # a run in workspace "other": the demo token may not see it
        r = httpx.post(
            f"{server.url}/api/v1/workspaces/other/configurations/ext/runs",
            json={"external": True},
            headers={"Authorization": f"Bearer {other_token}"},
        )
        assert r.status_code == 201, r.text
        other_run = r.json()["run"]
        foreign = cli("runs", "show", other_run["id"], server=server.url, token=demo_token)
        assert foreign.returncode == 2
        # as unknown as a run that does not exist (issue 15: no 403 naming "other")
        assert "HTTP 404" in foreign.stderr and "other" not in foreign.stderr
        mine = cli("runs", "show", other_run["id"], "--json", server=server.url, token=other_token)
        assert mine.returncode == 0, mine.stderr
        assert json.loads(mine.stdout)["run"]["id"] == other_run["id"]

        # the lookup route itself: 401, 422, 404 (unknown or another workspace's), 200
        lookup = f"{server.url}/api/v1/runs/"
        as_demo = {"Authorization": f"Bearer {demo_token}"}
        assert httpx.get(lookup + other_run["id"]).status_code == 401
        assert httpx.get(lookup + "run_nope", headers=as_demo).status_code == 422
        assert httpx.get(lookup + "run_" + "0" * 26, headers=as_demo).status_code == 404
        answer = httpx.get(lookup + other_run["id"], headers=as_demo)
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "run_not_found"
        as_other = {"Authorization": f"Bearer {other_token}"}
        full = f"{server.url}/api/v1/workspaces/other/configurations/ext/runs/{other_run['id']}"
        got = httpx.get(lookup + other_run["id"], headers=as_other)
        assert got.status_code == 200, got.text
        assert got.json() == httpx.get(full, headers=as_other).json()
    finally:
        procs.close()


# ---- the client's SSE follow, in process (a scripted transport) --------------------------


def sse_frame(sequence: int, type_: str, **payload: Any) -> bytes:
    event = {"type": type_, "sequence": sequence, "payload": payload}
    data = json.dumps(event, ensure_ascii=False).encode()
    return b"id: %d\nevent: ade.event\ndata: %s\n\n" % (sequence, data)


async def test_follow_resumes_after_drops_and_keeps_unicode_line_separators() -> None:
    from runevents.client import AsyncClient

    tricky = "a\u2028b\u2029c\x85d\re"  # str.splitlines() would cut this message in five
    seen: list[str | None] = []
    answers: list[Any] = [
        # opening, two events, then half a frame: the connection drops
        b"retry: 3000\n\n: keepalive\n\n"
        + sse_frame(1, "run.queued")
        + sse_frame(2, "console.line", message=tricky)
        + b'id: 3\nevent: ade.event\ndata: {"type"',
        httpx.ReadError("connection reset"),
        # a server may resend what we have: never yielded twice
        sse_frame(2, "console.line", message=tricky)
        + sse_frame(3, "console.line", message="three")
        + sse_frame(4, "run.completed", status="succeeded"),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("last-event-id"))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(200, content=answer, headers={"content-type": "text/event-stream"})

    run = {"workspace_id": "ws", "configuration_id": "cfg", "id": "run_" + "0" * 26}
    async with AsyncClient(
        "http://test", reconnect_delay=0.0, transport=httpx.MockTransport(handler)
    ) as client:
        events = [event async for event in client.follow(run)]

    assert [e["sequence"] for e in events] == [1, 2, 3, 4]
    assert events[1]["payload"]["message"] == tricky
    assert seen == ["0", "2", "2"]  # each reconnect resumes after the last event received


# ---- GET /api/v1/runs/{run_id}, in process on SQLite and Postgres ----------------------------


async def test_lookup_route_finds_a_run_by_id_within_the_token_s_workspaces(
    api_settings: Settings, runevents_app: App, token_registry: TokenRegistry
) -> None:
    asgi = create_app(api_settings, app=runevents_app, tokens=token_registry)
    manager = runevents_app.manager
    acme = await manager.create_run("acme", "ext", external=True)
    beta = await manager.create_run("beta", "ext", external=True)
    async with asgi_client(asgi) as http:
        r = await http.get(f"/api/v1/runs/{acme.id}")
        assert r.status_code == 401, r.text
        r = await http.get(f"/api/v1/runs/{acme.id}", headers=bearer("tok-read"))
        assert r.status_code == 200, r.text
        full = await http.get(
            f"/api/v1/workspaces/acme/configurations/ext/runs/{acme.id}", headers=bearer("tok-read")
        )
        assert r.json() == full.json()
        assert r.json()["run"]["workspace_id"] == "acme"

        # regression (issue 15): this was a 403 naming the run's workspace ("beta");
        # another workspace's run is as unknown to the token as a run that does not exist
        r = await http.get(f"/api/v1/runs/{beta.id}", headers=bearer("tok-read"))
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        error.pop("request_id", None)  # issue 17: every error body names its request
        assert error == {"code": "run_not_found", "message": f"run {beta.id} not found"}
        assert "beta" not in r.text
        r = await http.get(f"/api/v1/runs/{beta.id}", headers=bearer("tok-admin"))
        assert r.status_code == 200 and r.json()["run"]["id"] == beta.id

        r = await http.get("/api/v1/runs/run_" + "0" * 26, headers=bearer("tok-admin"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "run_not_found"
        for bad in ("run_nope", "run_" + "I" * 26, "..", "%2e%2e%2fetc"):
            r = await http.get(f"/api/v1/runs/{bad}", headers=bearer("tok-admin"))
            assert r.status_code in (404, 422), (bad, r.status_code)
            assert r.json()["error"]["code"] in {"invalid_input", "not_found"}, r.text
        r = await http.get("/api/v1/runs/run_nope", headers=bearer("tok-admin"))
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
