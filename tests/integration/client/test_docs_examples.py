"""Every Python example of docs/client.md runs against a real server and prints what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.thread_server import ThreadServer

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "client.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)

#: what each example must print (by its order in the page)
EXPECTED = [
    [r"run_\w+ queued", r"^cancelled$", r"^409 run_ended$"],
    [r"^2 stdout hello$", r"^ended: succeeded 3 events$"],
    [r"^2503 events delivered$", r"^succeeded$"],
    [r"^run.completed 102$"],
    [r"^run: run_\w+$"],
]


def test_every_example_is_checked() -> None:
    assert len(BLOCKS) == len(EXPECTED)


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_example_runs(thread_server: ThreadServer, index: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RUNEVENTS_SERVER": thread_server.url}
    env.pop("RUNEVENTS_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for pattern in EXPECTED[index]:
        assert re.search(pattern, done.stdout, re.M), (pattern, done.stdout)
