"""What the worker tests share: a short lease, the demo configuration plus a
missing program, and ``serve --workers 0`` with one standalone worker on one data dir.

Used by ``test_workers.py`` and ``test_durability.py`` (a stopped worker).
"""

from __future__ import annotations

from pathlib import Path

import psutil

from runevents.demo import demo_config_path
from tests.acceptance.conftest import Proc, Processes, Server

LEASE_SECONDS = 2
#: short lease (heartbeat every 2/3 s), short kill grace, no scheduled maintenance
ENV = {
    "RUNEVENTS_LEASE_SECONDS": str(LEASE_SECONDS),
    "RUNEVENTS_KILL_GRACE_SECONDS": "2",
    "RUNEVENTS_MAINTENANCE_INTERVAL_SECONDS": "0",
}
MISSING_PROGRAM = "/nonexistent/runevents-no-such-program"
ENDED = {"succeeded", "failed", "cancelled"}


def write_configs(tmp: Path) -> Path:
    """The demo configuration (pointed at the bundled files) plus one whose program is missing.

    The worker gets it with ``--config`` rather than ``--demo``: ``runevents
    worker --demo`` also queues a demo run of its own (see the report).
    """
    demo = demo_config_path()
    text = demo.read_text().replace(
        'id = "extract"\n', f'id = "extract"\ncwd = "{demo.parent}"\n', 1
    )
    assert f'cwd = "{demo.parent}"' in text
    text += (
        '\n[[configuration]]\nworkspace = "demo"\nid = "missing"\n'
        f'command = ["{MISSING_PROGRAM}", "--flag"]\n'
    )
    path = tmp / "workers.toml"
    path.write_text(text)
    return path


def start_pair(
    processes: Processes, tmp: Path, database_url: str, *, concurrency: int = 2
) -> tuple[Server, Proc, str, list[str]]:
    """``serve --workers 0`` and one standalone worker on the same data. -> server, worker, id, args."""
    data = tmp / "data"
    common = ["--database-url", database_url, "--config", str(write_configs(tmp))]
    server = processes.serve("--workers", "0", *common, data_dir=data, env=ENV)
    worker, worker_id = processes.worker(
        *common, "--concurrency", str(concurrency), data_dir=data, env=ENV
    )
    return server, worker, worker_id, common


def demo_children(worker: Proc) -> list[psutil.Process]:
    """The worker's descendants running the demo job."""
    found = []
    for p in worker.descendants():
        try:
            if p.cmdline()[1:2] == ["extract.py"]:  # the job, not the build step
                found.append(p)
        except psutil.Error:
            continue
    return found
