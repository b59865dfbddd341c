"""The configuration's build step, cached by the configuration's content hash.

A build runs in ``{work_dir}/builds/{workspace}/{configuration}/{content_hash}/``
(given to build commands and to the run command as ``RUNEVENTS_BUILD_DIR``),
and only when no completed build for that hash exists: a build that succeeded
leaves the marker file :data:`MARKER`; a failed or cancelled one leaves none
and the next run starts it over in a wiped directory.

Concurrency (several runs of one configuration, in one or several worker
processes) is decided by one ``fcntl.flock`` lock file per hash beside the
build directories:

* a run *uses* a build while holding the lock **shared** (until its command ends);
* a run *builds* while holding it **exclusive** (so two runs never build into
  the same directory, and nobody builds under a run using it);
* after a successful build, directories of *other* hashes of the same
  configuration are removed -- each only if its lock can be taken exclusive
  at once, i.e. no run is using or building it.

``flock`` locks vanish with their process, so a crashed worker never wedges a
build. Lock files are unlinked by the cleanup, so every acquisition re-checks
that the locked file is still the one at the path.

Events (contract section 2): ``build.created`` (``reason``: ``changed`` = no
completed build for this content, or ``cached``), then for a real build
``build.started``, per command ``build.phase.started`` / console lines with
``scope: "build"`` / ``build.phase.completed``, and ``build.completed``
(``status``, ``exit_code``, ``duration_ms``, ``reason``: ``built``, ``cached``,
``exit_code``, ``timeout``, ``cancelled``, ``command_not_found``, ``spawn_failed``).
A cached build is ``build.created`` + ``build.completed`` with
``status: "succeeded", reason: "cached"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import shutil
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from runevents.capture import ConsoleTranslator
from runevents.configs import Configuration
from runevents.emitter import Emitter, Sink
from runevents.events import EventDraft
from runevents.masking import Masker
from runevents.models import rfc3339, utcnow
from runevents.process import ProcessOutcome, run_process

#: written last into a build directory whose commands all succeeded
MARKER: Final = ".runevents-build.json"
#: how often a waiting run re-tries a build lock (seconds)
LOCK_POLL_SECONDS: Final = 0.1
#: longest build phase name (characters)
MAX_PHASE_CHARS: Final = 48

BuildStatus = Literal["succeeded", "failed", "cancelled"]


@dataclasses.dataclass(frozen=True, slots=True)
class BuildResult:
    """How the build step ended (``build.completed``'s payload, plus the directory)."""

    status: BuildStatus
    #: ``built``, ``cached``, ``exit_code``, ``timeout``, ``cancelled``, ``command_not_found``...
    reason: str
    #: exit code of the failing command (or of the last one when all succeeded)
    exit_code: int | None
    duration_ms: int
    build_dir: Path
    build_id: str
    #: ``{"stage": "build", "code", "message"}`` when ``status == "failed"``
    failure: dict[str, Any] | None


def phase_name(argv: Sequence[str]) -> str:
    """A short, one-line phase name for a build command: paths by base name."""
    words = [_short(argv[0]), *(_short(arg) for arg in argv[1:])]
    name = " ".join(" ".join(words).split())  # an inline script's newlines become spaces
    return name if len(name) <= MAX_PHASE_CHARS else name[: MAX_PHASE_CHARS - 1] + "…"


def _short(arg: str) -> str:
    # a path (no whitespace, has a slash) by its base name; anything else as it is
    if "/" in arg and not any(c.isspace() for c in arg) and Path(arg).name:
        return Path(arg).name
    return arg


def build_id_of(content_hash: str) -> str:
    """The ``build_id`` stamped on a build's events: one per configuration content."""
    return f"build_{content_hash[:32]}"


class BuildCache:
    """Build directories under ``{work_dir}/builds`` and the locks that guard them."""

    def __init__(self, work_dir: Path) -> None:
        self.root = work_dir / "builds"

    def config_root(self, config: Configuration) -> Path:
        """The directory holding every build of ``config`` (one per content hash)."""
        return self.root / config.workspace_id / config.configuration_id

    def build_dir(self, config: Configuration) -> Path:
        """Where ``config``'s current content is built."""
        return self.config_root(config) / config.content_hash()

    def is_built(self, config: Configuration) -> bool:
        """Whether a completed build of ``config``'s current content exists."""
        return (self.build_dir(config) / MARKER).is_file()

    @contextlib.asynccontextmanager
    async def prepare(
        self,
        config: Configuration,
        *,
        argvs: Sequence[Sequence[str]],
        sink: Sink,
        cancel: asyncio.Event,
        env: Mapping[str, str],
        cwd: Path | None,
        kill_grace_seconds: float,
        max_line_bytes: int,
        masker: Masker | None = None,
    ) -> AsyncIterator[BuildResult]:
        """Make sure ``config`` is built (emitting ``build.*`` events); yield how it went.

        ``argvs`` are the build commands, placeholders already expanded. While
        the body runs after a successful build, the build is held shared so no
        cleanup removes it. ``cwd`` is the commands' directory (the build
        directory when ``None``); ``RUNEVENTS_BUILD_DIR`` is added to ``env``.
        ``masker``: the run's secrets, masked in every build event.
        """
        assert config.build is not None, "configuration has no build step"
        # hashed once: the hash reads the build inputs, which could change under us
        digest = config.content_hash()
        build_dir = self.config_root(config) / digest
        build_id = build_id_of(digest)
        lock_path = build_dir.with_name(build_dir.name + ".lock")
        emitter = Emitter(sink, ConsoleTranslator(scope="build", build_id=build_id), masker)
        started = time.monotonic()
        # the reason says what this run found on arrival; build.completed's reason
        # says what happened (another run may finish the same build meanwhile)
        reason = "cached" if (build_dir / MARKER).is_file() else "changed"
        await emitter.emit(
            [
                _draft(
                    "build.created",
                    build_id,
                    status="created",
                    reason=reason,
                    content_hash=digest,
                )
            ]
        )
        built = False
        while True:
            fd = await _acquire(lock_path, fcntl.LOCK_SH, cancel, emitter)
            if fd is None:
                yield await _ended(
                    emitter, build_dir, build_id, started, "cancelled", "cancelled", None, None
                )
                return
            if (build_dir / MARKER).is_file():
                try:
                    yield await _ended(
                        emitter,
                        build_dir,
                        build_id,
                        started,
                        "succeeded",
                        "built" if built else "cached",
                        0 if built else None,
                        None,
                    )
                finally:
                    os.close(fd)
                return
            os.close(fd)
            fd = await _acquire(lock_path, fcntl.LOCK_EX, cancel, emitter)
            if fd is None:
                continue  # cancelled: the shared attempt above reports it
            try:
                if (build_dir / MARKER).is_file():
                    continue  # another run built it while we waited
                failed = await self._run_commands(
                    config,
                    argvs,
                    build_dir,
                    build_id,
                    emitter,
                    cancel,
                    env,
                    cwd,
                    kill_grace_seconds,
                    max_line_bytes,
                    started,
                )
            finally:
                os.close(fd)
            if failed is not None:
                yield failed
                return
            built = True
            await self._remove_other_builds(build_dir)

    async def _run_commands(
        self,
        config: Configuration,
        argvs: Sequence[Sequence[str]],
        build_dir: Path,
        build_id: str,
        emitter: Emitter,
        cancel: asyncio.Event,
        env: Mapping[str, str],
        cwd: Path | None,
        kill_grace_seconds: float,
        max_line_bytes: int,
        started: float,
    ) -> BuildResult | None:
        """Run every build command (lock held exclusive); ``None`` when all succeeded."""
        assert config.build is not None
        await asyncio.to_thread(_fresh_dir, build_dir)
        await emitter.emit([_draft("build.started", build_id, status="building")])
        timeout = config.build.timeout_seconds
        child_env = {**env, "RUNEVENTS_BUILD_DIR": str(build_dir)}
        exit_code: int | None = None
        for index, argv in enumerate(argvs):
            phase = phase_name(argv)
            emitter.translator.phase = phase
            await emitter.emit(
                [
                    _draft(
                        "build.phase.started",
                        build_id,
                        phase=phase,
                        index=index,
                        command=list(argv),
                    )
                ]
            )
            remaining = None if timeout is None else timeout - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                outcome = ProcessOutcome("timeout", None, None, None, None, 0)
            else:
                outcome = await run_process(
                    argv,
                    cwd=cwd or build_dir,
                    env=child_env,
                    emitter=emitter,
                    cancel=cancel,
                    timeout_seconds=remaining,
                    kill_grace_seconds=kill_grace_seconds,
                    max_line_bytes=max_line_bytes,
                )
            status, reason, failure = _judge(outcome, phase, timeout)
            if outcome.ending == "spawn_failed":
                await emitter.notice(outcome.error_message or "cannot start", level="error")
            await emitter.emit(
                [
                    _draft(
                        "build.phase.completed",
                        build_id,
                        phase=phase,
                        status=status,
                        exit_code=outcome.exit_code,
                        duration_ms=outcome.duration_ms,
                    )
                ]
            )
            emitter.translator.phase = None
            exit_code = outcome.exit_code
            if status != "succeeded":
                return await _ended(
                    emitter, build_dir, build_id, started, status, reason, exit_code, failure
                )
        marker = {
            "content_hash": build_dir.name,
            "completed_at": rfc3339(utcnow()),
            "duration_ms": _ms_since(started),
        }
        await asyncio.to_thread(_write_marker, build_dir, orjson.dumps(marker))
        # build.completed is emitted by the shared re-check that follows (reason "built")
        return None

    async def _remove_other_builds(self, keep: Path) -> None:
        """Remove the configuration's other builds that nobody uses or builds right now."""
        root = keep.parent
        names = {p.name.removesuffix(".lock") for p in root.iterdir()} - {keep.name}
        for name in sorted(names):
            lock_path = root / f"{name}.lock"
            fd = _try_lock(lock_path, fcntl.LOCK_EX)
            if fd is None:
                continue  # in use: a later successful build removes it
            try:
                await asyncio.to_thread(shutil.rmtree, root / name, True)
                lock_path.unlink(missing_ok=True)
            finally:
                os.close(fd)


async def _ended(
    emitter: Emitter,
    build_dir: Path,
    build_id: str,
    started: float,
    status: BuildStatus,
    reason: str,
    exit_code: int | None,
    failure: dict[str, Any] | None,
) -> BuildResult:
    duration_ms = _ms_since(started)
    await emitter.emit(
        [
            _draft(
                "build.completed",
                build_id,
                status=status,
                reason=reason,
                exit_code=exit_code,
                duration_ms=duration_ms,
            )
        ]
    )
    return BuildResult(
        status=status,
        reason=reason,
        exit_code=exit_code,
        duration_ms=duration_ms,
        build_dir=build_dir,
        build_id=build_id,
        failure=failure,
    )


def _judge(
    outcome: ProcessOutcome, phase: str, timeout: float | None
) -> tuple[BuildStatus, str, dict[str, Any] | None]:
    """(status, reason, failure) of one build command's outcome."""
    if outcome.ending == "cancelled":
        return "cancelled", "cancelled", None
    if outcome.ending == "timeout":
        message = f"build timed out after {timeout:g}s (in phase {phase!r})"
        return "failed", "timeout", {"stage": "build", "code": "timeout", "message": message}
    if outcome.ending == "spawn_failed":
        code = outcome.error_code or "spawn_failed"
        message = outcome.error_message or "cannot start the build command"
        return "failed", code, {"stage": "build", "code": code, "message": message}
    if outcome.exit_code != 0:
        how = f"was killed by {outcome.signal}" if outcome.signal else "exited"
        message = f"build command {phase!r} {how} with code {outcome.exit_code}"
        return "failed", "exit_code", {"stage": "build", "code": "exit_code", "message": message}
    return "succeeded", "succeeded", None


def _draft(kind: str, build_id: str, **payload: Any) -> EventDraft:
    return EventDraft(type=kind, payload=payload, build_id=build_id)


def _try_lock(path: Path, mode: int) -> int | None:
    """The fd of ``path`` locked with ``mode``, or ``None`` if someone holds a conflicting lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        # the cleanup may have unlinked the file between our open and our lock:
        # then we hold a lock nobody else will ever see -- start over
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


async def _acquire(path: Path, mode: int, cancel: asyncio.Event, emitter: Emitter) -> int | None:
    """Wait for the lock (polling, so a cancel interrupts the wait); ``None`` if cancelled."""
    said = False
    while not cancel.is_set():
        fd = _try_lock(path, mode)
        if fd is not None:
            return fd
        if not said:
            said = True
            await emitter.notice("waiting for another run's build of this configuration")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cancel.wait(), LOCK_POLL_SECONDS)
    return None


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _write_marker(build_dir: Path, data: bytes) -> None:
    tmp = build_dir / f"{MARKER}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, build_dir / MARKER)


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
