"""Helpers for acceptance tests that drive ``runevents`` as a user does: real processes.

- :class:`Processes` (fixture ``processes``): starts ``runevents serve`` /
  ``runevents worker`` / any command in its own process group, with a clean
  environment (no developer ``RUNEVENTS_*``), output to a log file; at teardown it
  kills every process it started *and every descendant it saw* (a run's child
  has a session of its own, so it is not in its worker's process group), also
  when the test failed.
- :func:`cli`: one ``runevents`` client command, run to completion.
- :func:`poll`: wait for a condition without fixed sleeps.

``ui_support.start_server`` (the UI tests' helper) starts a server too, but
always on the embedded SQLite database, with an embedded worker and without
extra environment; the worker tests need ``--database-url``, ``--workers 0``, a
short lease and a standalone worker beside it, so this module has its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

# in-process app fixtures (test_cli's lookup-route test), as tests/integration/api does
from tests.fixtures.app import api_settings, runevents_app, token_registry  # noqa: F401

T = TypeVar("T")

#: a cold start imports the whole stack; the 2 shared cores are often busy
START_TIMEOUT = 90.0
#: a client command (import ~1-3 s under load, then the request)
CLI_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a child: no ``RUNEVENTS_*`` of the developer, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNEVENTS_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def poll(
    what: str, check: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.1
) -> T:
    """Call ``check`` until it returns a truthy value, and return it (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def run_path(run: dict[str, Any]) -> str:
    return (
        f"/api/v1/workspaces/{run['workspace_id']}/configurations/"
        f"{run['configuration_id']}/runs/{run['id']}"
    )


def log_path(data_dir: Path, run: dict[str, Any]) -> Path:
    """Where the run's plain log lives under a local data dir (contract section 3)."""
    ws, run_id = str(run["workspace_id"]), str(run["id"])
    return data_dir / "workspaces" / ws / "runs" / run_id / "logs" / "events.ndjson"


@dataclass
class Proc:
    """A process started by :class:`Processes`; stdout and stderr go to ``log_file``."""

    name: str
    popen: subprocess.Popen[bytes]
    log_file: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self, tail: int = 6000) -> str:
        return self.log_file.read_text(errors="replace")[-tail:]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def descendants(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return list(psutil.Process(self.pid).children(recursive=True))
        return []

    def kill9(self) -> None:
        """SIGKILL the process alone (not its group: that is what a crash looks like)."""
        os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)


@dataclass
class Server(Proc):
    """A ``runevents serve``; ``http`` talks to its API (with the token, if any)."""

    url: str = ""
    data_dir: Path = Path()
    token: str | None = None
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=60.0)

    def create_run(self, ws: str, cfg: str, **options: Any) -> dict[str, Any]:
        r = self.http.post(
            f"/api/v1/workspaces/{ws}/configurations/{cfg}/runs",
            json={"mode": "execute", "options": options},
        )
        assert r.status_code == 201, r.text
        return dict(r.json()["run"])

    def get(self, run: dict[str, Any]) -> dict[str, Any]:
        """``{"run", "summary"}`` of ``run``."""
        r = self.http.get(run_path(run))
        assert r.status_code == 200, r.text
        return dict(r.json())

    def events(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        r = self.http.get(
            run_path(run) + "/events",
            params={"limit": 5000},
            headers={"Accept": "application/json"},
        )
        assert r.status_code == 200, r.text
        return list(r.json()["events"])

    def wait_status(
        self, run: dict[str, Any], statuses: set[str], timeout: float = 120.0
    ) -> dict[str, Any]:
        """Poll until the run's status is one of ``statuses``; ``{"run", "summary"}``."""

        def check() -> dict[str, Any] | None:
            answer = self.get(run)
            return answer if answer["run"]["status"] in statuses else None

        return poll(f"run {run['id']} to be {'/'.join(sorted(statuses))}", check, timeout)

    def wait_running(
        self, run: dict[str, Any], console_lines: int = 3, timeout: float = 120.0
    ) -> None:
        """Poll until the run's command runs: it printed ``console_lines`` lines (scope run).

        Fails if the run ends first. (The row's ``event_count`` is only brought
        up to date when the run ends, so this reads the log.)
        """

        def check() -> bool:
            r = self.http.get(
                run_path(run) + "/events",
                params={"limit": 5000},
                headers={"Accept": "application/json"},
            )
            assert r.status_code == 200, r.text
            events = r.json()["events"]
            assert all(e["type"] != "run.completed" for e in events), f"{run['id']} ended early"
            lines = [
                e
                for e in events
                if e["type"] == "console.line" and e["payload"].get("scope") == "run"
            ]
            return len(lines) >= console_lines

        poll(f"run {run['id']} to print {console_lines} lines", check, timeout)


class Processes:
    """Starts processes for one test and kills them all (and their descendants) after it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Proc] = []
        #: pids seen as descendants (a run's child has its own session)
        self.strays: dict[int, psutil.Process] = {}

    def spawn(
        self, name: str, argv: Sequence[str], env: dict[str, str], cls: Any = Proc, **kw: Any
    ) -> Any:
        log_file = self.tmp / f"{name}.log"
        with log_file.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.tmp,
                start_new_session=True,
            )
        proc = cls(name=name, popen=popen, log_file=log_file, **kw)
        self.started.append(proc)
        return proc

    def remember(self, procs: Sequence[psutil.Process]) -> None:
        """Kill these too at teardown (if they are still the same processes)."""
        for p in procs:
            self.strays[p.pid] = p

    def serve(
        self,
        *args: str,
        name: str = "serve",
        data_dir: Path,
        env: dict[str, str] | None = None,
        token: str | None = None,
        port: int | None = None,
    ) -> Server:
        """``runevents serve --host 127.0.0.1 --port FREE --data-dir D ARGS``; waits for health.

        ``port``: this one instead of a free one (a server restarted where it listened)."""
        port = port or free_port()
        argv = [
            sys.executable, "-m", "runevents", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
            "--log-level", "warning", *args,
        ]  # fmt: skip
        server: Server = self.spawn(
            name, argv, clean_env(**(env or {})), cls=Server,
            url=f"http://127.0.0.1:{port}", data_dir=data_dir, token=token,
        )  # fmt: skip

        def healthy() -> bool:
            if not server.alive():
                pytest.fail(f"{name} exited with {server.popen.returncode}:\n{server.log()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{server.url}/api/v1/health", timeout=2).status_code == 200
            return False

        poll(f"{name} to answer /api/v1/health", healthy, START_TIMEOUT, interval=0.2)
        return server

    def worker(
        self, *args: str, name: str = "worker", data_dir: Path, env: dict[str, str] | None = None
    ) -> tuple[Proc, str]:
        """``runevents worker --data-dir D ARGS``; waits until it says it started. -> (proc, worker id)."""
        argv = [sys.executable, "-m", "runevents", "worker", "--data-dir", str(data_dir), *args]
        proc: Proc = self.spawn(name, argv, clean_env(**(env or {})))

        def started() -> str | None:
            if not proc.alive():
                pytest.fail(f"{name} exited with {proc.popen.returncode}:\n{proc.log()}")
            m = re.search(r"runevents worker (\S+) started", proc.log())
            return m.group(1) if m else None

        worker_id = poll(f"{name} to start", started, START_TIMEOUT, interval=0.2)
        return proc, worker_id

    def close(self) -> None:
        for proc in self.started:
            self.remember(proc.descendants())
        for proc in reversed(self.started):
            if isinstance(proc, Server):
                proc.http.close()
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.started):
            try:
                proc.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=15)
        for p in self.strays.values():
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    p.kill()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start ``runevents`` processes; all of them and their descendants die after the test."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


def cli(
    *args: str,
    server: str | None = None,
    token: str | None = None,
    timeout: float = CLI_TIMEOUT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one ``runevents`` client command to completion (text output)."""
    extra = dict(env or {})
    if server is not None:
        extra["RUNEVENTS_SERVER"] = server
    if token is not None:
        extra["RUNEVENTS_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "runevents", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        env=clean_env(**extra),
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    """A 24 MiB tmpfs (root only): a real disk that fills up."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        if os.environ.get("RUNEVENTS_TEST_STRICT") == "1":
            pytest.fail(f"cannot mount a tmpfs: {result.stderr.decode()}")
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
