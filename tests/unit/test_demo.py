"""The bundled demo configuration, end to end through execute() (runevents.demo)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from runevents.config_file import load_config_file
from runevents.configs import Configuration
from runevents.demo import demo_config_path
from runevents.demo.extract import FAILURE_RATE, plan
from runevents.executor import ExecutionResult, execute
from runevents.models import RunStatus
from runevents.summary import RunSummaryBuilder
from tests.unit._sinks import ListSink

FAST = {"speed": 1000, "fail": False, "seed": 7}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def demo() -> Configuration:
    [config] = load_config_file(demo_config_path())
    return config


async def run_demo(
    demo: Configuration,
    tmp_path: Path,
    options: dict[str, Any],
    *,
    sink: ListSink | None = None,
    cancel: asyncio.Event | None = None,
    run_id: str = "run_01J0000000000000000000DEMO",
) -> tuple[ExecutionResult, ListSink]:
    sink = sink or ListSink()
    result = await execute(
        demo,
        run_id=run_id,
        options=options,
        sink=sink,
        cancel=cancel or asyncio.Event(),
        work_dir=tmp_path,
        max_line_bytes=65536,
        kill_grace_seconds=2,
    )
    return result, sink


def summarize(sink: ListSink, result: ExecutionResult) -> dict[str, Any]:
    """The summary the manager would build from these events plus its run.completed."""
    builder = RunSummaryBuilder()
    for event in sink.events:
        builder.add(event.type, event.created_at or result.completed_at, event.payload)
    completed = {
        "status": result.status,
        "failure": result.failure,
        "execution": result.execution(),
    }
    builder.add("run.completed", result.completed_at, completed)
    return builder.build()


def test_demo_configuration(demo: Configuration) -> None:
    assert (demo.workspace_id, demo.configuration_id) == ("demo", "extract")
    assert demo.command[0] == "{python}"
    assert demo.build is not None
    assert len(demo.build.commands) == 2
    assert demo_config_path().is_file()
    assert demo_config_path().name == "runevents.toml"
    assert demo.cwd == demo_config_path().parent


async def test_demo_run_succeeds_like_a_real_extraction(
    demo: Configuration, tmp_path: Path
) -> None:
    result, sink = await run_demo(demo, tmp_path, FAST)
    assert (result.status, result.exit_code, result.failure) == ("succeeded", 0, None)
    assert sink.statuses == [RunStatus.BUILDING, RunStatus.RUNNING]
    types = sink.types()
    assert types[:3] == ["build.created", "build.started", "build.phase.started"]
    assert types.index("build.completed") < types.index("run.started")
    assert sink.of("build.completed")[0].payload["reason"] == "built"
    assert sink.messages(scope="build")
    phases = [e.payload["phase"] for e in sink.of("run.phase.started")]
    assert phases == ["discovering", "extracting", "validating", "writing"]
    assert {e.payload["status"] for e in sink.of("run.phase.completed")} == {"succeeded"}
    assert any(ANSI.search(m) for m in sink.messages("stdout", "run"))
    assert any("WARNING" in m for m in sink.messages("stderr", "run"))
    assert any("modules locked" in m for m in sink.messages("stdout", "run"))  # saw the build

    summary = summarize(sink, result)
    assert summary["status"] == "succeeded"
    assert summary["events"]["ignored"] == 0  # the telemetry is well-formed
    assert summary["tables"]["table_count"] == 6
    assert summary["tables"]["input_file_count"] == 3
    issues = sink.of("run.validation.issue")
    [validation] = sink.of("run.validation.summary")
    assert validation.payload["issues_total"] == len(issues)
    assert summary["validation"]["issues_total"] == len(issues)
    assert [p["phase"] for p in summary["phases"] if p["scope"] == "run"] == phases
    assert summary["console"]["by_stream"]["stderr"] >= 1

    # a second run reuses the build
    _, again = await run_demo(demo, tmp_path, FAST)
    assert again.types()[:2] == ["build.created", "build.completed"]
    assert again.of("build.completed")[0].payload["reason"] == "cached"


async def test_demo_fail_option_fails_with_a_run_error(demo: Configuration, tmp_path: Path) -> None:
    result, sink = await run_demo(demo, tmp_path, {**FAST, "fail": True})
    assert (result.status, result.exit_code, result.failure) == ("failed", 1, None)
    [error] = sink.of("run.error")
    assert error.payload["code"] == "schema_mismatch"
    assert any("Traceback" in m for m in sink.messages("stderr"))
    summary = summarize(sink, result)
    assert summary["failure"] == {
        "stage": "run",
        "code": "schema_mismatch",
        "message": error.payload["message"],
    }
    assert "run.validation.summary" not in sink.types()


async def test_cancelling_the_demo(demo: Configuration, tmp_path: Path) -> None:
    cancel = asyncio.Event()
    sink = ListSink()
    task = asyncio.create_task(
        run_demo(demo, tmp_path, {"speed": 1, "fail": False}, sink=sink, cancel=cancel)
    )
    await sink.wait_for("==> discovering", timeout=30)
    cancel.set()
    result, _ = await task
    assert (result.status, result.exit_code) == ("cancelled", 143)
    assert any("received SIGTERM" in m for m in sink.messages("stderr"))


def test_demo_plan_duration_and_failure_rate() -> None:
    plans = [plan({}, f"run_{i}")[0] for i in range(500)]
    assert all(20 <= p.duration <= 40 for p in plans)
    rate = sum(p.fails for p in plans) / len(plans)
    assert abs(rate - FAILURE_RATE) < 0.06
    assert plan({"speed": 10}, "run_1")[0].duration == plan({}, "run_1")[0].duration / 10
    assert plan({"fail": True}, "run_1")[0].fails is True
    assert plan({"fail": False}, "run_1")[0].fails is False
    assert plan({"speed": "fast"}, "run_1")[0].duration >= 20  # a bad speed is ignored
