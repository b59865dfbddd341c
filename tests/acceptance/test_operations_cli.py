"""``runevents serve --log-format json`` and ``runevents worker --metrics-port``, as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.acceptance.conftest import Processes, free_port, poll


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the output, parsed: a line that is not one JSON object fails the test."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            parsed = json.loads(line)
            assert isinstance(parsed, dict), line
            lines.append(parsed)
    return lines


def test_serve_json_logs_parse_and_carry_the_request_id(
    processes: Processes, tmp_path: Path
) -> None:
    server = processes.serve(
        "--log-format", "json", "--log-level", "info", data_dir=tmp_path / "data"
    )
    run_id = "run_01HZZZZZZZZZZZZZZZZZZZZZZZ"
    missing = server.http.get(
        f"/api/v1/workspaces/acme/configurations/ext/runs/{run_id}",
        headers={"X-Request-ID": "acceptance-req-1"},
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["request_id"] == "acceptance-req-1"

    def access_line() -> dict[str, Any] | None:
        for line in _json_lines(server.log(tail=200_000)):
            if line.get("request_id") == "acceptance-req-1":
                return line
        return None

    line = poll("the request's access log line", access_line, timeout=30)
    assert line["logger"] == "uvicorn.access"
    assert line["run_id"] == run_id  # a run route names its run
    assert {"time", "level", "message"} <= set(line)
    lines = _json_lines(server.log(tail=200_000))
    assert any("serving on" in str(entry["message"]) for entry in lines)  # the banner too


def test_worker_serves_its_metrics(processes: Processes, tmp_path: Path) -> None:
    port = free_port()
    proc, _ = processes.worker(
        "--metrics-port", str(port), "--log-format", "json", data_dir=tmp_path / "data"
    )
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    assert "runevents_events_appended_total" in response.text
    assert "runevents_runs_reaped_total" in response.text
    _json_lines(proc.log())
