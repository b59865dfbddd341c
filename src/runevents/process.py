"""Run one child process, capture its output as events, and stop it for good.

:func:`run_process` is the single primitive the build step and the run command
share. stdout and stderr are read concurrently through a small
:class:`asyncio.SubprocessProtocol` that pauses a pipe when its consumer falls
behind (the pipe then fills and the child blocks: bounded memory, no deadlock).
Everything that arrived in one read becomes one ``sink.emit`` call.

On Linux the command runs under :mod:`runevents.supervisor` (our direct child,
in a session of its own; the command inherits the pipes, nothing is copied):
a child subreaper, so every descendant of the command stays within reach --
one that moved to its own process group or called ``setsid`` included -- and
it stops them all when this process dies (``kill -9`` of the server or
worker). Stopping (cancel, timeout, or processes left behind by a command that
exited): the supervisor sends SIGTERM once to each process, SIGKILL after the
grace period, reaps them, and exits with the command's own status. A command
that cannot be started is reported by the supervisor (``command_not_found``...).

Elsewhere the command itself is the child, with its own session
(``start_new_session=True``): SIGTERM to the group (and, with ``/proc``, to
session members outside it), SIGKILL after the grace period; a descendant that
starts a new *session* escapes there. Either way, if something outside our
reach still holds our pipes we stop reading after :data:`DRAIN_SECONDS`. The
signalling lives in ``process_group.py``; what the output becomes (events,
masked, in order) in ``emitter.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, cast

from runevents import supervisor
from runevents.capture import LineSplitter, Stream
from runevents.emitter import Emitter
from runevents.process_group import (
    Stopped,
    SupervisorStatus,
    die_with_parent,
    group_alive,
    kill_supervised,
    signal_group,
    stop_group,
    stop_supervised,
)

#: a pipe stops being read once this many bytes wait for the consumer
HIGH_WATER: Final = 256 * 1024
#: after the process group is gone, how long to wait for the pipes to close
DRAIN_SECONDS: Final = 2.0
# the parent-death signal (process_group.die_with_parent) is Linux's prctl
_LINUX = sys.platform.startswith("linux")
#: run commands under runevents.supervisor (Linux); tests turn it off to check the fallback
SUPERVISE: bool = supervisor.available()

Ending = Literal["exited", "cancelled", "timeout", "spawn_failed"]


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessOutcome:
    """How one child process ended."""

    #: exited on its own, or stopped for cancel/timeout, or never started
    ending: Ending
    #: exit status; a child killed by signal N reports ``128 + N`` (shell convention)
    exit_code: int | None
    #: the killing signal's name (``SIGTERM``...) when the child died of a signal
    signal: str | None
    #: for ``spawn_failed``: ``command_not_found`` or ``spawn_failed``, and why
    error_code: str | None
    error_message: str | None
    duration_ms: int


class _Pipe:
    """Buffered bytes of one child pipe, waiting for the consumer."""

    __slots__ = ("chunks", "eof", "paused", "size", "waiter")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.eof = False
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Collects stdout/stderr chunks with flow control; signals process exit."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.SubprocessTransport | None = None
        self.pipes = {1: _Pipe(), 2: _Pipe()}
        self.exited: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Duck-typed, not isinstance: uvloop (uvicorn's default loop) hands out its
        # own transport classes, which do not subclass asyncio's.
        self.transport = cast(asyncio.SubprocessTransport, transport)

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        pipe = self.pipes[fd]
        pipe.chunks.append(bytes(data))
        pipe.size += len(data)
        if pipe.size >= HIGH_WATER and not pipe.paused:
            reader = self._pipe_transport(fd)
            if reader is not None:
                reader.pause_reading()
                pipe.paused = True
        pipe.wake()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd in self.pipes:
            self.pipes[fd].eof = True
            self.pipes[fd].wake()

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    async def read(self, fd: int) -> bytes:
        """Everything buffered for ``fd`` (waiting for some); ``b""`` at end of stream."""
        pipe = self.pipes[fd]
        while not pipe.chunks and not pipe.eof:
            pipe.waiter = self._loop.create_future()
            try:
                await pipe.waiter
            finally:
                pipe.waiter = None
        data = pipe.chunks[0] if len(pipe.chunks) == 1 else b"".join(pipe.chunks)
        pipe.chunks.clear()
        pipe.size = 0
        if pipe.paused:
            reader = self._pipe_transport(fd)
            if reader is not None:
                reader.resume_reading()
            pipe.paused = False
        return data

    def _pipe_transport(self, fd: int) -> asyncio.ReadTransport | None:
        if self.transport is None:
            return None
        reader = self.transport.get_pipe_transport(fd)
        # duck-typed for the same reason as in connection_made (uvloop)
        if reader is None or not hasattr(reader, "pause_reading"):
            return None
        return cast(asyncio.ReadTransport, reader)


def exit_code_of(returncode: int) -> tuple[int, str | None]:
    """``(exit_code, signal name)``: asyncio's ``-N`` for "killed by signal N" -> ``128 + N``."""
    if returncode >= 0:
        return returncode, None
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return 128 - returncode, name


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    emitter: Emitter,
    cancel: asyncio.Event,
    timeout_seconds: float | None,
    kill_grace_seconds: float,
    max_line_bytes: int,
) -> ProcessOutcome:
    """Run ``argv`` to its end, emitting its output; stop it on cancel or timeout.

    Raises only what ``emitter`` raises (sink failures) or ``CancelledError``;
    in both cases every process of the command is killed and reaped first.
    """
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    protocol = _ChildProtocol(loop)
    supervised = SUPERVISE
    spawn: dict[str, Any] = {"preexec_fn": die_with_parent if _LINUX else None}
    child_argv = list(argv)
    status_read = status_write = -1
    if supervised:
        status_read, status_write = os.pipe()
        child_argv = supervisor.command(
            argv, status_fd=status_write, grace_seconds=kill_grace_seconds, parent=os.getpid()
        )
        spawn = {"pass_fds": (status_write,)}
    try:
        transport, _ = await loop.subprocess_exec(
            lambda: protocol,
            *child_argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            **spawn,
        )
    except OSError as exc:
        if status_read >= 0:
            os.close(status_read)
        return _spawn_failed(exc, argv, cwd, started)
    finally:
        if status_write >= 0:
            os.close(status_write)  # the supervisor holds it now: end of file when it is gone

    # the child: the command, or the supervisor running it (the target of our requests)
    pid = transport.get_pid()
    status_file = os.fdopen(status_read, "rb", buffering=0) if supervised else None
    status: SupervisorStatus | None = None
    status_transport: asyncio.BaseTransport | None = None
    pumps: list[asyncio.Task[None]] = []
    try:
        job_ended: asyncio.Future[None] = protocol.exited
        if status_file is not None:
            status = SupervisorStatus(loop)
            status_transport, _ = await loop.connect_read_pipe(lambda: status, status_file)
            job = await status.started
            if isinstance(job, OSError):  # the supervisor could not start the command
                await asyncio.shield(protocol.exited)
                transport.close()
                return _spawn_failed(job, argv, cwd, started)
            job_ended = _first(loop, protocol.exited, status.left)
        pumps = [
            asyncio.create_task(_pump(protocol, 1, "stdout", emitter, max_line_bytes)),
            asyncio.create_task(_pump(protocol, 2, "stderr", emitter, max_line_bytes)),
        ]
        ending = await _wait(job_ended, pumps, cancel, timeout_seconds, started)
        if ending == "exited":
            if _left_running(pid, protocol.exited, status):
                await emitter.notice("the command exited but left processes running; stopping them")
                await _stop(pid, protocol.exited, kill_grace_seconds, status)
        else:
            why = (
                "cancel requested"
                if ending == "cancelled"
                else (f"timed out after {timeout_seconds:g}s")
            )
            await emitter.notice(
                f"{why}; sending SIGTERM to the process group"
                f" (SIGKILL after {kill_grace_seconds:g}s)"
            )
            used = await _stop(pid, protocol.exited, kill_grace_seconds, status)
            if used == "SIGKILL":
                await emitter.notice("the process group did not exit after SIGTERM; killed")
        # the supervisor exits last (with the command's status), once all is gone
        await asyncio.shield(protocol.exited)
        await _drain(pumps, emitter)
    except BaseException:
        # sink failure or our own cancellation: never leave the child behind
        for pump in pumps:
            pump.cancel()
        with contextlib.suppress(BaseException):
            if status is not None:
                await kill_supervised(pid, protocol.exited)
            else:
                signal_group(pid, signal.SIGKILL)
                await asyncio.shield(protocol.exited)
        transport.close()
        raise
    finally:
        if status_transport is not None:
            status_transport.close()
        elif status_file is not None:
            status_file.close()
    transport.close()
    returncode = transport.get_returncode()
    assert returncode is not None
    exit_code, signame = exit_code_of(returncode)
    return ProcessOutcome(
        ending=ending,
        exit_code=exit_code,
        signal=signame,
        error_code=None,
        error_message=None,
        duration_ms=_ms_since(started),
    )


def _first(loop: asyncio.AbstractEventLoop, *futures: asyncio.Future[None]) -> asyncio.Future[None]:
    """A future done when the first of ``futures`` is."""
    first: asyncio.Future[None] = loop.create_future()

    def done(_: asyncio.Future[None]) -> None:
        if not first.done():
            first.set_result(None)

    for future in futures:
        future.add_done_callback(done)
    return first


def _left_running(pid: int, exited: asyncio.Future[None], status: SupervisorStatus | None) -> bool:
    """After the command exited: do processes it started still run?"""
    if status is None:
        return group_alive(pid)
    # the supervisor says so, and waits for us to stop them
    return status.left.done() and not exited.done()


async def _stop(
    pid: int, exited: asyncio.Future[None], grace_seconds: float, status: SupervisorStatus | None
) -> Stopped:
    if status is None:
        return await stop_group(pid, exited, grace_seconds)
    return await stop_supervised(pid, exited, grace_seconds)


async def _pump(
    protocol: _ChildProtocol, fd: int, stream: Stream, emitter: Emitter, max_line_bytes: int
) -> None:
    splitter = LineSplitter(max_line_bytes)
    while True:
        data = await protocol.read(fd)
        if not data:
            tail = splitter.finish()
            if tail:
                await emitter.lines(stream, tail)
            return
        lines = splitter.feed(data)
        if lines:
            # one memchr over the chunk saves a per-line check in the common case
            await emitter.lines(stream, lines, braces=b"{" in data, raw=data)


async def _wait(
    exited: asyncio.Future[None],
    pumps: list[asyncio.Task[None]],
    cancel: asyncio.Event,
    timeout_seconds: float | None,
    started: float,
) -> Ending:
    """Wait for exit, cancel or timeout; re-raise a pump's (sink's) failure at once."""
    cancelled = asyncio.create_task(cancel.wait())
    watched: set[asyncio.Future[object]] = {exited, cancelled, *pumps}  # type: ignore[arg-type]
    try:
        while True:
            remaining = None
            if timeout_seconds is not None:
                remaining = max(timeout_seconds - (time.monotonic() - started), 0)
            done, _ = await asyncio.wait(
                watched, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task in pumps:
                    task.result()  # raises the sink's error, if any
                    watched.discard(task)
            if exited in done:
                return "exited"
            if cancelled in done:
                return "cancelled"
            if not done:
                return "timeout"
    finally:
        cancelled.cancel()


async def _drain(pumps: list[asyncio.Task[None]], emitter: Emitter) -> None:
    """Let the pumps read to end of stream; give up if an escaped process holds a pipe."""
    done, pending = await asyncio.wait(pumps, timeout=DRAIN_SECONDS)
    for task in done:
        task.result()
    if pending:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await emitter.notice(
            "output pipes are still held open by a process outside the run's session;"
            " stopped reading"
        )


def _spawn_failed(exc: OSError, argv: Sequence[str], cwd: Path, started: float) -> ProcessOutcome:
    """The outcome of a command that could not be started, and why."""
    if isinstance(exc, FileNotFoundError | PermissionError | NotADirectoryError):
        where = exc.filename if exc.filename is not None else argv[0]
        what = "not found" if isinstance(exc, FileNotFoundError) else "not executable"
        if str(where) == str(cwd):
            code, message = "spawn_failed", f"working directory not usable: {cwd} ({exc.strerror})"
        else:
            code, message = "command_not_found", f"command {what}: {where}"
    else:
        code, message = "spawn_failed", f"cannot start {argv[0]}: {_with_filename(exc, argv[0])}"
    return ProcessOutcome(
        ending="spawn_failed",
        exit_code=None,
        signal=None,
        error_code=code,
        error_message=message,
        duration_ms=_ms_since(started),
    )


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _with_filename(exc: OSError, filename: object) -> OSError:
    """``exc`` as subprocess reports it: with the file it was about."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, filename)
