"""Helpers and fixtures for the browser tests of the web UI (test_ui.py).

A real server (``python -m runevents serve`` in a subprocess, on a free port and
a temporary data directory) and one Chromium for the whole session; each test
gets a fresh browser context (cookies, storage) at 1280x800.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
START_TIMEOUT = 60.0  # s: a cold start imports the whole stack on a busy machine
BIG_RUN_LINES = 1_000_000
INGEST_BATCH = 50_000  # lines per POST (well under the 16 MiB batch limit)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running ``runevents serve``; ``client`` talks to its API (with ``token`` if set)."""

    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    token: str | None = None
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=60.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # ---- API helpers ------------------------------------------------------------

    def run_path(self, ws: str, cfg: str, run_id: str) -> str:
        return f"/api/v1/workspaces/{ws}/configurations/{cfg}/runs/{run_id}"

    def create_run(self, ws: str, cfg: str, **body: Any) -> dict[str, Any]:
        r = self.client.post(f"/api/v1/workspaces/{ws}/configurations/{cfg}/runs", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json()["run"])

    def get_run(self, ws: str, cfg: str, run_id: str) -> dict[str, Any]:
        r = self.client.get(self.run_path(ws, cfg, run_id))
        assert r.status_code == 200, r.text
        return dict(r.json())

    def ingest(self, ws: str, cfg: str, run_id: str, events: list[dict[str, Any]] | bytes) -> None:
        body = (
            events
            if isinstance(events, bytes)
            else b"".join(json.dumps(e).encode() + b"\n" for e in events)
        )
        r = self.client.post(
            self.run_path(ws, cfg, run_id) + "/events",
            content=body,
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 200, r.text

    def wait_status(
        self, ws: str, cfg: str, run_id: str, statuses: set[str], timeout: float = 90.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(ws, cfg, run_id)["run"]
            if run["status"] in statuses:
                return dict(run)
            assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
            time.sleep(0.3)

    def external_run(
        self, ws: str, cfg: str, lines: int, *, status: str = "succeeded"
    ) -> dict[str, Any]:
        """An ended external run with ``lines`` console lines (fast: big NDJSON batches)."""
        run = self.create_run(ws, cfg, external=True)
        self.ingest(ws, cfg, run["id"], [{"type": "run.started", "payload": {"status": "running"}}])
        done = 0
        while done < lines:
            n = min(INGEST_BATCH, lines - done)
            self.ingest(ws, cfg, run["id"], console_batch(done + 1, n))
            done += n
        self.ingest(ws, cfg, run["id"], [{"type": "run.completed", "payload": {"status": status}}])
        return self.get_run(ws, cfg, run["id"])["run"]  # type: ignore[no-any-return]


def console_batch(first: int, n: int) -> bytes:
    """NDJSON of ``n`` console lines numbered from ``first``: stdout, every 10th on stderr, some ANSI."""
    out = bytearray()
    for i in range(first, first + n):
        if i % 10 == 0:
            payload = {
                "scope": "run",
                "stream": "stderr",
                "level": "warning",
                "message": f"warning: line {i} is odd",
            }
        elif i % 7 == 0:
            payload = {
                "scope": "run",
                "stream": "stdout",
                "level": "info",
                "message": f"\x1b[32mok\x1b[0m line {i} processed",
            }
        else:
            payload = {
                "scope": "run",
                "stream": "stdout",
                "level": "info",
                "message": f"line {i} of the big log",
            }
        out += json.dumps(
            {"type": "console.line", "payload": payload}, separators=(",", ":")
        ).encode()
        out += b"\n"
    return bytes(out)


def start_server(
    tmp: Path,
    *,
    demo: bool = True,
    tokens: list[dict[str, Any]] | None = None,
    token: str | None = None,
) -> Server:
    """Start ``runevents serve`` and wait until it answers /api/v1/health."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    data_dir = tmp / "data"
    args = [
        sys.executable,
        "-m",
        "runevents",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    if demo:
        args.append("--demo")
    if tokens is not None:
        tokens_file = tmp / "tokens.toml"
        tokens_file.write_text(tokens_toml(tokens))
        args += ["--tokens", str(tokens_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNEVENTS_")}
    log_path = tmp / "server.log"
    log = log_path.open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    log.close()
    server = Server(
        url=f"http://127.0.0.1:{port}",
        data_dir=data_dir,
        process=process,
        log_path=log_path,
        token=token,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"runevents serve exited with {process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/api/v1/health", timeout=2).status_code == 200:
                return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"runevents serve did not start:\n{server.log()}")
        time.sleep(0.2)


def tokens_toml(tokens: list[dict[str, Any]]) -> str:
    """A tokens file (contract section 7) for {"name", "secret", "role", "workspaces"} entries."""
    out = []
    for t in tokens:
        digest = hashlib.sha256(t["secret"].encode()).hexdigest()
        out.append(
            f'[[token]]\nname = "{t["name"]}"\nhash = "sha256:{digest}"\nrole = "{t["role"]}"\n'
            f"workspaces = {json.dumps(t['workspaces'])}\n"
        )
    return "\n".join(out)


def run_retention(server: Server) -> None:
    """``runevents retention --older-than 0s`` on the server's data (safe while it runs)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runevents",
            "retention",
            "--older-than",
            "0s",
            "--data-dir",
            str(server.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("RUNEVENTS_")},
    )
    assert done.returncode == 0, (
        f"retention failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    )


# ---- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An open-mode server (loopback, no tokens) with the demo configuration."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    server = start_server(tmp_path_factory.mktemp("ui-server"))
    yield server
    server.stop()


WRITER_TOKEN = "ui-test-writer-token-0123456789"
READER_TOKEN = "ui-test-reader-token-0123456789"
ADMIN_TOKEN = "ui-test-admin-token-0123456789"


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with auth on: a writer and a reader on workspace "team", an admin on all."""
    server = start_server(
        tmp_path_factory.mktemp("ui-auth-server"),
        demo=False,
        tokens=[
            {"name": "ui-writer", "secret": WRITER_TOKEN, "role": "write", "workspaces": ["team"]},
            {"name": "ui-reader", "secret": READER_TOKEN, "role": "read", "workspaces": ["team"]},
            {"name": "ui-admin", "secret": ADMIN_TOKEN, "role": "admin", "workspaces": ["*"]},
        ],
        token=ADMIN_TOKEN,
    )
    yield server
    server.stop()


# Module scope, not session: Playwright's sync API keeps an event loop running
# on the main thread while it is open, which breaks every asyncio test after it.
@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_path, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh context and page at 1280x800; fails the test on an uncaught page error."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="session")
def big_run(ui_server: Server) -> dict[str, Any]:
    """An ended external run of 1,000,000 console lines (+ run.started, run.completed)."""
    started = time.monotonic()
    run = ui_server.external_run("perf", "bulk", BIG_RUN_LINES)
    run["_ingest_seconds"] = time.monotonic() - started
    return run


STREAM_URL = re.compile(r"/events\?stream=true")


class StreamCutter:
    """Breaks a run view's SSE connection on purpose, following ``plan``.

    One action per stream request, in order; requests past the plan pass:

    * ``"cut"``: answer with the events the log holds now, then end the response.
      A browser EventSource reconnects by itself with ``Last-Event-ID`` (a header
      added below Playwright's interception, so the proof is that the server,
      asked for the original ``after_sequence=0`` URL, sends nothing twice).
    * ``"fail"``: answer 503. The EventSource closes for good; the view must
      reopen the stream itself, after the last sequence it holds.
    * ``"pass"``: let the request through to the server.
    """

    def __init__(self, server: Server, plan: list[str]) -> None:
        self.server = server
        self.plan = plan
        self.urls: list[str] = []
        self.cut_sequences: list[int] = []

    def install(self, page: Any) -> None:
        page.route(STREAM_URL, self.handle)

    def uninstall(self, page: Any) -> None:
        page.unroute(STREAM_URL, self.handle)

    def handle(self, route: Any) -> None:
        request = route.request
        action = self.plan[len(self.urls)] if len(self.urls) < len(self.plan) else "pass"
        self.urls.append(request.url)
        if action == "cut":
            path = request.url.split("/events?", 1)[0].split(self.server.url, 1)[1]
            page = self.server.client.get(path + "/events", params={"limit": 5000}).json()
            self.cut_sequences = [e["sequence"] for e in page["events"]]
            body = "retry: 200\n\n" + "".join(
                f"id: {e['sequence']}\nevent: ade.event\ndata: {json.dumps(e)}\n\n"
                for e in page["events"]
            )
            route.fulfill(status=200, body=body, headers={"Content-Type": "text/event-stream"})
        elif action == "fail":
            route.fulfill(status=503, body="unavailable", headers={"Content-Type": "text/plain"})
        else:
            route.continue_()


def view_state(page: Any) -> dict[str, Any]:
    """The run view's debug snapshot (window.__runevents.view())."""
    return page.evaluate("() => window.__runevents.view()")  # type: ignore[no-any-return]


def wait_view(page: Any, condition: str, timeout: float = 30_000) -> Any:
    """Wait until ``condition`` (JS over ``v``, the view snapshot) holds; return the snapshot.

    Null-safe on purpose: right after a navigation or a reload the page has no
    view yet, and a predicate that dereferences it throws instead of waiting
    (Playwright ends the wait with that error, and the page records it).
    """
    page.wait_for_function(
        f"() => {{ const v = window.__runevents && window.__runevents.view(); return v && ({condition}); }}",
        timeout=timeout,
    )
    return view_state(page)
