"""``runevents search`` against a live ``runevents serve`` (contract sections 8 and 12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import Processes, Server, cli

pytestmark = pytest.mark.slow


def external_run(
    server: Server, cfg: str, *messages: str, status: str = "succeeded"
) -> dict[str, Any]:
    base = f"/api/v1/workspaces/acme/configurations/{cfg}/runs"
    run: dict[str, Any] = server.http.post(base, json={"external": True}).json()["run"]
    body = (
        "".join(
            json.dumps(
                {
                    "type": "console.line",
                    "payload": {"stream": "stdout", "level": "info", "message": m},
                }
            )
            + "\n"
            for m in messages
        )
        + json.dumps({"type": "run.completed", "payload": {"status": status}})
        + "\n"
    )
    answer = server.http.post(
        f"{base}/{run['id']}/events", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert answer.status_code == 200, answer.text
    return run


@pytest.fixture
def server(processes: Processes, tmp_path: Path) -> Server:
    return processes.serve(data_dir=tmp_path / "data")


def test_search_prints_hits_like_grep_and_json_for_machines(server: Server) -> None:
    old = external_run(server, "etl", "ConnectionResetError: by peer", "fine")
    new = external_run(server, "load", "retry after connectionreseterror", status="failed")
    result = cli("search", "connectionreseterror", "-w", "acme", server=server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{new['id']}:2: retry after connectionreseterror",
        f"{old['id']}:2: ConnectionResetError: by peer",
    ]
    assert "2 hits in 2 runs" in result.stderr
    filtered = cli(
        "search", "Connection.*Error", "--regex", "-w", "acme", "--config", "etl",
        "--since", "1h", "--json", server=server.url,
    )  # fmt: skip
    hits = [json.loads(line) for line in filtered.stdout.splitlines()]
    assert [(h["run_id"], h["sequence"], h["match"]) for h in hits] == [(old["id"], 2, [[0, 20]])]
    failed = cli("search", "error", "-w", "acme", "--status", "failed", server=server.url)
    assert [line.split(":")[0] for line in failed.stdout.splitlines()] == [new["id"]]
    # none found: exit 1 as grep; a bad regex: exit 2 with the server's reason
    assert cli("search", "no-such-text", "-w", "acme", server=server.url).returncode == 1
    bad = cli("search", "(oops", "--regex", "-w", "acme", server=server.url)
    assert bad.returncode == 2 and "invalid_regex" in bad.stderr


def test_search_colours_the_match_on_a_terminal(server: Server) -> None:
    run = external_run(server, "etl", "a Timeout here")
    # FORCE_COLOR makes rich treat the pipe as a terminal
    result = cli(
        "search",
        "timeout",
        "-w",
        "acme",
        server=server.url,
        env={"FORCE_COLOR": "1", "NO_COLOR": ""},
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b[1;31mTimeout\x1b[0m" in result.stdout
    assert run["id"] in result.stdout


def test_search_pages_through_with_the_cursor(server: Server) -> None:
    external_run(server, "etl", *(f"line {i}" for i in range(30)))
    result = cli("search", "line", "-w", "acme", "--limit", "25", server=server.url)
    assert len(result.stdout.splitlines()) == 25 and "more: raise --limit" in result.stderr
    everything = cli("search", "line", "-w", "acme", "--limit", "100", server=server.url)
    assert [line.rsplit(" ", 1)[1] for line in everything.stdout.splitlines()] == [
        str(i) for i in range(30)
    ]
    assert httpx.get(f"{server.url}/api/v1/health").status_code == 200
