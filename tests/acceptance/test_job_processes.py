"""``kill -9`` of the process executing a run stops every process of the run's job.

Real processes: ``runevents serve`` (its embedded worker executes the run) or
``serve --workers 0`` + ``runevents worker``; the job is a tree that tries hard
to outlive it: a subshell that ignores SIGTERM, a child with a grandchild, a
process that moved to its own process group and one in a session of its own
(``setsid``). Each prints ``name pid``; after the ``kill -9`` every one of them
must be gone within the kill grace period (2 s) plus slack for a busy machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.acceptance.conftest import Proc, Processes, Server, poll

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process control"),
]

GRACE_SECONDS = 2
ENV = {
    "RUNEVENTS_KILL_GRACE_SECONDS": str(GRACE_SECONDS),
    "RUNEVENTS_LEASE_SECONDS": "2",
    "RUNEVENTS_MAINTENANCE_INTERVAL_SECONDS": "0",
}
NAMES = ("parent", "ignorer", "child", "grandchild", "setsid", "pgid-mover")

TREE_SH = """\
echo "parent $$"
( trap '' TERM; echo "ignorer $BASHPID"; while true; do sleep 1; done ) &
( bash -c 'echo "grandchild $$"; exec sleep 10000' & echo "child $BASHPID"; sleep 10000 ) &
setsid bash -c 'echo "setsid $$"; exec sleep 10000' &
"$PYTHON" -c 'import os, time; os.setpgid(0, 0); print("pgid-mover", os.getpid(), flush=True); time.sleep(10000)' &
sleep 10000
"""


def write_config(tmp: Path) -> Path:
    (tmp / "tree.sh").write_text(TREE_SH)
    path = tmp / "jobs.toml"
    path.write_text(
        '[[configuration]]\nworkspace = "jobs"\nid = "tree"\n'
        'command = ["bash", "{config_dir}/tree.sh"]\n'
        f'env = {{ PYTHON = "{sys.executable}" }}\n'
    )
    return path


def job_pids(server: Server, run: dict[str, object]) -> dict[str, int] | None:
    """``name -> pid`` once every process of the tree printed its line."""
    pids = {}
    for event in server.events(dict(run)):
        if event["type"] == "console.line":
            name, _, pid = str(event["payload"]["message"]).partition(" ")
            if name in NAMES and pid.isdigit():
                pids[name] = int(pid)
    return pids if len(pids) == len(NAMES) else None


def running(pids: dict[str, int]) -> dict[str, int]:
    alive = {}
    for name, pid in pids.items():
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive[name] = pid
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.mark.parametrize("executing", ["serve", "worker"])
def test_kill_9_of_the_executing_process_left_the_jobs_processes_running(
    processes: Processes, tmp_path: Path, executing: str
) -> None:
    config = write_config(tmp_path)
    data = tmp_path / "data"
    victim: Proc
    if executing == "serve":
        server = processes.serve("--config", str(config), data_dir=data, env=ENV)
        victim = server
    else:
        server = processes.serve("--workers", "0", "--config", str(config), data_dir=data, env=ENV)
        victim, _ = processes.worker("--config", str(config), data_dir=data, env=ENV)
    run = server.create_run("jobs", "tree")
    pids = poll("every process of the job tree to start", lambda: job_pids(server, run), 60)
    # teardown kills them even when this test fails (as the old code left them)
    processes.remember([psutil.Process(pid) for pid in running(pids).values()])
    processes.remember(victim.descendants())
    assert running(pids) == pids

    victim.kill9()
    killed = time.monotonic()
    left: dict[str, int] = {}

    def all_gone() -> bool:
        nonlocal left
        left = running(pids)
        return not left

    deadline = killed + GRACE_SECONDS + 20
    while not all_gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"still running {time.monotonic() - killed:.1f}s after kill -9: {left}"
    print(f"\n[{executing}] kill -9 -> the job's processes gone: {time.monotonic() - killed:.2f}s")
