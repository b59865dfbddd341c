"""Issue 6 end to end: ``runevents serve --workers 0`` + standalone ``runevents worker``.

Real processes on one data dir and one database (SQLite file and Postgres):

- runs created over HTTP are executed by the standalone worker (the server has
  no worker of its own), demo runs succeed and fail with the job's exit code,
  a command that does not exist fails the run with the reason;
- a cancel sent to the server reaches the run executed by the *other* process
  (database flag + heartbeat), the run ends ``cancelled``, no process is left;
- ``kill -9`` of the worker mid-run: once the lease (2 s) expires another
  worker reaps the run, ``failed`` with ``worker_lost`` and the reason;
- a configuration file with an error stops ``serve`` and ``worker`` at start-up
  with the file, the key and the reason.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.acceptance.conftest import Processes, clean_env, free_port, poll
from tests.acceptance.worker_support import (
    ENDED,
    ENV,
    LEASE_SECONDS,
    MISSING_PROGRAM,
    demo_children,
    start_pair,
)

# every test starts `runevents` processes (a few seconds each on the shared machine)
pytestmark = pytest.mark.slow


def gone(procs: list[psutil.Process]) -> bool:
    """True when none of ``procs`` is still running (a zombie counts as gone)."""
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def check_log(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Sequences 1..N, run.completed exactly once and last; its payload."""
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events].count("run.completed") == 1
    assert events[-1]["type"] == "run.completed"
    return dict(events[-1]["payload"])


def test_standalone_worker_executes_runs_and_a_relayed_cancel_leaves_no_process(
    processes: Processes, tmp_path: Path, database_url: str
) -> None:
    server, worker, _, _ = start_pair(processes, tmp_path, database_url)

    ok = server.create_run("demo", "extract", speed=50, fail=False, seed=1)
    bad = server.create_run("demo", "extract", speed=50, fail=True, seed=2)
    missing = server.create_run("demo", "missing")

    # executed by the standalone worker: the server has none (--workers 0)
    done = server.wait_status(ok, ENDED)
    assert done["run"]["status"] == "succeeded", done
    assert done["run"]["exit_code"] == 0
    payload = check_log(server.events(ok))
    assert payload["status"] == "succeeded"
    assert payload["execution"]["exit_code"] == 0
    assert done["summary"]["status"] == "succeeded"
    assert done["summary"]["console"]["lines"] > 0
    assert done["summary"]["tables"]["table_count"] > 0

    done = server.wait_status(bad, ENDED)
    assert done["run"]["status"] == "failed", done
    assert done["run"]["exit_code"] == 1
    assert check_log(server.events(bad))["execution"]["exit_code"] == 1
    # the demo reports why it failed with a run.error; the summary carries it
    assert done["summary"]["failure"]["code"], done["summary"]

    done = server.wait_status(missing, ENDED)
    assert done["run"]["status"] == "failed", done
    failure = check_log(server.events(missing))["failure"]
    assert failure["code"] == "command_not_found", failure
    assert MISSING_PROGRAM in failure["message"], failure
    assert done["summary"]["failure"] == failure

    # a cancel sent to the server, for a run the other process executes
    slow = server.create_run("demo", "extract", speed=1, fail=False, seed=3)
    server.wait_running(slow)
    children = poll("the demo job under the worker", lambda: demo_children(worker), 30)
    processes.remember(worker.descendants())
    started = time.monotonic()
    r = server.http.post(f"/api/v1/workspaces/demo/configurations/extract/runs/{slow['id']}/cancel")
    assert r.status_code == 202, r.text
    assert r.json()["run"]["status"] == "running"  # the other process stops it
    done = server.wait_status(slow, ENDED, timeout=60)
    elapsed = time.monotonic() - started
    assert done["run"]["status"] == "cancelled", done
    payload = check_log(server.events(slow))
    assert payload["status"] == "cancelled"
    assert payload["execution"]["exit_code"] == 143  # the demo's answer to SIGTERM
    print(f"\n[{database_url.split(':')[0]}] cancel relayed to the worker process: {elapsed:.2f}s")
    assert gone(children), [p.pid for p in children]
    poll("the worker to have no child left", lambda: not worker.descendants(), 10)
    assert worker.alive(), worker.log()

    # an ended run cannot be cancelled again
    r = server.http.post(f"/api/v1/workspaces/demo/configurations/extract/runs/{slow['id']}/cancel")
    assert r.status_code == 409, r.text


def test_a_killed_worker_s_run_is_reaped_as_worker_lost(
    processes: Processes, tmp_path: Path, database_url: str
) -> None:
    server, worker, worker_id, common = start_pair(processes, tmp_path, database_url, concurrency=1)
    slow = server.create_run("demo", "extract", speed=1, fail=False, seed=4)
    server.wait_running(slow)
    children = poll("the demo job under the worker", lambda: demo_children(worker), 30)
    processes.remember(worker.descendants())
    events_before = server.get(slow)["run"]["event_count"]

    # the reaper: a second worker, started while the first one holds the run
    _, second_id = processes.worker(
        *common, "--concurrency", "1", name="worker2", data_dir=tmp_path / "data", env=ENV
    )
    assert server.get(slow)["run"]["status"] == "running"

    worker.kill9()
    killed = time.monotonic()
    # the demo job lost its reader: it dies on its next write (SIGPIPE / EPIPE)
    poll("the orphaned demo job to exit", lambda: gone(children), 30, interval=0.05)
    orphan_exit = time.monotonic() - killed
    done = server.wait_status(slow, ENDED, timeout=60)
    elapsed = time.monotonic() - killed
    label = database_url.split(":")[0]
    print(f"\n[{label}] kill -9 -> run failed (lease {LEASE_SECONDS}s): {elapsed:.2f}s")
    print(f"[{label}] kill -9 -> orphaned demo job exited: {orphan_exit:.2f}s")

    assert done["run"]["status"] == "failed", done
    events = server.events(slow)
    payload = check_log(events)
    failure = payload["failure"]
    assert failure["code"] == "worker_lost", failure
    assert worker_id in failure["message"] and "lease expired" in failure["message"], failure
    assert done["summary"]["failure"] == failure
    assert done["summary"]["status"] == "failed"
    # what the lost worker wrote stays; the reaper only appended run.completed
    assert len(events) > events_before
    assert sum(e["type"] == "console.line" for e in events) > 0
    # lease expiry bounds the detection: lease + reaper period + slack for a busy machine
    assert elapsed < LEASE_SECONDS + 20, elapsed

    # the surviving worker keeps executing runs
    after = server.create_run("demo", "extract", speed=50, fail=False, seed=5)
    done = server.wait_status(after, ENDED)
    assert done["run"]["status"] == "succeeded", done
    assert second_id != worker_id


BAD_CONFIGS = {
    "unknown-key": (
        '[[configuration]]\nworkspace = "w"\nid = "c"\ncomand = ["x"]\n',
        "configuration[0].comand: unknown key",
    ),
    "bad-timeout": (
        '[[configuration]]\nworkspace = "w"\nid = "c"\ncommand = ["x"]\ntimeout = "ten minutes"\n',
        "configuration[0].timeout: invalid duration 'ten minutes'",
    ),
    "bad-toml": (
        '[[configuration]]\nworkspace = "w"\nid = "c"\ncommand = ["x"\n',
        "invalid TOML",
    ),
}


def test_a_bad_tokens_file_stops_serve_with_file_entry_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    digest = "0" * 64
    path.write_text(
        f'[[token]]\nname = "x"\nhash = "sha256:{digest}"\nrole = "boss"\nworkspaces = ["a"]\n'
    )
    argv = [sys.executable, "-m", "runevents", "serve", "--tokens", str(path)]
    argv += ["--data-dir", str(tmp_path / "data"), "--port", str(free_port())]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=clean_env(), stdin=subprocess.DEVNULL
    )
    assert done.returncode != 0, done
    said = " ".join(done.stderr.split())
    assert f"{path}: [[token]] #1 ('x'): bad role 'boss'" in said, done.stderr


@pytest.mark.parametrize(
    ("command", "case"),
    # the worker shares the loader: one case is enough for it
    [("serve", case) for case in sorted(BAD_CONFIGS)] + [("worker", "unknown-key")],
)
def test_a_bad_configuration_file_stops_start_up(tmp_path: Path, command: str, case: str) -> None:
    text, expected = BAD_CONFIGS[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    argv = [sys.executable, "-m", "runevents", command, "--config", str(path)]
    argv += ["--data-dir", str(tmp_path / "data")]
    if command == "serve":
        argv += ["--port", str(free_port())]
    env = clean_env()
    env.pop("COLUMNS")  # what a user piping stderr sees (Rich wraps at 80 columns)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL
    )
    assert done.returncode != 0, done
    said = " ".join(done.stderr.split())  # Rich may wrap at spaces
    assert f"{path}: {expected}" in said, done.stderr
    assert "Traceback" not in done.stderr
