"""The job's supervisor (Linux): runs one command and takes every process it starts down with it.

``process.py`` starts ``python -I -S <this file> STATUS_FD GRACE PARENT -- argv...``
instead of ``argv`` itself (build steps and run commands alike). This process:

* makes itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``), so every
  descendant of the job -- whatever process group or session it moved to
  (``setpgid``, ``setsid``, a double fork) -- stays its descendant: orphans are
  re-parented to it, not to init;
* asks for :data:`STOP_SIGNAL` when the process that started it (the server or
  worker) dies (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the worker still
  stops the job;
* starts the job (``posix_spawnp``) in a process group of its own, inside this
  process's session, with stdin/stdout/stderr inherited (no copying: the
  executor reads the job's pipes directly);
* on :data:`STOP_SIGNAL` (the executor's cancel/timeout, or parent death)
  sends SIGTERM **once** to every running descendant (``killpg`` of the job's
  group while the job is unreaped, ``kill`` for descendants outside that
  group), then SIGKILLs what is left after ``GRACE`` seconds, or at once on
  :data:`KILL_SIGNAL` (the executor's end of the grace period, or its own
  failure);
* reaps everything and exits with the job's own status: the job's exit code,
  or the job's killing signal raised on itself (core dumps off), so "killed by
  SIGKILL, exit code 137" reads as before.

It tells the executor on ``STATUS_FD`` (one line each): ``started PID`` or
``error ERRNO`` (the job could not be started: nothing else follows, exit
127), then ``left`` when the job exited while descendants of it still run (the
executor then stops them with its usual notice and timing). End of file on the
pipe means this process is gone.

Run by path with ``-I -S`` on purpose: only the standard library is imported
(so the job's ``PYTHONPATH``/``PYTHONHOME``, which this process's environment
carries for the job, cannot break it, and start-up is quick); it must not
import ``runevents``. The executor imports this module only for
:func:`command` and the constants.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Final, NoReturn

#: prctl(2) options
PR_SET_PDEATHSIG: Final = 1
PR_SET_DUMPABLE: Final = 4
PR_SET_CHILD_SUBREAPER: Final = 36

#: "stop the job": SIGTERM to every descendant, SIGKILL after the grace period
#: (also what this process gets when its parent dies)
STOP_SIGNAL: Final = signal.SIGTERM
#: "kill the job now": SIGKILL to every descendant
KILL_SIGNAL: Final = signal.SIGUSR1
#: also taken as a stop request instead of dying and leaving the job behind
_ALSO_STOP: Final = (signal.SIGHUP, signal.SIGINT)
_WAITED: Final = frozenset({signal.SIGCHLD, STOP_SIGNAL, KILL_SIGNAL, *_ALSO_STOP})
#: while killing: how often descendants forked meanwhile are looked for again
KILL_POLL_SECONDS: Final = 0.05
#: exit status when the job could not be started
SPAWN_FAILED_EXIT: Final = 127

#: status lines (without the newline)
STARTED: Final = b"started"
ERROR: Final = b"error"
LEFT: Final = b"left"


def available() -> bool:
    """Whether the job can run under this supervisor here (Linux, source file on disk)."""
    return (
        sys.platform.startswith("linux")
        and __file__.endswith(".py")
        and os.path.isfile(__file__)
        and os.path.isdir("/proc")
    )


def command(argv: Sequence[str], *, status_fd: int, grace_seconds: float, parent: int) -> list[str]:
    """The argv that runs ``argv`` under the supervisor (same interpreter as ours)."""
    return [
        sys.executable,
        "-I",
        "-S",
        os.path.abspath(__file__),
        str(status_fd),
        repr(float(grace_seconds)),
        str(parent),
        "--",
        *argv,
    ]


def descendants(root: int) -> list[tuple[int, int]]:
    """``(pid, process group)`` of every running (not zombie) descendant of ``root``.

    Walks the parent links of ``/proc/*/stat``: whatever session or group a
    process moved to, its parent chain still leads here (we are a subreaper).
    """
    children: dict[int, list[tuple[int, int, bool]]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ..."; comm may contain spaces and ')'
        fields = stat[stat.rfind(b")") + 2 :].split(b" ", 4)
        if len(fields) < 4:
            continue
        running = fields[0] not in (b"Z", b"X")
        children.setdefault(int(fields[1]), []).append((int(name), int(fields[2]), running))
    found = []
    todo = [root]
    while todo:
        for pid, pgrp, running in children.get(todo.pop(), ()):
            todo.append(pid)
            if running:
                found.append((pid, pgrp))
    return found


def signal_descendants(job: int, job_unreaped: bool, sig: int) -> None:
    """Send ``sig`` once to every running descendant.

    While the job is unreaped its process group id cannot be reused, so the
    group gets one ``killpg`` (atomic: it also reaches a child forked while we
    look); the descendants outside it get one ``kill`` each.
    """
    found = descendants(os.getpid())
    if job_unreaped:
        with contextlib.suppress(OSError):
            os.killpg(job, sig)
    for pid, pgrp in found:
        if job_unreaped and pgrp == job:
            continue  # reached by the killpg
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _tell(fd: int, line: bytes) -> None:
    with contextlib.suppress(OSError):  # the executor is gone: nobody listens
        os.write(fd, line + b"\n")


def _exit_like(status: int, libc: ctypes.CDLL) -> NoReturn:
    """Exit with the job's wait status: its exit code, or die of its signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # the job's signal, not a core of ours
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal that does not kill (cannot happen for WIFSIGNALED)
    os._exit(os.waitstatus_to_exitcode(status))


def supervise(status_fd: int, grace: float, job: int, libc: ctypes.CDLL) -> NoReturn:
    """Wait for the job and its descendants; stop them on request; exit like the job."""
    job_status: int | None = None
    told_left = False
    kill_at: float | None = None  # stopping: when SIGKILL follows the SIGTERM
    killing = False
    while True:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # no child left: no descendant left
                assert job_status is not None
                _exit_like(job_status, libc)
            if pid == 0:
                break
            if pid == job:
                job_status = status
        if job_status is not None and not told_left:
            _tell(status_fd, LEFT)  # the job exited, descendants of it still run
            told_left = True
        timeout: float | None = None
        if killing:
            signal_descendants(job, job_status is None, signal.SIGKILL)
            timeout = KILL_POLL_SECONDS
        elif kill_at is not None:
            timeout = max(kill_at - time.monotonic(), 0.0)
        if timeout is None:
            info: signal.struct_siginfo | None = signal.sigwaitinfo(_WAITED)
        else:
            info = signal.sigtimedwait(_WAITED, timeout)
        if info is None:
            if kill_at is not None and time.monotonic() >= kill_at:
                killing = True
        elif info.si_signo == KILL_SIGNAL:
            killing = True
        elif info.si_signo != signal.SIGCHLD and kill_at is None and not killing:
            signal_descendants(job, job_status is None, signal.SIGTERM)
            kill_at = time.monotonic() + grace


def main(args: Sequence[str]) -> NoReturn:
    status_fd, grace, parent = int(args[0]), float(args[1]), int(args[2])
    if args[3] != "--":
        raise SystemExit(f"usage: {__file__} STATUS_FD GRACE PARENT -- ARGV...")
    argv = list(args[4:])
    libc = ctypes.CDLL(None, use_errno=True)
    # the requests wait until we ask for them (sigwaitinfo); the job gets an empty mask
    signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, STOP_SIGNAL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)  # our parent died before it could be tied to us: start nothing
    os.set_inheritable(status_fd, False)
    try:
        if not argv:
            raise FileNotFoundError(2, "no command")
        job = os.posix_spawnp(
            argv[0],
            argv,
            os.environ,
            setpgroup=0,
            setsigmask=(),
            # what Python ignores for itself; subprocess restores them for a child too
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    except OSError as exc:
        _tell(status_fd, b"%s %d" % (ERROR, exc.errno or 0))
        os._exit(SPAWN_FAILED_EXIT)
    _tell(status_fd, b"%s %d" % (STARTED, job))
    try:
        supervise(status_fd, grace, job, libc)
    except BaseException:
        # a bug of ours must not leave the job behind
        signal_descendants(job, False, signal.SIGKILL)
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
