"""The job's processes: is anything alive, signal them, stop them, and tie them to our life.

Separate from ``process.py`` (spawn and read one child) because this is the
part that makes "no orphans" hold.

On Linux the child is :mod:`runevents.supervisor`, which runs the command: a
child subreaper that holds every descendant of the job (whatever group or
session it moved to), stops them itself when the server/worker dies, and
signals each of them exactly once. The executor talks to it through
:class:`SupervisorStatus` (its status pipe) and :func:`stop_supervised` /
:func:`kill_supervised` (its two requests).

Elsewhere (the fallback) the child is the command itself, in a session of its
own: everything it spawns is found and signalled through the group and, where
``/proc`` exists, through the session (a descendant that moved to another
process group, a zombie that must not count as running).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from typing import Final, Literal

from runevents import supervisor

#: how often the group is checked while waiting for it to exit after SIGTERM
POLL_SECONDS: Final = 0.05
#: prctl(2) option: signal the child gets when the process that forked it dies
_PR_SET_PDEATHSIG = 1
#: after KILL_SIGNAL, how long the supervisor may take to kill and reap before we
#: SIGKILL its session ourselves (it only waits for SIGKILLed processes to go)
SUPERVISOR_KILL_SECONDS: Final = 10.0

Stopped = Literal["none", "SIGTERM", "SIGKILL"]


def die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL it if its worker dies.

    The child has its own session (so cancel can signal its whole group), which
    also means nothing stops it when the worker is killed with SIGKILL: the
    lease reaper finishes the run as failed, but a silent child would run on
    forever. Linux's parent-death signal survives exec and closes that gap for
    the direct child (its own children are in the same process group, which the
    child's death leaves to them). Kept to one libc call: preexec code must not
    take locks another thread of the parent might have held at fork time.
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def live_session_members(sid: int) -> list[int] | None:
    """Pids of the *running* (not zombie) processes of session ``sid``.

    ``None`` where ``/proc`` is not available (callers then fall back to
    ``killpg(pgid, 0)``, which also counts zombies).
    """
    members = _live_session_members(sid)
    return None if members is None else [pid for pid, _ in members]


def _live_session_members(sid: int) -> list[tuple[int, int]] | None:
    """``(pid, process group)`` of the running processes of session ``sid``."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    members = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp session ..."; comm may contain spaces and ')'
        fields = stat[stat.rfind(b")") + 2 :].split(b" ", 5)
        if len(fields) > 4 and int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
            members.append((int(name), int(fields[2])))
    return members


def group_alive(pgid: int) -> bool:
    """Whether any process of the child's session/group is still running."""
    members = live_session_members(pgid)
    if members is not None:
        return bool(members)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` once to the child's process group and to session members outside it."""
    members = _live_session_members(pgid) or ()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid, pgrp in members:
        if pgrp == pgid:
            continue  # reached by the killpg: a second SIGTERM would run its handler twice
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


async def stop_group(pgid: int, exited: asyncio.Future[None], grace_seconds: float) -> Stopped:
    """SIGTERM the group, SIGKILL what is left after ``grace_seconds``; wait until it is gone.

    Returns the strongest signal that was needed (``none`` if nothing was running).
    """
    if exited.done() and not group_alive(pgid):
        return "none"
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if exited.done() and not group_alive(pgid):
            return "SIGTERM"
        await asyncio.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))
    if exited.done() and not group_alive(pgid):
        return "SIGTERM"
    signal_group(pgid, signal.SIGKILL)
    await asyncio.shield(exited)
    # SIGKILL cannot be caught; members vanish as the kernel tears them down
    for _ in range(100):
        if not group_alive(pgid):
            break
        signal_group(pgid, signal.SIGKILL)
        await asyncio.sleep(POLL_SECONDS / 5)
    return "SIGKILL"


class SupervisorStatus(asyncio.Protocol):
    """What :mod:`runevents.supervisor` says on its status pipe.

    ``started``: the job's pid, an ``OSError`` (the job could not be started)
    or ``None`` (the supervisor ended without a word); ``left``: the job
    exited while descendants of it still run.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.started: asyncio.Future[int | OSError | None] = loop.create_future()
        self.left: asyncio.Future[None] = loop.create_future()
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            what, _, number = line.partition(b" ")
            if what == supervisor.STARTED and not self.started.done():
                self.started.set_result(int(number))
            elif what == supervisor.ERROR and not self.started.done():
                code = int(number)
                self.started.set_result(OSError(code, os.strerror(code)))
            elif what == supervisor.LEFT and not self.left.done():
                self.left.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.started.done():
            self.started.set_result(None)


def _request(pid: int, exited: asyncio.Future[None], sig: signal.Signals) -> None:
    if not exited.done():  # not reaped yet: the pid is still our child's
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


async def _exited_within(exited: asyncio.Future[None], seconds: float) -> bool:
    if not exited.done():
        await asyncio.wait({exited}, timeout=seconds)
    return exited.done()


async def stop_supervised(pid: int, exited: asyncio.Future[None], grace_seconds: float) -> Stopped:
    """Stop the job run by supervisor ``pid``: the same SIGTERM -> SIGKILL as :func:`stop_group`.

    The supervisor sends the SIGTERM (once per process, setsid'd ones included)
    and, when asked at the end of the grace period, the SIGKILL; it exits once
    every process of the job is gone. Returns the strongest signal needed.
    """
    if exited.done():
        return "none"
    _request(pid, exited, supervisor.STOP_SIGNAL)
    if await _exited_within(exited, grace_seconds):
        return "SIGTERM"
    await kill_supervised(pid, exited)
    return "SIGKILL"


async def kill_supervised(pid: int, exited: asyncio.Future[None]) -> None:
    """SIGKILL every process of the job (through supervisor ``pid``); wait until it is gone.

    Should the supervisor not manage, its session is SIGKILLed the fallback way.
    """
    _request(pid, exited, supervisor.KILL_SIGNAL)
    if not await _exited_within(exited, SUPERVISOR_KILL_SECONDS):
        signal_group(pid, signal.SIGKILL)
        await asyncio.shield(exited)
