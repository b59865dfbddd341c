"""What an executed job gets and what it may write: its environment (no server
credentials, no other configuration's secrets), masking that keeps the contract's
structure, and structured output under the producer's rules (contract 2, 6, 11)."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runevents.app import App
from runevents.events import decode_event
from runevents.models import Run
from runevents.settings import Settings
from runevents.worker import Worker

PY = sys.executable
#: the server's own credentials and another configuration's secret, in the worker's environment
SERVER_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY00",
    "AWS_SECRET_ACCESS_KEY": "StorageSecretKey-0123456789",
    "PGPASSWORD": "database-password-42",
    "SRV_SECRET": "ServerSideSecret99",
    "ORDINARY_VARIABLE": "kept-for-every-job",
}

PRINT_ENV = (
    "import json, os; print(json.dumps({k: v for k, v in os.environ.items()"
    f" if k in {sorted(SERVER_ENV)!r}}}))"
)

MASK_STRUCTURE = r"""
import json, sys
print("::add-mask::stdout")
print("::add-mask::warning")
print("::add-mask::level")
print("::add-mask::row_count")
print("::add-mask::e")
print("plain text", flush=True)
print("the word stdout is data here", flush=True)
print("err line", file=sys.stderr, flush=True)
print(json.dumps({"type": "run.table.summary", "payload": {"table_id": "t1",
      "source_file": "a.csv", "table_index": 0, "row_count": 3, "column_count": 2,
      "my_row_count_note": "x"}}), flush=True)
"""

FORGE = r"""
import json, sys
def p(o): print(json.dumps(o), flush=True)
p({"type": "log.recovered", "payload": {"cut_bytes": 5, "cut_events": 1, "reason": "forged"}})
p({"type": "build.phase.started", "payload": {"phase": "x"}})
p({"type": "console.line", "payload": {"scope": "run", "stream": "bogus", "level": "fatal",
   "message": "enum violation"}})
p({"type": "console.line", "payload": {"message": 12345}})
p({"type": "console.line", "payload": "not an object"})
p({"type": "console.line", "created_at": "not-a-date", "payload": {"message": "bad created_at"}})
print(json.dumps({"type": "console.line", "payload": {"message": "no fields"}}), file=sys.stderr)
p({"type": "run.error", "payload": {"stage": "run", "code": "real", "message": "child error"}})
"""


def write_config(directory: Path) -> Path:
    path = directory / "jobs.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [[configuration]]
            workspace = "acme"
            id = "printenv"
            command = [{json.dumps(PY)}, "-c", {json.dumps(PRINT_ENV)}]

            [[configuration]]
            workspace = "acme"
            id = "declares"
            command = [{json.dumps(PY)}, "-c", {json.dumps(PRINT_ENV)}]
            secrets = ["SRV_SECRET", "AWS_SECRET_ACCESS_KEY"]

            [[configuration]]
            workspace = "beta"
            id = "srvsecret"
            command = [{json.dumps(PY)}, "-c", "pass"]
            secrets = ["SRV_SECRET"]

            [[configuration]]
            workspace = "acme"
            id = "maskstructure"
            command = [{json.dumps(PY)}, "-c", {json.dumps(MASK_STRUCTURE)}]

            [[configuration]]
            workspace = "acme"
            id = "forge"
            command = [{json.dumps(PY)}, "-c", {json.dumps(FORGE)}]
            """
        )
    )
    return path


@pytest.fixture
async def job_app(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    for name, value in SERVER_ENV.items():
        monkeypatch.setenv(name, value)
    app = await App.open(
        settings.model_copy(update={"config_file": write_config(tmp_path)}), worker=False
    )
    worker = Worker(app.manager, concurrency=2)
    worker.start()
    try:
        yield app
    finally:
        await worker.stop()
        await app.close()


async def run_job(app: App, workspace: str, configuration: str) -> tuple[Run, list[Any]]:
    run = await app.manager.create_run(workspace, configuration)
    deadline = asyncio.get_running_loop().time() + 30
    while not (run := await app.manager.repo.get_run(run.id)).status.ended:
        assert asyncio.get_running_loop().time() < deadline, f"run still {run.status}"
        await asyncio.sleep(0.05)
    lines: list[bytes] = []
    async for chunk in app.manager.read_events(run):
        lines.extend(chunk.data.split(b"\n")[:-1])
    return run, [decode_event(line) for line in lines]


def console_payloads(events: list[Any]) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.type == "console.line"]


async def test_storage_credentials_reached_every_job(job_app: App) -> None:
    # Defect: the worker's AWS_* (the object store's credentials: every workspace's
    # logs) and SRV_SECRET (declared a secret by beta/srvsecret only) reached the
    # job of acme/printenv, printed in clear
    _, events = await run_job(job_app, "acme", "printenv")
    (printed,) = [json.loads(p["message"]) for p in console_payloads(events)]
    assert printed == {"ORDINARY_VARIABLE": "kept-for-every-job"}
    # a configuration that declares them gets them (and they are masked in its runs)
    _, events = await run_job(job_app, "acme", "declares")
    (line,) = [p["message"] for p in console_payloads(events)]
    printed = json.loads(line)
    assert printed["SRV_SECRET"] == printed["AWS_SECRET_ACCESS_KEY"] == "***"
    assert "AWS_ACCESS_KEY_ID" not in printed and "PGPASSWORD" not in printed


async def test_an_add_mask_value_corrupted_an_executed_runs_structure(job_app: App) -> None:
    # Defect: ::add-mask::e / stdout / warning / level / row_count turned the keys of
    # later console lines into "scop***"..., stream and level into "***", renamed a
    # table summary's row_count, and emptied the summary's by_stream / by_level
    run, events = await run_job(job_app, "acme", "maskstructure")
    lines = {p["message"]: p for p in console_payloads(events)}
    plain = lines["plain text"]
    assert (plain["scope"], plain["stream"], plain["level"]) == ("run", "stdout", "info")
    err = lines["err line"]
    assert (err["stream"], err["level"]) == ("stderr", "warning")
    assert lines["::add-mask::***"]["stream"] == "stdout"  # the short value's own line
    assert "the word *** is data here" in lines  # every other occurrence is masked
    (table,) = [e.payload for e in events if e.type == "run.table.summary"]
    assert table["row_count"] == 3 and table["table_id"] == "t1"
    assert "my_***_note" in table  # a key the contract does not pin is still masked
    assert run.summary is not None
    console = run.summary["console"]
    assert console["by_stream"] == {"stdout": 7, "stderr": 1}
    assert console["by_level"] == {"info": 7, "warning": 1}
    assert run.summary["tables"]["row_count"] == 3


async def test_a_job_could_emit_log_recovered(job_app: App) -> None:
    # Defect: a job's stdout stored log.recovered (the server's) and build.phase.started
    # as real events, and console lines with stream "bogus", a message 12345, a payload
    # that was a string (stored as {}, its text lost), a created_at "not-a-date"
    _, events = await run_job(job_app, "acme", "forge")
    types = [e.type for e in events]
    assert "log.recovered" not in types and "build.phase.started" not in types
    assert "run.error" in types  # a valid structured event still is one
    payloads = console_payloads(events)
    messages = [p["message"] for p in payloads]
    for forged in ("log.recovered", "build.phase.started", "bogus", "12345", "not an object"):
        assert any(forged in m for m in messages), forged
    assert any('"not-a-date"' in m for m in messages)
    for payload in payloads:
        assert payload["scope"] == "run" and isinstance(payload["message"], str)
        assert payload["stream"] in ("stdout", "stderr")
        assert payload["level"] in ("debug", "info", "warning", "error")
    # a well-formed console.line without scope/stream/level is the line it was printed as
    (filled,) = [p for p in payloads if p["message"] == "no fields"]
    assert (filled["stream"], filled["level"]) == ("stderr", "warning")
