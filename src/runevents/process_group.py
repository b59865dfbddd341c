"""The child's process group: is it alive, signal it, stop it, and tie it to our life.

Separate from ``process.py`` (spawn and read one child) because this is the
part that makes "no orphans" hold: the child runs in a session of its own, so
everything it spawns is found and signalled through the group and, on Linux,
through ``/proc`` (a descendant that moved to another process group, a zombie
that must not count as running).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from typing import Final, Literal

#: how often the group is checked while waiting for it to exit after SIGTERM
POLL_SECONDS: Final = 0.05
#: prctl(2) option: signal the child gets when the process that forked it dies
_PR_SET_PDEATHSIG = 1


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
            members.append(int(name))
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
    """Send ``sig`` to the child's process group and to session members outside it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid in live_session_members(pgid) or ():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


async def stop_group(
    pgid: int, exited: asyncio.Future[None], grace_seconds: float
) -> Literal["none", "SIGTERM", "SIGKILL"]:
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
