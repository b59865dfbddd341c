"""Opening a run's log for writing: directories, the file lock, recovery, the writer's start.

:meth:`runevents.eventlog.EventLog.open_writer` checks that this process does
not hold the writer already and registers the new one; the steps in between
are here. Kept apart from the facade because they run once per run, not per
batch or per read, and carry their own concerns: new directories and files
must be durable before the first acknowledgement, recovery of a torn tail
runs only under the lock (and the lease awaited before it), off the event
loop when the file is large.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from runevents.eventlog import sealing
from runevents.eventlog.files import WriterLock
from runevents.eventlog.index import SparseIndex, build_index
from runevents.eventlog.locate import Keys
from runevents.eventlog.recovery import (
    MarkerLine,
    Recovered,
    recover_index,
    recover_log,
    recovered_payload,
)
from runevents.eventlog.types import RunRef
from runevents.eventlog.writer import RunWriter
from runevents.events import Event, encode_batch, mark_unit_end
from runevents.exceptions import StorageError
from runevents.ids import new_ulid
from runevents.logstore.local import fsync_dir
from runevents.timestamps import utc_timestamp

if TYPE_CHECKING:
    from runevents.eventlog import EventLog


async def open_writer(
    log: EventLog,
    ref: RunRef,
    keys: Keys,
    options: dict[str, Any],
    checkpoint: tuple[int, int] | None,
    before_recovery: Callable[[], Awaitable[None]] | None,
    mark_cuts: bool,
) -> RunWriter:
    """Make the run's directories, take its file lock, await ``before_recovery``, recover
    and open the writer (``options``: RunWriter's keyword arguments from the facade).
    The lock is released again if any step fails."""
    created: list[Path] = []
    try:
        created = _make_dirs(keys.live.parent)
        if created:
            # new directories' entries, from the top: each must be durable in its parent
            # (off the loop: see _fsync_dirs)
            await _fsync_dirs([directory.parent for directory in created])
        lock = WriterLock.acquire(keys.lock, f"run {ref.run_id}")
    except OSError as exc:
        # (out of file descriptors, a full disk: 503, never a 500; the message names
        # the run, not the server's paths)
        _undo_new(keys, created)
        raise StorageError(f"cannot create the log of run {ref.run_id}: {exc.strerror}") from exc
    except BaseException:
        _undo_new(keys, created)
        raise
    try:
        if before_recovery is not None:
            await before_recovery()
        return await _open_locked(log, ref, keys, {**options, "lock": lock}, checkpoint, mark_cuts)
    except BaseException:
        lock.release(unlink=bool(created))
        _undo_new(keys, created)
        raise


async def _fsync_dirs(directories: list[Path]) -> None:
    """fsync each directory, in a thread: every new run's log makes a few new directory
    entries durable, and a directory fsync waits for the file system's journal commit,
    which under ingest load (other runs' data being synced) took tens of milliseconds.
    On the loop, a burst of run creations stalled every stream, ingest and lease renewal
    for up to 384 ms (``test_new_runs_stalled_the_event_loop_under_ingest_load``)."""

    def sync_all() -> None:
        for directory in directories:
            fsync_dir(directory)

    await asyncio.to_thread(sync_all)


def _undo_new(keys: Keys, created: list[Path]) -> None:
    """A writer that failed to open a brand-new run's log leaves nothing behind: no row
    names the run yet, so nothing would ever clean up its directory (best effort)."""
    if not created:
        return  # the run's directory was there before: not ours to remove
    for path in (keys.live, keys.live_index, keys.lock):
        with contextlib.suppress(OSError):
            path.unlink()
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()


async def _open_locked(
    log: EventLog,
    ref: RunRef,
    keys: Keys,
    common: dict[str, Any],
    checkpoint: tuple[int, int] | None,
    mark_cuts: bool,
) -> RunWriter:
    if not keys.live.exists():
        stats = await sealing.stored_stats(log, keys)
        if stats is not None:
            # sealed and uploaded, or compacted: the run is over, write nothing
            return RunWriter(
                ref,
                fd=None,
                index_fd=None,
                index=build_index([])[0],
                offset=0,
                last_sequence=stats.event_count,
                ended=True,
                **common,
            )
    try:
        new = not keys.live.exists()
        fd = os.open(keys.live, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open the log of run {ref.run_id}: {exc.strerror}") from exc
    if new:
        try:
            # the new file's name must survive a crash before it is first acknowledged
            # (durability issue, defect 10): its directory entry is synced now
            await _fsync_dirs([keys.live.parent])
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot open the log of run {ref.run_id}: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise
    try:
        recovered, (index, index_fd) = await _off_loop_if_large(
            fd, _recover, fd, keys, ref.run_id, log.config.index_every_bytes, checkpoint,
            _marker(ref) if mark_cuts else None,
        )  # fmt: skip
    except BaseException:
        os.close(fd)
        raise
    writer = RunWriter(
        ref,
        fd=fd,
        index_fd=index_fd,
        index=index,
        offset=recovered.end,
        last_sequence=recovered.last_sequence,
        ended=recovered.ended,
        **common,
    )
    writer.recovered = recovered_payload(recovered)
    return writer


def _marker(ref: RunRef) -> MarkerLine:
    """The ``log.recovered`` line recovery writes at a cut (one unit, a fresh event id)."""

    def line(sequence: int, payload: dict[str, Any]) -> bytes:
        event = Event(
            type="log.recovered",
            event_id=f"evt_{new_ulid()}{sequence}",
            created_at=utc_timestamp(),
            sequence=sequence,
            source="server",
            workspace_id=ref.workspace_id,
            configuration_id=ref.configuration_id,
            run_id=ref.run_id,
            build_id=None,
            payload=payload,
        )
        return mark_unit_end(encode_batch([event]))

    return line


def _make_dirs(path: Path) -> list[Path]:
    """``mkdir -p path``; returns the directories it created, outermost first."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
    return list(reversed(missing))


#: files up to this size are recovered on the event loop (a few small reads);
#: larger ones in a thread (a torn tail may take longer to find and move)
INLINE_RECOVERY_BYTES = 1024 * 1024

T = TypeVar("T")


async def _off_loop_if_large(fd: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` inline for a small file, in a thread for a large one.

    Opening a run's writer is on the path of every run; a thread hop costs
    more than recovering a small, clean log.
    """
    if os.fstat(fd).st_size <= INLINE_RECOVERY_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def _recover(
    fd: int,
    keys: Keys,
    run_id: str,
    every_bytes: int,
    checkpoint: tuple[int, int] | None,
    marker: MarkerLine | None,
) -> tuple[Recovered, tuple[SparseIndex, int | None]]:
    recovered = recover_log(fd, keys.live, run_id, checkpoint, marker)
    return recovered, recover_index(fd, keys.live_index, recovered.end, every_bytes)
