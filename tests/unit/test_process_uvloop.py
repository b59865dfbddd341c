"""Regression: demo runs failed with internal_error under `runevents serve`.

uvicorn runs on uvloop, whose subprocess and pipe transports do not subclass
asyncio's; an ``isinstance`` assert in the child protocol failed on every run.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvloop

from runevents.configs import Configuration
from runevents.executor import execute
from tests.unit._sinks import ListSink


def test_regression_uvloop_subprocess_transport_runs_a_child(tmp_path: Path) -> None:
    config = Configuration(
        workspace_id="acme",
        configuration_id="loop",
        command=(sys.executable, "-c", "for i in range(3000): print('x' * 100, i)"),
        cwd=tmp_path,
    )
    sink = ListSink()

    async def main() -> str:
        result = await execute(
            config,
            run_id="run_01JAAAAAAAAAAAAAAAAAAAAAAA",
            options={},
            sink=sink,
            cancel=asyncio.Event(),
            work_dir=tmp_path,
            max_line_bytes=1024,
            kill_grace_seconds=1,
        )
        return result.status

    assert uvloop.run(main()) == "succeeded"
    assert len(sink.console(stream="stdout")) == 3000
