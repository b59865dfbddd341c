"""Schemathesis, from outside, over every operation of the published OpenAPI document.

The server runs under uvicorn in a thread (its own event loop owns the App)
and the schemathesis command line (the current major version) tests it over
real HTTP, as a user would: every check, every phase (examples, coverage,
fuzzing, stateful), every operation the document lists -- routes added later
included, nothing here names them. Its JSON report must show zero failures,
zero errors, every operation tested, and the ingest write path reached
(answered 200, not only refused). Bounded and repeatable: the settings of
``schemathesis.toml`` beside this file (fixed seed, deterministic generation,
a fixed number of examples), which a developer can run by hand too.

Two modes: with tokens (the realistic one: auth checks included), on SQLite
and Postgres; and open mode, where the document declares no security at all.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from runevents.api.app import create_app
from runevents.auth import TokenRegistry
from runevents.settings import Settings
from tests.fixtures.app import bearer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
CONFIG = HERE / "schemathesis.toml"
HOOKS = "tests.integration.api.schemathesis_hooks"
INGEST = (
    "POST /api/v1/workspaces/{workspace_id}/configurations/{configuration_id}/runs/{run_id}/events"
)
#: the whole schemathesis run may take this long before the test gives up (seconds;
#: below pytest's own timeout, so the output is shown)
RUN_TIMEOUT = 280
TOKEN = "tok-admin"


def quick_configs(directory: Path) -> Path:
    """A configuration whose runs end at once (their SSE streams end with them)."""
    path = directory / "fuzz-configs.toml"
    path.write_text(
        '[[configuration]]\nworkspace = "acme"\nid = "hello"\ncommand = ["echo", "hi"]\n'
    )
    return path


@pytest.fixture
def fuzz_settings(api_settings: Settings, tmp_path: Path) -> Settings:
    """The API settings, with a configuration that ends at once and prompt keepalives.

    Keepalives let schemathesis stop reading an endless stream (a live external
    run's) once its request timeout has passed.
    """
    return api_settings.model_copy(
        update={"config_file": quick_configs(tmp_path), "keepalive_seconds": 0.5}
    )


class ThreadedServer:
    """The API under uvicorn in a thread of its own."""

    def __init__(self, settings: Settings, tokens: TokenRegistry | None) -> None:
        asgi = create_app(settings, tokens=tokens)
        config = uvicorn.Config(asgi, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="api-under-fuzz", daemon=True)
        self.url = ""

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not stop"


def live_external_run(url: str, headers: dict[str, str]) -> dict[str, Any]:
    """A producer-driven run for the ingest operation to append to."""
    answer = httpx.post(
        f"{url}/api/v1/workspaces/producers/configurations/fuzz/runs",
        json={"external": True},
        headers=headers,
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    run: dict[str, Any] = answer.json()["run"]
    return run


def run_config(tmp_path: Path, run: dict[str, Any]) -> Path:
    """``schemathesis.toml`` plus: ingest appends to ``run`` (a live run), not to one it guessed.

    Without it, ingest meets only runs that ended (executed ones end at once,
    and other operations cancel the external ones): 409 every time, and the
    batches would never be accepted, so their positive checks would never run.
    """
    path = tmp_path / "schemathesis.toml"
    path.write_text(
        CONFIG.read_text()
        + "\n[[operations]]\n"
        + f"include-name = {json.dumps(INGEST)}\n"
        + "parameters = { "
        + f'"path.workspace_id" = "{run["workspace_id"]}", '
        + f'"path.configuration_id" = "{run["configuration_id"]}", '
        + f'"path.run_id" = "{run["id"]}" }}\n'
    )
    return path


def schemathesis_run(url: str, config: Path, report_dir: Path, *extra: str) -> dict[str, Any]:
    """Run the schemathesis CLI against ``url``; its JSON report (its output on failure)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
        "SCHEMATHESIS_HOOKS": HOOKS,
    }
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--no-color",
        "--config-file",
        str(config),
        "run",
        f"{url}/api/v1/openapi.json",
        "--report",
        "json",
        "--report-json-path",
        str(report_dir / "report.json"),
        *extra,
    ]
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    output = done.stdout + done.stderr
    report_path = report_dir / "report.json"
    assert report_path.exists(), output
    report: dict[str, Any] = json.loads(report_path.read_text())
    report["output"] = output
    return report


def assert_clean(report: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """Zero failures, zero errors, every operation and phase run to completion.

    Also nothing the server logged as an error: a failure behind an answer that
    looked fine (a worker that could not start a run it accepted) counts too.
    """
    output = report["output"]
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged == [], logged
    print(f"schemathesis: {report['test_cases']} in {report['running_time']:.1f} s")
    assert report["schemathesis_version"].startswith("4."), report["schemathesis_version"]
    assert report["exit_code"] == 0, output
    assert report["failures"] == [] and report["errors"] == [], output
    operations = report["operations"]
    assert operations["tested"] == operations["total"] == operations["selected"], output
    assert operations["errored"] == 0 and operations["skipped"] == 0, output
    assert report["complete"] and report["stop_reason"] == "completed", output
    for phase in ("examples", "coverage", "fuzzing", "stateful"):
        assert report["phases"][phase]["status"] == "success", (phase, output)


def accepted(report: dict[str, Any], operation: str) -> int:
    """How many of the operation's schema-valid requests got a 2xx, over all phases."""
    rates = report["valid_rates"].get(operation, {})
    return sum(phase.get("accepted", 0) for phase in rates.values())


@pytest.mark.slow
def test_schemathesis_finds_nothing_with_a_token(
    fuzz_settings: Settings,
    token_registry: TokenRegistry,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The realistic mode: every request carries an admin token; the auth checks run too."""
    headers = bearer(TOKEN)
    with ThreadedServer(fuzz_settings, token_registry) as server:
        run = live_external_run(server.url, headers)
        report = schemathesis_run(
            server.url,
            run_config(tmp_path, run),
            tmp_path,
            "--header",
            f"Authorization: {headers['Authorization']}",
        )
    assert_clean(report, caplog)
    assert accepted(report, INGEST) > 0, report["output"]


@pytest.mark.slow
def test_schemathesis_finds_nothing_in_open_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No tokens: the document declares no security, so no check expects a 401 (SQLite only)."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'open.db'}",
        config_file=quick_configs(tmp_path),
        keepalive_seconds=0.5,
        maintenance_interval_seconds=0,
        session_secret="test-session-secret-0123456789abcdef",
    )
    with ThreadedServer(settings, None) as server:
        document = httpx.get(f"{server.url}/api/v1/openapi.json").json()
        assert "securitySchemes" not in document["components"]
        run = live_external_run(server.url, {})
        report = schemathesis_run(server.url, run_config(tmp_path, run), tmp_path)
    assert_clean(report, caplog)
    assert accepted(report, INGEST) > 0, report["output"]
