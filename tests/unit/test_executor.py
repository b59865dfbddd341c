"""execute(): events, statuses, environment and results of one run (runevents.executor)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from runevents.configs import BuildStep, Configuration
from runevents.exceptions import RunEnded
from runevents.executor import ExecutionResult, execute, expand_argv
from runevents.models import RunStatus
from runevents.timestamps import normalize_created_at
from tests.unit._sinks import ListSink, live_pids, session_pids

PY = sys.executable
RUN_ID = "run_01J0000000000000000000000A"
BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUNEVENTS_DATABASE_URL": "secret"}


def cfg(
    *command: str,
    build: list[list[str]] | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    source: Path | None = None,
) -> Configuration:
    return Configuration(
        workspace_id="ws",
        configuration_id="cfg",
        command=command,
        cwd=cwd,
        env=env or {},
        timeout_seconds=timeout,
        source=source,
        build=None if build is None else BuildStep(commands=tuple(tuple(c) for c in build)),
    )


async def run(
    config: Configuration,
    tmp_path: Path,
    *,
    options: Mapping[str, Any] | None = None,
    sink: Any = None,
    cancel: asyncio.Event | None = None,
    grace: float = 1.0,
) -> tuple[ExecutionResult, ListSink]:
    sink = ListSink() if sink is None else sink
    result = await execute(
        config,
        run_id=RUN_ID,
        options=options or {},
        sink=sink,
        cancel=cancel or asyncio.Event(),
        work_dir=tmp_path / "work",
        max_line_bytes=4096,
        kill_grace_seconds=grace,
        base_env=BASE_ENV,
    )
    return result, sink


def is_rfc3339_utc(value: str | None) -> bool:
    return value is not None and normalize_created_at(value) == value


async def test_events_and_statuses_of_a_plain_run(tmp_path: Path) -> None:
    result, sink = await run(cfg(PY, "-c", "print('hello')"), tmp_path)
    assert sink.statuses == [RunStatus.RUNNING]
    assert sink.types() == ["run.started", "console.line"]
    assert sink.events[0].payload == {"status": "running", "command": [PY, "-c", "print('hello')"]}
    assert sink.messages() == ["hello"]
    assert (result.status, result.exit_code, result.failure) == ("succeeded", 0, None)
    assert is_rfc3339_utc(result.started_at)
    assert is_rfc3339_utc(result.completed_at)
    execution = result.execution()
    assert execution["exit_code"] == 0
    assert execution["started_at"] == result.started_at
    assert isinstance(execution["duration_ms"], int)
    assert execution["duration_ms"] >= 0


async def test_build_events_come_before_run_started(tmp_path: Path) -> None:
    code = "import os; print('build dir', os.environ['RUNEVENTS_BUILD_DIR'])"
    config = cfg(PY, "-c", code, build=[[PY, "-c", "print('compiling')"]])
    result, sink = await run(config, tmp_path)
    assert result.status == "succeeded"
    assert sink.statuses == [RunStatus.BUILDING, RunStatus.RUNNING]
    assert sink.types() == [
        "build.created",
        "build.started",
        "build.phase.started",
        "console.line",
        "build.phase.completed",
        "build.completed",
        "run.started",
        "console.line",
    ]
    build_dir = tmp_path / "work/builds/ws/cfg" / config.content_hash()
    assert sink.messages(scope="run") == [f"build dir {build_dir}"]
    _, again = await run(config, tmp_path)
    assert again.types() == ["build.created", "build.completed", "run.started", "console.line"]
    assert again.statuses == [RunStatus.BUILDING, RunStatus.RUNNING]


async def test_options_environment_and_scratch_directory(tmp_path: Path) -> None:
    code = (
        "import json, os\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith(('RUNEVENTS_', 'MY_', 'PY'))}\n"
        "opts = json.load(open(os.environ['RUNEVENTS_OPTIONS_FILE']))\n"
        "print(json.dumps({'env': env, 'options': opts, 'cwd': os.getcwd()}))\n"
    )
    config = cfg(PY, "-c", code, env={"MY_SETTING": "x", "PYTHONUNBUFFERED": ""})
    result, sink = await run(config, tmp_path, options={"speed": 10, "tags": ["a"]})
    assert result.status == "succeeded"
    seen = json.loads(sink.messages()[0])
    run_dir = str(tmp_path / "work/tmp" / RUN_ID)
    assert seen["options"] == {"speed": 10, "tags": ["a"]}
    assert seen["cwd"] == run_dir
    assert seen["env"] == {
        "RUNEVENTS_RUN_ID": RUN_ID,
        "RUNEVENTS_WORKSPACE_ID": "ws",
        "RUNEVENTS_CONFIGURATION_ID": "cfg",
        "RUNEVENTS_OPTIONS_FILE": f"{run_dir}/options.json",
        "RUNEVENTS_RUN_DIR": run_dir,
        "MY_SETTING": "x",
        "PYTHONUNBUFFERED": "",  # the configuration's env wins over our default
    }  # the server's own RUNEVENTS_DATABASE_URL is not passed on
    assert not Path(run_dir).exists()  # scratch space is removed after the run


async def test_regression_an_option_integer_beyond_64_bits_reaches_the_command(
    tmp_path: Path,
) -> None:
    # schemathesis (issue 20): {"options": {"n": 10**30}} was accepted by the API,
    # then the executor failed writing the options file (orjson: 64-bit integers only)
    code = "import os; print(open(os.environ['RUNEVENTS_OPTIONS_FILE']).read())"
    result, sink = await run(cfg(PY, "-c", code), tmp_path, options={"n": 10**30})
    assert result.status == "succeeded"
    assert json.loads(sink.messages()[0]) == {"n": 10**30}


async def test_configured_cwd_and_placeholders(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("import os, sys; print(os.getcwd(), sys.executable)\n")
    config = cfg(
        "{python}", "{config_dir}/job.py", cwd=tmp_path / "sub", source=tmp_path / "x.toml"
    )
    (tmp_path / "sub").mkdir()
    assert expand_argv(config.command, config) == [sys.executable, f"{tmp_path}/job.py"]
    result, sink = await run(config, tmp_path)
    assert result.status == "succeeded"
    assert sink.messages() == [f"{tmp_path / 'sub'} {sys.executable}"]


async def test_structured_events_pass_through_and_lifecycle_ones_do_not(tmp_path: Path) -> None:
    code = (
        "import json\n"
        "print(json.dumps({'type': 'run.table.summary', 'payload': {'table_id': 't'}}))\n"
        "print(json.dumps({'type': 'run.completed', 'payload': {'status': 'succeeded'}}))\n"
    )
    _, sink = await run(cfg(PY, "-c", code), tmp_path)
    assert sink.types() == ["run.started", "run.table.summary", "console.line"]
    assert "run.completed" in sink.messages()[0]


async def test_nonzero_exit_is_a_run_failure(tmp_path: Path) -> None:
    result, _ = await run(cfg(PY, "-c", "import sys; sys.exit(3)"), tmp_path)
    assert (result.status, result.exit_code) == ("failed", 3)
    assert result.failure == {
        "stage": "run",
        "code": "exit_code",
        "message": "command exited with code 3",
    }


async def test_producer_run_error_leaves_failure_to_the_summary(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "print(json.dumps({'type': 'run.error', 'payload': "
        "{'stage': 'run', 'code': 'bad_input', 'message': 'no sheet'}}))\n"
        "sys.exit(2)\n"
    )
    result, sink = await run(cfg(PY, "-c", code), tmp_path)
    assert (result.status, result.exit_code, result.failure) == ("failed", 2, None)
    assert sink.of("run.error")[0].payload["code"] == "bad_input"


async def test_killed_by_signal(tmp_path: Path) -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    result, _ = await run(cfg(PY, "-c", code), tmp_path)
    assert (result.status, result.exit_code) == ("failed", 128 + signal.SIGSEGV)
    assert result.failure is not None
    assert result.failure["message"] == "command was killed by SIGSEGV (exit code 139)"


async def test_command_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "nope"
    result, sink = await run(cfg(str(missing)), tmp_path)
    assert (result.status, result.exit_code) == ("failed", None)
    assert result.failure == {
        "stage": "run",
        "code": "command_not_found",
        "message": f"command not found: {missing}",
    }
    assert sink.types() == ["run.started", "console.line"]
    [line] = sink.console()
    assert (line["stream"], line["level"]) == ("stderr", "error")
    assert str(missing) in line["message"]


async def test_cancel_mid_run_stops_everything(tmp_path: Path) -> None:
    code = (
        "import os, subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "time.sleep(0.2); print('pids:', os.getpid(), g.pid, flush=True); time.sleep(600)\n"
    )
    cancel = asyncio.Event()
    sink = ListSink()
    task = asyncio.create_task(run(cfg(PY, "-c", code), tmp_path, sink=sink, cancel=cancel))
    await sink.wait_for("pids:")
    pids = [int(p) for p in sink.messages()[0].split()[1:]]
    cancel.set()
    result, _ = await task
    assert (result.status, result.failure) == ("cancelled", None)
    assert result.exit_code == 128 + signal.SIGTERM
    assert live_pids(pids) == []
    assert session_pids(pids[0]) == []


async def test_cancel_before_start_runs_nothing(tmp_path: Path) -> None:
    cancel = asyncio.Event()
    cancel.set()
    config = cfg(PY, "-c", "print('no')", build=[[PY, "-c", "print('no')"]])
    result, sink = await run(config, tmp_path, cancel=cancel)
    assert (result.status, result.started_at, result.exit_code) == ("cancelled", None, None)
    assert sink.events == []
    assert sink.statuses == []


async def test_timeout_is_a_failure_with_code_timeout(tmp_path: Path) -> None:
    config = cfg(PY, "-c", "import time; time.sleep(600)", timeout=0.3)
    result, _ = await run(config, tmp_path)
    assert result.status == "failed"
    assert result.failure == {
        "stage": "run",
        "code": "timeout",
        "message": "command timed out after 0.3s and was stopped",
    }


async def test_build_failure_never_starts_the_command(tmp_path: Path) -> None:
    config = cfg(PY, "-c", "print('ran')", build=[[PY, "-c", "import sys; sys.exit(5)"]])
    result, sink = await run(config, tmp_path)
    assert (result.status, result.exit_code, result.started_at) == ("failed", None, None)
    assert result.failure is not None
    assert (result.failure["stage"], result.failure["code"]) == ("build", "exit_code")
    assert "run.started" not in sink.types()
    assert sink.statuses == [RunStatus.BUILDING]


async def test_sink_refusing_the_status_move_propagates_and_cleans_up(tmp_path: Path) -> None:
    class EndedSink(ListSink):
        async def set_status(self, status: RunStatus, *, at: datetime | None = None) -> None:
            raise RunEnded("cancelled meanwhile")

    with pytest.raises(RunEnded):
        await run(cfg(PY, "-c", "print(1)"), tmp_path, sink=EndedSink())
    assert not (tmp_path / "work/tmp" / RUN_ID).exists()


def test_duration_of_a_result() -> None:
    result = ExecutionResult(
        status="succeeded",
        exit_code=0,
        failure=None,
        started_at="2026-01-01T00:00:00.000000Z",
        completed_at="2026-01-01T00:00:01.250000Z",
    )
    assert result.duration_ms == 1250
    no_start = ExecutionResult("failed", None, None, None, "2026-01-01T00:00:00.000000Z")
    assert no_start.execution() == {
        "exit_code": None,
        "started_at": None,
        "completed_at": "2026-01-01T00:00:00.000000Z",
        "duration_ms": None,
    }
    assert datetime.fromisoformat(result.completed_at).tzinfo is not None
