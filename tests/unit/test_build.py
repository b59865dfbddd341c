"""The cached build step (runevents.build)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runevents import build
from runevents.build import MARKER, BuildCache, BuildResult, phase_name
from runevents.configs import BuildStep, Configuration
from tests.unit._sinks import ListSink

PY = sys.executable
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}

#: a build command: counts its runs in $COUNTER and leaves a file in the build dir
STEP = (
    "import os, pathlib, sys\n"
    "with open(os.environ['COUNTER'], 'a') as f: f.write('x')\n"
    "d = pathlib.Path(os.environ['RUNEVENTS_BUILD_DIR'])\n"
    "(d / 'built.txt').write_text('ok')\n"
    "print('building in', d.name)\n"
    "print('a warning', file=sys.stderr)\n"
)


def config(
    tmp_path: Path,
    commands: Sequence[Sequence[str]] | None = None,
    *,
    version: str = "1",
    timeout: float | None = None,
    configuration_id: str = "cfg",
) -> Configuration:
    steps = commands if commands is not None else [[PY, "-c", STEP]]
    return Configuration(
        workspace_id="ws",
        configuration_id=configuration_id,
        command=("true",),
        cwd=tmp_path,
        env={"COUNTER": str(tmp_path / "counter"), "VERSION": version},
        build=BuildStep(commands=tuple(tuple(c) for c in steps), timeout_seconds=timeout),
    )


def builds_run(tmp_path: Path) -> int:
    counter = tmp_path / "counter"
    return len(counter.read_text()) if counter.exists() else 0


async def prepare(
    cache: BuildCache,
    cfg: Configuration,
    sink: ListSink | None = None,
    cancel: asyncio.Event | None = None,
) -> tuple[BuildResult, ListSink]:
    sink = sink or ListSink()
    assert cfg.build is not None
    async with cache.prepare(
        cfg,
        argvs=[list(c) for c in cfg.build.commands],
        sink=sink,
        cancel=cancel or asyncio.Event(),
        env={**ENV, **cfg.env},
        cwd=cfg.cwd,
        kill_grace_seconds=1,
        max_line_bytes=4096,
    ) as result:
        return result, sink


def payload(sink: ListSink, kind: str) -> dict[str, Any]:
    [event] = sink.of(kind)
    return event.payload


async def test_first_build_runs_the_commands_and_leaves_a_marker(tmp_path: Path) -> None:
    cfg = config(tmp_path, [[PY, "-c", STEP], [PY, "-c", "print('second')"]])
    cache = BuildCache(tmp_path / "work")
    result, sink = await prepare(cache, cfg)
    assert (result.status, result.reason, result.exit_code) == ("succeeded", "built", 0)
    assert result.build_dir == tmp_path / "work/builds/ws/cfg" / cfg.content_hash()
    assert (result.build_dir / "built.txt").read_text() == "ok"
    assert (result.build_dir / MARKER).is_file()
    assert sink.types() == [
        "build.created",
        "build.started",
        "build.phase.started",
        *["console.line"] * 2,
        "build.phase.completed",
        "build.phase.started",
        "console.line",
        "build.phase.completed",
        "build.completed",
    ]
    assert payload(sink, "build.created")["reason"] == "changed"
    started, second = (e.payload for e in sink.of("build.phase.started"))
    assert started["phase"] == " ".join(f"{Path(PY).name} -c {STEP}".split())[:47] + "…"
    assert second["command"] == [PY, "-c", "print('second')"]
    first_done = sink.of("build.phase.completed")[0].payload
    assert first_done["status"] == "succeeded"
    assert first_done["exit_code"] == 0
    assert isinstance(first_done["duration_ms"], int)
    lines = sink.console(scope="build")
    assert {(p["stream"], p["message"]) for p in lines[:2]} == {
        ("stdout", f"building in {cfg.content_hash()}"),
        ("stderr", "a warning"),
    }
    assert {p["phase"] for p in lines[:2]} == {started["phase"]}
    assert {e.build_id for e in sink.events} == {f"build_{cfg.content_hash()[:32]}"}
    done = payload(sink, "build.completed")
    assert (done["status"], done["reason"]) == ("succeeded", "built")


async def test_unchanged_configuration_uses_the_cached_build(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cache = BuildCache(tmp_path / "work")
    await prepare(cache, cfg)
    result, sink = await prepare(cache, cfg)
    assert builds_run(tmp_path) == 1
    assert (result.status, result.reason) == ("succeeded", "cached")
    assert sink.types() == ["build.created", "build.completed"]
    assert payload(sink, "build.created")["reason"] == "cached"
    assert payload(sink, "build.completed")["status"] == "succeeded"
    assert payload(sink, "build.completed")["reason"] == "cached"


async def test_changed_configuration_rebuilds_and_removes_the_old_build(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "work")
    old, _ = await prepare(cache, config(tmp_path, version="1"))
    new, _ = await prepare(cache, config(tmp_path, version="2"))
    assert builds_run(tmp_path) == 2
    assert new.build_dir != old.build_dir
    assert not old.build_dir.exists()
    assert sorted(p.name for p in new.build_dir.parent.iterdir()) == sorted(
        [new.build_dir.name, new.build_dir.name + ".lock"]
    )


async def test_a_build_in_use_is_not_removed(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "work")
    cfg1, cfg2, cfg3 = (config(tmp_path, version=v) for v in "123")
    assert cfg1.build is not None
    async with cache.prepare(
        cfg1,
        argvs=[list(c) for c in cfg1.build.commands],
        sink=ListSink(),
        cancel=asyncio.Event(),
        env={**ENV, **cfg1.env},
        cwd=tmp_path,
        kill_grace_seconds=1,
        max_line_bytes=4096,
    ) as first:
        # a run of the old configuration is still using its build
        await prepare(cache, cfg2)
        assert (first.build_dir / MARKER).is_file()
    third, _ = await prepare(cache, cfg3)
    assert not first.build_dir.exists()
    assert [p for p in third.build_dir.parent.iterdir() if p.is_dir()] == [third.build_dir]


async def test_failed_build_leaves_no_marker_and_is_retried(tmp_path: Path) -> None:
    fail_once = (
        "import os, pathlib, sys\n"
        "with open(os.environ['COUNTER'], 'a') as f: f.write('x')\n"
        "(pathlib.Path(os.environ['RUNEVENTS_BUILD_DIR']) / 'partial').write_text('')\n"
        "sys.exit(4 if len(open(os.environ['COUNTER']).read()) == 1 else 0)\n"
    )
    cfg = config(tmp_path, [[PY, "-c", fail_once], [PY, "-c", "print('never on failure')"]])
    cache = BuildCache(tmp_path / "work")
    result, sink = await prepare(cache, cfg)
    assert (result.status, result.reason, result.exit_code) == ("failed", "exit_code", 4)
    assert result.failure == {
        "stage": "build",
        "code": "exit_code",
        "message": f"build command {sink.of('build.phase.started')[0].payload['phase']!r}"
        " exited with code 4",
    }
    assert not (result.build_dir / MARKER).exists()
    assert "never on failure" not in sink.messages()
    assert sink.types()[-2:] == ["build.phase.completed", "build.completed"]
    assert payload(sink, "build.phase.completed")["status"] == "failed"
    assert payload(sink, "build.completed")["status"] == "failed"
    # the next run builds again, from an empty directory
    (result.build_dir / "stale").write_text("")
    retry, sink = await prepare(cache, cfg)
    assert (retry.status, retry.reason) == ("succeeded", "built")
    assert payload(sink, "build.created")["reason"] == "changed"
    assert not (retry.build_dir / "stale").exists()


async def test_build_timeout_is_a_failure(tmp_path: Path) -> None:
    cfg = config(tmp_path, [[PY, "-c", "import time; time.sleep(600)"]], timeout=0.3)
    result, _ = await prepare(BuildCache(tmp_path / "work"), cfg)
    assert (result.status, result.reason) == ("failed", "timeout")
    assert result.failure is not None
    assert result.failure["code"] == "timeout"
    assert "0.3s" in result.failure["message"]


async def test_cancel_during_the_build(tmp_path: Path) -> None:
    code = "print('started', flush=True); import time; time.sleep(600)"
    cfg = config(tmp_path, [[PY, "-c", code]])
    cache = BuildCache(tmp_path / "work")
    cancel = asyncio.Event()
    sink = ListSink()
    task = asyncio.create_task(prepare(cache, cfg, sink, cancel))
    await sink.wait_for("started")
    cancel.set()
    result, _ = await task
    assert (result.status, result.reason, result.failure) == ("cancelled", "cancelled", None)
    assert not (result.build_dir / MARKER).exists()
    # the lock was released: a new attempt gets it at once
    fd = build._try_lock(result.build_dir.with_name(result.build_dir.name + ".lock"), fcntl.LOCK_EX)
    assert fd is not None
    os.close(fd)


async def test_concurrent_runs_build_once(tmp_path: Path) -> None:
    slow = STEP + "import time; time.sleep(0.5)\n"
    cfg = config(tmp_path, [[PY, "-c", slow]])
    cache = BuildCache(tmp_path / "work")
    (a, sink_a), (b, sink_b) = await asyncio.gather(prepare(cache, cfg), prepare(cache, cfg))
    assert builds_run(tmp_path) == 1
    assert {a.status, b.status} == {"succeeded"}
    assert sorted([a.reason, b.reason]) == ["built", "cached"]
    waited = sink_b if b.reason == "cached" else sink_a
    assert any("waiting for another run's build" in m for m in waited.messages())


async def test_build_command_not_found(tmp_path: Path) -> None:
    cfg = config(tmp_path, [[str(tmp_path / "missing-tool"), "install"]])
    result, sink = await prepare(BuildCache(tmp_path / "work"), cfg)
    assert (result.status, result.reason) == ("failed", "command_not_found")
    assert result.failure is not None
    assert result.failure["message"] == f"command not found: {tmp_path / 'missing-tool'}"
    [line] = sink.console(scope="build")
    assert line["level"] == "error"
    assert str(tmp_path / "missing-tool") in line["message"]


def test_lock_survives_the_lock_file_being_replaced(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    held = build._try_lock(path, fcntl.LOCK_EX)
    assert held is not None
    assert build._try_lock(path, fcntl.LOCK_SH) is None
    # the cleanup unlinks lock files: a later locker must lock the *new* file
    path.unlink()
    fresh = build._try_lock(path, fcntl.LOCK_EX)
    assert fresh is not None
    assert os.fstat(fresh).st_ino == path.stat().st_ino
    os.close(held)
    os.close(fresh)


def test_phase_name() -> None:
    assert phase_name(["/usr/bin/python3", "-m", "pip", "install", "-r", "a/req.txt"]) == (
        "python3 -m pip install -r req.txt"
    )
    assert phase_name(["sh", "-c", "cd /x && make\n  all"]) == "sh -c cd /x && make all"
    long = phase_name(["tool", "x" * 100])
    assert len(long) == build.MAX_PHASE_CHARS
    assert long.endswith("…")
