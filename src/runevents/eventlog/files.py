"""File-level helpers of the engine: the writer lock, fault-injectable I/O, backwards reads."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from runevents.exceptions import StorageError, WriterBusy


class FileOps:
    """The system calls of the write path, as one object so tests can inject faults.

    A test passes a subclass whose ``pwrite`` raises ``OSError(ENOSPC)`` or
    writes only part of the data; the writer must survive both.
    """

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        """Write ``data`` at ``offset``; returns the bytes written (may be fewer)."""
        return os.pwrite(fd, data, offset)

    def ftruncate(self, fd: int, length: int) -> None:
        """Cut the file to ``length`` bytes."""
        os.ftruncate(fd, length)

    def fsync(self, fd: int) -> None:
        """Make the file's data durable."""
        os.fsync(fd)


DEFAULT_OPS = FileOps()


class WriterLock:
    """An exclusive, non-blocking ``flock`` on a lock file beside the log.

    ``flock`` locks belong to an open file description, so a second open in the
    same process conflicts too, and the kernel drops the lock when the holder
    dies (kill -9 included): a crashed writer never leaves the run locked.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path, what: str) -> WriterLock:
        """Take the lock or raise WriterBusy naming the holder's pid."""
        for _ in range(5):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StorageError(f"cannot open the lock file of {what}: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if not isinstance(exc, BlockingIOError):
                    os.close(fd)  # (ENOLCK and the like: the fd must not leak)
                    raise StorageError(f"cannot lock the log of {what}: {exc.strerror}") from exc
                holder = ""
                with contextlib.suppress(OSError, ValueError):
                    holder = f" (pid {int(os.pread(fd, 32, 0).split()[0])})"
                os.close(fd)
                raise WriterBusy(
                    f"another writer holds the log of {what}{holder}; lock file {path}"
                ) from None
            # A releasing writer unlinks its lock file: make sure we locked the
            # file that the path names now, not a just-unlinked one.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                # The pid, for the message a second writer gets. Overwritten in place,
                # padded: truncating to 0 first would make ext4 (auto_da_alloc) flush
                # the file when it is closed, which costs milliseconds per run.
                with contextlib.suppress(OSError):
                    os.pwrite(fd, f"{os.getpid():<20}\n".encode(), 0)
                return cls(path, fd)
            os.close(fd)
        raise WriterBusy(f"the lock file {path} of {what} keeps changing")

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self, *, unlink: bool = False) -> None:
        """Drop the lock (idempotent); with ``unlink``, remove the lock file first.

        A writer keeps the file (creating files is the slow part of opening a
        run); whoever finishes the run's files for good (seal, delete) unlinks it.
        """
        if self._fd is None:
            return
        if unlink:
            with contextlib.suppress(OSError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


def rfind_newline(fd: int, end: int, block: int = 64 * 1024) -> int:
    """Offset of the last ``\\n`` in ``[0, end)`` of the file, or -1. Reads backwards."""
    stop = end
    while stop > 0:
        start = max(0, stop - block)
        data = os.pread(fd, stop - start, start)
        i = data.rfind(b"\n")
        if i >= 0:
            return start + i
        stop = start
    return -1


def last_line(fd: int, end: int) -> tuple[int, bytes] | None:
    """``(start offset, bytes)`` of the last complete line in ``[0, end)``; None if none."""
    nl = rfind_newline(fd, end)
    if nl < 0:
        return None
    start = rfind_newline(fd, nl) + 1
    return start, os.pread(fd, nl + 1 - start, start)
