"""Running a child process: capture, cancel and timeout, no orphans (runevents.process)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from runevents import process
from runevents.capture import ConsoleTranslator
from runevents.emitter import Emitter
from runevents.process import ProcessOutcome, run_process
from tests.unit._sinks import FailingSink, ListSink, NullSink, live_pids, session_pids

PY = sys.executable
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}


async def run(
    argv: list[str],
    sink: Any = None,
    *,
    cancel: asyncio.Event | None = None,
    timeout: float | None = None,
    grace: float = 2.0,
    max_line_bytes: int = 65536,
    cwd: Path | None = None,
) -> tuple[ProcessOutcome, Any]:
    sink = ListSink() if sink is None else sink
    outcome = await run_process(
        argv,
        cwd=cwd or Path.cwd(),
        env=ENV,
        emitter=Emitter(sink, ConsoleTranslator(scope="run")),
        cancel=cancel or asyncio.Event(),
        timeout_seconds=timeout,
        kill_grace_seconds=grace,
        max_line_bytes=max_line_bytes,
    )
    return outcome, sink


def py(code: str) -> list[str]:
    return [PY, "-c", code]


async def pids_from(sink: ListSink, count: int) -> list[int]:
    """Wait for the child to print ``pids: A B ...``; return them."""
    await sink.wait_for("pids:")
    line = next(m for m in sink.messages() if m.startswith("pids:"))
    pids = [int(p) for p in line.split()[1:]]
    assert len(pids) == count
    return pids


def test_exit_code_of() -> None:
    assert process.exit_code_of(3) == (3, None)
    assert process.exit_code_of(-signal.SIGKILL) == (137, "SIGKILL")


async def test_stdout_stderr_and_exit_code() -> None:
    outcome, sink = await run(
        py("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)")
    )
    assert (outcome.ending, outcome.exit_code, outcome.signal) == ("exited", 3, None)
    assert sink.messages("stdout") == ["out"]
    assert sink.messages("stderr") == ["err"]
    assert [p["level"] for p in sink.console()] in (["info", "warning"], ["warning", "info"])


async def test_crlf_lone_cr_and_missing_final_newline() -> None:
    code = "import sys; sys.stdout.buffer.write(b'a\\r\\nb\\rc\\n\\nlast')"
    _, sink = await run(py(code))
    assert sink.messages() == ["a", "b\rc", "", "last"]


async def test_interleaving_between_streams_follows_arrival() -> None:
    code = (
        "import sys, time\n"
        "for i in range(4):\n"
        "    s = sys.stdout if i % 2 == 0 else sys.stderr\n"
        "    print(f'line {i}', file=s, flush=True); time.sleep(0.1)\n"
    )
    _, sink = await run(py(code))
    assert sink.messages() == ["line 0", "line 1", "line 2", "line 3"]
    assert [p["stream"] for p in sink.console()] == ["stdout", "stderr"] * 2


async def test_big_output_on_both_streams_does_not_deadlock() -> None:
    # each stream alone is far beyond a pipe buffer: reading one after the other would hang
    code = (
        "import sys\n"
        "line = b'x' * 99 + b'\\n'\n"
        "for _ in range(20):\n"
        "    sys.stderr.buffer.write(line * 1000); sys.stdout.buffer.write(line * 1000)\n"
    )
    async with asyncio.timeout(30):
        outcome, sink = await run(py(code), NullSink())
    assert outcome.exit_code == 0
    assert sink.count == 40_000


async def test_lines_of_one_read_are_emitted_in_one_call_and_in_order() -> None:
    code = "import sys\nsys.stdout.buffer.write(b''.join(b'%d\\n' % i for i in range(100000)))\n"
    outcome, sink = await run(py(code))
    assert outcome.exit_code == 0
    assert [int(m) for m in sink.messages()] == list(range(100_000))
    assert sink.calls < 1000  # batches of a read, not a call per line


async def test_10mb_line_is_cut_with_bounded_memory() -> None:
    code = (
        "import sys\n"
        "w = sys.stdout.buffer.write\n"
        "for _ in range(160): w(b'z' * 65536)\n"
        "w(b'\\nafter\\n')\n"
    )
    tracemalloc.start()
    try:
        outcome, sink = await run(py(code), max_line_bytes=64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.exit_code == 0
    [long, after] = sink.console()
    assert long["message"].startswith("z" * 65536 + " …[truncated 9.9 MiB]")
    assert long["truncated"] is True
    assert long["truncated_bytes"] == 160 * 65536 - 65536
    assert after["message"] == "after"
    # the 10 MB line never sits in memory: a few read buffers plus the 64 KiB head
    assert peak < 3 * 1024 * 1024, peak


async def test_cancel_stops_a_grandchild_that_ignores_sigterm() -> None:
    code = (
        "import subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        'signal.signal(signal.SIGTERM, signal.SIG_IGN); print("ready", flush=True); '
        "time.sleep(600)'])\n"
        "time.sleep(0.3)\n"
        "import os; print('pids:', os.getpid(), g.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    cancel = asyncio.Event()
    sink = ListSink()
    task = asyncio.create_task(run(py(code), sink, cancel=cancel, grace=0.5))
    child, grandchild = await pids_from(sink, 2)
    started = time.monotonic()
    cancel.set()
    outcome, _ = await task
    assert outcome.ending == "cancelled"
    assert outcome.exit_code == 128 + signal.SIGTERM  # the child itself obeyed SIGTERM
    assert 0.4 < time.monotonic() - started < 5  # the grandchild needed SIGKILL
    assert live_pids([child, grandchild]) == []
    assert session_pids(child) == []
    notices = [p["message"] for p in sink.console() if p.get("logger") == "runevents"]
    assert any("cancel requested" in m for m in notices)
    assert any("killed" in m for m in notices)


async def test_timeout_stops_the_child() -> None:
    started = time.monotonic()
    outcome, sink = await run(py("import time; time.sleep(600)"), timeout=0.3, grace=1)
    assert outcome.ending == "timeout"
    assert outcome.signal == "SIGTERM"
    assert time.monotonic() - started < 5
    assert any("timed out after 0.3s" in m for m in sink.messages())


async def test_processes_left_running_after_exit_are_stopped() -> None:
    # the background sleep keeps our pipes open: without stopping it we would wait 600 s
    started = time.monotonic()
    outcome, sink = await run(["sh", "-c", "sleep 600 & echo pids: $!"], grace=1)
    assert (outcome.ending, outcome.exit_code) == ("exited", 0)
    assert time.monotonic() - started < 5
    [pid] = [int(m.split()[1]) for m in sink.messages() if m.startswith("pids:")]
    assert live_pids([pid]) == []
    assert any("left processes running" in m for m in sink.messages())


async def test_descendant_in_its_own_process_group_is_stopped() -> None:
    code = (
        "import subprocess\n"
        "g = subprocess.Popen(['sleep', '600'], process_group=0)\n"
        "print('pids:', g.pid, flush=True)\n"
    )
    outcome, sink = await run(py(code), grace=1)
    assert outcome.exit_code == 0
    [pid] = await pids_from(sink, 1)
    assert live_pids([pid]) == []


async def test_escaped_daemon_holding_the_pipes_does_not_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # without the supervisor (non-Linux) a setsid'd daemon escapes; under it, it is
    # stopped (test_process_supervisor.py): the drain's give-up is the fallback's
    monkeypatch.setattr(process, "SUPERVISE", False)
    monkeypatch.setattr(process, "DRAIN_SECONDS", 0.3)
    code = (
        "import subprocess\n"
        "g = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "print('pids:', g.pid, flush=True)\n"
    )
    outcome, sink = await run(py(code), grace=1)
    [pid] = await pids_from(sink, 1)
    try:
        assert outcome.exit_code == 0
        assert any("held open" in m for m in sink.messages())
    finally:
        os.kill(pid, signal.SIGKILL)  # outside our session: ours to clean up here


async def test_killed_by_a_signal_reports_128_plus_n() -> None:
    outcome, _ = await run(py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert (outcome.ending, outcome.exit_code, outcome.signal) == ("exited", 137, "SIGKILL")


async def test_missing_command(tmp_path: Path) -> None:
    outcome, sink = await run([str(tmp_path / "nope")])
    assert outcome.ending == "spawn_failed"
    assert outcome.error_code == "command_not_found"
    assert outcome.error_message == f"command not found: {tmp_path / 'nope'}"
    assert outcome.exit_code is None
    assert sink.events == []  # the caller reports it


async def test_command_that_is_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("echo hi\n")
    outcome, _ = await run([str(script)])
    assert outcome.error_code == "command_not_found"
    assert outcome.error_message == f"command not executable: {script}"


async def test_missing_working_directory(tmp_path: Path) -> None:
    outcome, _ = await run(["true"], cwd=tmp_path / "gone")
    assert outcome.error_code == "spawn_failed"
    assert "working directory" in (outcome.error_message or "")


async def test_sink_failure_kills_the_child_and_propagates() -> None:
    code = (
        "import os, time\n"
        "print('pids:', os.getpid(), flush=True); time.sleep(0.3)\n"
        "print('second', flush=True); time.sleep(600)\n"
    )
    sink = FailingSink(fail_at=2)
    with pytest.raises(OSError, match="disk full"):
        await run(py(code), sink)
    [pid] = [int(m.split()[1]) for m in sink.messages() if m.startswith("pids:")]
    assert live_pids([pid]) == []


async def test_cancelling_the_task_kills_the_child() -> None:
    sink = ListSink()
    code = "import os, time; print('pids:', os.getpid(), flush=True); time.sleep(600)"
    task = asyncio.create_task(run(py(code), sink))
    [pid] = await pids_from(sink, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert live_pids([pid]) == []


@pytest.mark.slow
@pytest.mark.parametrize("sink_kind", ["null", "list"])
async def test_million_lines_throughput(sink_kind: str) -> None:
    code = (
        "import sys\n"
        "w = sys.stdout.buffer.write\n"
        "for s in range(0, 1000000, 10000):\n"
        "    w(b''.join(b'line %d of the output\\n' % i for i in range(s, s + 10000)))\n"
    )
    sink: Any = NullSink() if sink_kind == "null" else ListSink()
    started = time.perf_counter()
    outcome, _ = await run(py(code), sink)
    elapsed = time.perf_counter() - started
    count = sink.count if sink_kind == "null" else len(sink.events)
    assert outcome.exit_code == 0
    assert count == 1_000_000
    if sink_kind == "list":
        assert sink.events[-1].payload["message"] == "line 999999 of the output"
    print(
        f"\n{sink_kind} sink: {count / elapsed:,.0f} lines/s ({elapsed:.2f}s, {sink.calls} emits)"
    )
