"""Stopping every process of a command, each signalled once (runevents.supervisor, Linux).

Regressions of the process-stopping defects: a descendant in a session of its
own (``setsid``) outlived cancel and timeout; every process got SIGTERM twice
(the group's ``killpg`` plus a ``kill`` per session member), so a shell
``trap`` ran twice and was SIGKILLed before its cleanup finished; and
``kill -9`` of the executing process left the job's tree running (the real
server/worker version is ``tests/acceptance/test_job_processes.py``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runevents import process
from tests.unit._sinks import ListSink, live_pids
from tests.unit.test_process import pids_from, py, run

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc, prctl")

SETSID_CHILD = (
    "import subprocess, os, time\n"
    "g = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
    "print('pids:', os.getpid(), g.pid, flush=True)\n"
    "time.sleep(600)\n"
)


def kill_all(pids: list[int]) -> None:
    for pid in live_pids(pids):
        os.kill(pid, signal.SIGKILL)


async def test_a_setsid_descendant_survived_cancel() -> None:
    cancel = asyncio.Event()
    sink = ListSink()
    task = asyncio.create_task(run(py(SETSID_CHILD), sink, cancel=cancel, grace=1))
    pids = await pids_from(sink, 2)
    try:
        cancel.set()
        outcome, _ = await task
        assert (outcome.ending, outcome.exit_code, outcome.signal) == ("cancelled", 143, "SIGTERM")
        assert live_pids(pids) == [], "a process of the command outlived cancel"
        # its output pipes were closed by its death, not abandoned
        assert not any("held open" in m for m in sink.messages())
    finally:
        kill_all(pids)


async def test_a_setsid_descendant_survived_timeout() -> None:
    sink = ListSink()
    task = asyncio.create_task(run(py(SETSID_CHILD), sink, timeout=1.5, grace=1))
    pids = await pids_from(sink, 2)
    try:
        outcome, _ = await task
        assert (outcome.ending, outcome.exit_code) == ("timeout", 143)
        assert live_pids(pids) == [], "a process of the command outlived its timeout"
    finally:
        kill_all(pids)


async def test_a_setsid_descendant_left_by_a_command_that_exited_is_stopped() -> None:
    code = (
        "import subprocess\n"
        "g = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "print('pids:', g.pid, flush=True)\n"
    )
    started = time.monotonic()
    outcome, sink = await run(py(code), grace=1)
    [pid] = await pids_from(sink, 1)
    try:
        assert (outcome.ending, outcome.exit_code) == ("exited", 0)
        assert live_pids([pid]) == []
        assert any("left processes running" in m for m in sink.messages())
        assert time.monotonic() - started < 5
    finally:
        kill_all([pid])


# Each process counts the SIGTERMs it gets and exits 1 s after the first one (a
# second SIGTERM, 8-30 ms after the first, lands well within that second).
# Counted at delivery (one byte per signal on the wakeup fd): Python-level
# handlers would merge two signals that arrive before the handler runs. Lines
# in one write each: four processes share the pipe.
COUNTER = (
    "import os, signal, sys, time\n"
    "name = sys.argv[1]\n"
    "r, w = os.pipe()\n"
    "os.set_blocking(w, False)\n"
    "signal.signal(signal.SIGTERM, lambda s, f: None)\n"
    "signal.set_wakeup_fd(w)\n"
    "os.write(1, b'ready %s %d\\n' % (name.encode(), os.getpid()))\n"
    "got = os.read(r, 64)\n"
    "time.sleep(1.0)\n"
    "os.set_blocking(r, False)\n"
    "try:\n"
    "    got += os.read(r, 64)\n"
    "except BlockingIOError:\n"
    "    pass\n"
    "os.write(1, b'TERM %s %d\\n' % (name.encode(), len(got)))\n"
    "sys.exit(0)\n"
)
TREE = (
    "import os, subprocess, sys, time\n"
    "c = [sys.executable, '-c', sys.argv[1]]\n"
    "subprocess.Popen(c + ['same-group'])\n"
    "subprocess.Popen(c + ['own-group'], process_group=0)\n"
    "subprocess.Popen(c + ['own-session'], start_new_session=True)\n"
    "os.execv(sys.executable, c + ['job'])\n"
)


@pytest.mark.parametrize("supervised", [True, False], ids=["supervised", "fallback"])
async def test_each_process_got_sigterm_twice(
    monkeypatch: pytest.MonkeyPatch, supervised: bool
) -> None:
    monkeypatch.setattr(process, "SUPERVISE", supervised, raising=False)
    names = ["job", "same-group", "own-group", "own-session"]
    if not supervised:
        names.remove("own-session")  # escapes the fallback (the supervisor's reason to be)
    cancel = asyncio.Event()
    sink = ListSink()
    task = asyncio.create_task(run([*py(TREE), COUNTER], sink, cancel=cancel, grace=4))

    def ready() -> dict[str, int]:
        return {m.split()[1]: int(m.split()[2]) for m in sink.messages() if m.startswith("ready ")}

    async with asyncio.timeout(60):
        while len(ready()) < 4:
            sink.changed.clear()
            await sink.changed.wait()
    pids = ready()
    try:
        cancel.set()
        outcome, _ = await task
        terms = {m.split()[1]: int(m.split()[2]) for m in sink.messages() if m.startswith("TERM ")}
        assert {name: terms.get(name, 0) for name in names} == dict.fromkeys(names, 1)
        # each obeyed within the grace period: no SIGKILL, the job's own exit code
        assert (outcome.ending, outcome.exit_code, outcome.signal) == ("cancelled", 0, None)
        assert not any("did not exit after SIGTERM" in m for m in sink.messages())
    finally:
        kill_all(list(pids.values()))


TRAP = (
    "trap 'echo got TERM; sleep 1; echo cleanup done; exit 5' TERM; "
    "echo ready; while true; do sleep 0.1; done"
)


async def test_each_process_got_sigterm_twice_so_a_shell_trap_ran_twice() -> None:
    cancel = asyncio.Event()
    sink = ListSink()
    task = asyncio.create_task(run(["bash", "-c", TRAP], sink, cancel=cancel, grace=4))
    await sink.wait_for("ready")
    cancel.set()
    outcome, _ = await task
    said = sink.messages("stdout")
    assert said.count("got TERM") == 1, said
    assert "cleanup done" in said, said
    assert (outcome.ending, outcome.exit_code) == ("cancelled", 5)


async def test_the_command_s_killing_signal_is_reported_without_a_core_of_ours(
    tmp_path: Path,
) -> None:
    # the supervisor dies of the command's signal, so the exit code reads as before
    outcome, _ = await run(
        py("import os, signal; os.kill(os.getpid(), signal.SIGABRT)"), cwd=tmp_path
    )
    assert (outcome.ending, outcome.exit_code, outcome.signal) == ("exited", 134, "SIGABRT")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("core")]


async def test_a_missing_command_is_reported_by_the_supervisor(tmp_path: Path) -> None:
    outcome, sink = await run(["no-such-program-of-runevents"], cwd=tmp_path)
    assert (outcome.ending, outcome.error_code) == ("spawn_failed", "command_not_found")
    assert outcome.error_message == "command not found: no-such-program-of-runevents"
    assert sink.events == []


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from runevents.configs import Configuration
    from runevents.executor import execute
    from tests.unit._sinks import NullSink

    async def main() -> None:
        config = Configuration(
            workspace_id="acme", configuration_id="tree", command=tuple(sys.argv[2:]),
            cwd=Path(sys.argv[1]),
        )
        await execute(config, run_id="run_01JAAAAAAAAAAAAAAAAAAAAAAA", options={}, sink=NullSink(),
                      cancel=asyncio.Event(), work_dir=Path(sys.argv[1]), max_line_bytes=1024,
                      kill_grace_seconds=1)

    asyncio.run(main())
    """
)
# the job writes its tree's pids to a file (the mini worker's sink discards output)
PID_TREE = (
    "import os, subprocess, sys, time\n"
    "ign = 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'\n"
    "kids = [subprocess.Popen([sys.executable, '-c', ign]),\n"
    "        subprocess.Popen(['sleep', '600'], process_group=0),\n"
    "        subprocess.Popen(['sleep', '600'], start_new_session=True)]\n"
    "pids = [os.getpid()] + [k.pid for k in kids]\n"
    "open('pids.tmp', 'w').write(' '.join(map(str, pids))); os.rename('pids.tmp', 'pids')\n"
    "time.sleep(600)\n"
)


def test_kill_9_of_the_executing_process_left_the_jobs_processes_running(
    tmp_path: Path,
) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path), *py(PID_TREE)],
        cwd=Path(__file__).parents[2],
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "pids").exists():
            assert time.monotonic() < deadline, "the job never started its tree"
            assert worker.poll() is None
            time.sleep(0.05)
        pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
        assert len(live_pids(pids)) == 4
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 10
        while live_pids(pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_pids(pids) == [], f"outlived the killed worker (of {pids})"
    finally:
        if worker.poll() is None:
            worker.kill()
        kill_all(pids)


LEADER = (
    "import subprocess, time\n"
    "same = subprocess.Popen(['sleep', '600'])\n"
    "own = subprocess.Popen(['sleep', '600'], process_group=0)\n"
    "print(same.pid, own.pid, flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.mark.parametrize("sender", ["supervisor", "fallback"])
def test_each_process_got_sigterm_twice_counted_at_the_sender(
    monkeypatch: pytest.MonkeyPatch, sender: str
) -> None:
    """Deterministic twin of the tests above (the kernel merges a second SIGTERM that
    arrives before the first was delivered): which processes each call reaches."""
    from runevents import process_group

    # a group leader with a child in its group and one in a group of its own
    leader = subprocess.Popen(
        [sys.executable, "-c", LEADER], start_new_session=True, stdout=subprocess.PIPE
    )
    assert leader.stdout is not None
    same, own = (int(pid) for pid in leader.stdout.readline().split())
    watched = {leader.pid, same, own}
    try:
        groups = {pid: os.getpgid(pid) for pid in watched}
        assert groups == {leader.pid: leader.pid, same: leader.pid, own: own}
        hits: collections.Counter[int] = collections.Counter()

        def killpg(group: int, sig: int) -> None:
            assert sig == signal.SIGTERM
            hits.update(pid for pid, g in groups.items() if g == group)

        def kill(pid: int, sig: int) -> None:
            assert sig == signal.SIGTERM
            hits[pid] += 1

        monkeypatch.setattr(os, "killpg", killpg)
        monkeypatch.setattr(os, "kill", kill)
        if sender == "fallback":
            process_group.signal_group(leader.pid, signal.SIGTERM)
        else:  # as the supervisor's job: the leader is our child
            from runevents import supervisor

            supervisor.signal_descendants(leader.pid, True, signal.SIGTERM)
        monkeypatch.undo()
        assert {pid: hits[pid] for pid in watched} == dict.fromkeys(watched, 1)
    finally:
        monkeypatch.undo()
        for pid in live_pids(sorted(watched)):
            os.kill(pid, signal.SIGKILL)
        leader.wait()
