"""dev.py passes the README's `runevents` commands through (issue 19 item 12)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dev(monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location("dev_under_test", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls: list[tuple[list[str], Any]] = []
    monkeypatch.setattr(module, "ensure_venv", lambda: None)
    monkeypatch.setattr(
        module, "run", lambda *argv, cwd=module.ROOT: calls.append((list(argv), cwd)) or 0
    )
    module.calls = calls
    return module


def test_runevents_commands_pass_through(dev: Any) -> None:
    exe = str(dev.BIN / "runevents")
    assert dev.main(["runs", "ls", "-w", "demo"]) == 0
    assert dev.main(["run", "demo", "extract", "-o", "speed=2"]) == 0
    assert dev.main(["tail", "run_x"]) == 0
    assert [c[0] for c in dev.calls] == [
        [exe, "runs", "ls", "-w", "demo"],
        [exe, "run", "demo", "extract", "-o", "speed=2"],
        [exe, "tail", "run_x"],
    ]
    assert all(c[1] is None for c in dev.calls)  # the caller's directory


def test_demo_takes_port_and_run_alone_is_still_the_demo(dev: Any) -> None:
    exe = str(dev.BIN / "runevents")
    dev.main(["demo", "--port", "8001"])
    dev.main(["run"])
    assert [c[0] for c in dev.calls] == [
        [exe, "serve", "--demo", "--port", "8001"],
        [exe, "serve", "--demo"],
    ]


def test_unknown_commands_are_refused(dev: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert dev.main(["nonsense"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert sys.modules.get("dev_under_test") is None


def test_cluster_runs_the_tests_launcher_from_the_checkout(dev: Any) -> None:
    assert dev.main(["cluster", "--replicas", "2", "--keep"]) == 0
    assert dev.calls == [
        ([str(dev.PY), "-m", "tests.fixtures.cluster", "--replicas", "2", "--keep"], dev.ROOT)
    ]
    # the module it names exists and has the entry point
    assert (dev.ROOT / "tests" / "fixtures" / "cluster.py").is_file()
