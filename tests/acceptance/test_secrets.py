"""Secrets never reach a log (contract 11), checked from outside: ``runevents serve`` as a user runs it.

A configured run prints its secrets every way a job leaks them -- raw, inside
JSON telemetry, on stderr, in its build step, base64- and percent-encoded, one
line split over two writes -- and adds a mask mid-run with ``::add-mask::``.
Then nothing holds a secret: not a byte of any file under the data dir (the
logs, the index, the SQLite database and its WAL), not the compressed frames
after ``runevents compact`` (decompressed), and no read form (run, lookup,
JSON pages, NDJSON, SSE live and replayed, search).
"""

from __future__ import annotations

import base64
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import zstandard

from tests.acceptance.conftest import Processes, Server, cli, run_path

DB_PASSWORD = "db-Pa55word/2026+x="
API_TOKEN = "api-token-7f3a9c1e5b"
LATE = "late-" + "session-4417"  # the value the job adds with ::add-mask::

JOB = textwrap.dedent(
    """
    import base64, json, os, sys, time, urllib.parse
    pw, tok = os.environ["DB_PASSWORD"], os.environ["API_TOKEN"]
    def out(*a): print(*a, flush=True)
    out("connecting with password", pw)
    out(json.dumps({"type": "run.table.summary", "payload": {
        "table_id": "t1", "source_file": "/secrets/" + pw + ".xlsx", "row_count": 3,
        "extra": {"headers": ["Authorization: Bearer " + tok]}}}))
    print("stderr says", tok, file=sys.stderr, flush=True)
    out("b64", base64.b64encode(pw.encode()).decode())
    out("basic", base64.b64encode(("admin:" + pw).encode()).decode())
    out("url", urllib.parse.quote(tok + "&" + pw, safe=""))
    sys.stdout.write("split across writes: " + pw[:6]); sys.stdout.flush(); time.sleep(0.5)
    sys.stdout.write(pw[6:] + " (end)\\n"); sys.stdout.flush()
    late = "late-" + "session-4417"
    time.sleep(0.5)
    out("::add-mask::" + late)
    time.sleep(0.5)
    out("mid-run value", late, base64.b64encode(late.encode()).decode())
    print("stderr late", late, file=sys.stderr, flush=True)
    out(json.dumps({"type": "run.error", "payload": {"stage": "run", "code": "auth",
        "message": "login as admin:" + pw + " refused"}}))
    sys.exit(2)
    """
)


def forms(value: str) -> list[str]:
    raw = value.encode()
    return [value, base64.b64encode(raw).decode(), quote(value, safe="")]


#: every byte string that must not appear anywhere
FORBIDDEN = [f.encode() for v in (DB_PASSWORD, API_TOKEN, LATE) for f in forms(v)]


def leaks(data: bytes) -> list[bytes]:
    return [f for f in FORBIDDEN if f in data]


def write_config(tmp_path: Path) -> Path:
    (tmp_path / "job.py").write_text(JOB)
    py = sys.executable
    build = (
        f'["{py}", "-c", "import os; print(\'build uses\', os.environ[\'DB_PASSWORD\'])"], '
        f'["{py}", "-c", "import os, sys; print(os.environ[\'API_TOKEN\'], file=sys.stderr)"]'
    )
    path = tmp_path / "runevents.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [[configuration]]
            workspace = "acme"
            id = "leaky"
            command = ["{py}", "job.py"]
            env = {{ DB_PASSWORD = "{DB_PASSWORD}" }}
            secrets = ["DB_PASSWORD", "API_TOKEN"]

            [configuration.build]
            commands = [{build}]
            """
        )
    )
    return path


def every_file(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def read_forms(server: Server, run: dict[str, Any]) -> dict[str, bytes]:
    path = run_path(run)
    http = server.http
    answers = {
        "run": http.get(path),
        "lookup": http.get(f"/api/v1/runs/{run['id']}"),
        "list": http.get("/api/v1/workspaces/acme/runs"),
        "json pages": http.get(path + "/events", params={"limit": 5000}),
        "ndjson": http.get(path + "/events", headers={"Accept": "application/x-ndjson"}),
        "sse replay": http.get(path + "/events", params={"stream": "true"}),
        "search ***": http.get(path + "/search", params={"q": "***"}),
        "search secret": http.get(path + "/search", params={"q": DB_PASSWORD}),
    }
    for name, response in answers.items():
        assert response.status_code == 200, (name, response.status_code, response.text[:300])
    return {name: response.content for name, response in answers.items()}


@pytest.mark.slow
def test_a_configured_run_leaves_no_secret_anywhere(tmp_path: Path, processes: Processes) -> None:
    data_dir = tmp_path / "data"
    server = processes.serve(
        "--config", str(write_config(tmp_path)), data_dir=data_dir, env={"API_TOKEN": API_TOKEN}
    )
    # live: the run's own SSE stream from its creation to run.completed
    with server.http.stream(
        "POST",
        "/api/v1/workspaces/acme/configurations/leaky/runs",
        params={"stream": "true"},
        json={"mode": "execute"},
        timeout=120,
    ) as live:
        assert live.status_code == 200
        live_bytes = b"".join(live.iter_bytes())
    assert b'"run.completed"' in live_bytes and leaks(live_bytes) == []
    runs = server.http.get("/api/v1/workspaces/acme/runs").json()["items"]
    (run,) = runs
    answer = server.wait_status(run, {"failed"})

    # the masking happened: the lines are there, with *** where the values were
    events = server.events(run)
    messages = [e["payload"]["message"] for e in events if e["type"] == "console.line"]
    for expected in (
        "build uses ***",
        "***",  # the build's stderr line
        "connecting with password ***",
        "stderr says ***",
        "b64 ***",
        "split across writes: *** (end)",
        "::add-mask::***",
        "mid-run value *** ***",
        "stderr late ***",
    ):
        assert expected in messages, (expected, messages)
    assert any(m.startswith("url ***%26***") for m in messages), messages
    summary = answer["summary"]
    assert summary["console"]["masked"] >= 14
    assert summary["failure"]["message"] == "login as admin:*** refused"

    # every read form, and every byte under the data dir
    for name, body in read_forms(server, run).items():
        assert leaks(body) == [], name
    files = every_file(data_dir)
    assert any(p.name == "events.ndjson" for p in files)
    assert any(p.name.startswith("runevents.db") for p in files)
    assert {str(p): leaks(b) for p, b in files.items() if leaks(b)} == {}

    # compacted: the plain log becomes zstd frames; decompress them and look again
    done = cli("compact", "--older-than", "0s", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    files = every_file(data_dir)
    frames = [p for p in files if p.name == "events.ndjson.zst"]
    assert frames, sorted(str(p) for p in files)
    for path in frames:
        with path.open("rb") as handle:
            reader = zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True)
            plain = reader.read()
        assert b"split across writes: *** (end)" in plain
        assert leaks(plain) == []
    assert {str(p): leaks(b) for p, b in files.items() if leaks(b)} == {}
    server.wait_status(run, {"failed"})
    compacted = server.get(run)["run"]
    assert compacted["log_state"] == "compressed"
    for name, body in read_forms(server, run).items():
        assert leaks(body) == [], name
    # the server's own output does not print them either
    assert leaks(server.log(tail=10**7).encode()) == []


@pytest.mark.slow
def test_a_short_secret_stops_the_server_at_start_up(tmp_path: Path) -> None:
    config = tmp_path / "runevents.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [[configuration]]
            workspace = "acme"
            id = "short"
            command = ["{sys.executable}", "-c", "pass"]
            env = {{ PIN = "1234" }}
            secrets = ["PIN"]
            """
        )
    )
    done = cli("serve", "--config", str(config), "--data-dir", str(tmp_path / "data"), timeout=60)
    assert done.returncode != 0
    output = " ".join((done.stdout + done.stderr).split())
    assert str(config) in output
    assert "acme/short" in output
    assert "at least 8" in output
