"""A run's child dies with its worker (kill -9 of the worker leaves no silent orphan)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from runevents.configs import Configuration
    from runevents.executor import execute
    from tests.unit._sinks import NullSink

    async def main() -> None:
        config = Configuration(
            workspace_id="acme", configuration_id="quiet",
            command=(sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(120)"),
            cwd=Path(sys.argv[1]),
        )
        await execute(config, run_id="run_01JAAAAAAAAAAAAAAAAAAAAAAA", options={}, sink=NullSink(),
                      cancel=asyncio.Event(), work_dir=Path(sys.argv[1]), max_line_bytes=1024,
                      kill_grace_seconds=1)

    asyncio.run(main())
    """
)


def test_silent_child_is_killed_when_its_worker_is_killed(tmp_path: Path) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path)], cwd=Path(__file__).parents[2]
    )
    try:
        deadline = time.monotonic() + 30
        children: list[psutil.Process] = []
        while time.monotonic() < deadline and not children:
            children = [
                c
                for c in psutil.Process(worker.pid).children()
                if "time.sleep" in " ".join(c.cmdline())
            ]
            time.sleep(0.05)
        assert children, "the quiet child never started"
        child = children[0]
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        _gone, alive = psutil.wait_procs([child], timeout=5)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, "the child outlived its killed worker"
    finally:
        if worker.poll() is None:
            worker.kill()
