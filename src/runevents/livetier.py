"""The shared live tier: how a run's log lives on several machines (contract 10).

On one machine a run's live log is a file in the data dir. On several
machines (``runevents serve`` replicas and workers that share only Postgres
and S3) no byte that was acknowledged or served may live only on one disk,
and any replica must serve any live run. Each durable write of a run's
writer is therefore one *chunk* committed to Postgres (``live_chunks``:
whole NDJSON lines, their offset and sequences, the writer epoch), fenced in
the same statement by the run's writer lease (``db/chunks.py``). That commit
is the write's durable step (``RunWriter.ship``); the local file is a cache.

- **Writing** (:meth:`LiveTier.shipper`): the owner of the run (``held.py``)
  writes its local file, then commits the chunk; a write whose chunk is not
  committed is cut back and answered 503, as a failed fsync is on one machine.
  A new run's row and its first chunk are one transaction (:meth:`create`).
- **Reading** (:meth:`LiveTier.pull`, the ``EventLog.mirror`` hook): a replica
  that does not own the run appends the chunks after its local copy's end to
  its local file, then reads that file like any live log; its followers'
  tails pull on every wake-up (Postgres LISTEN/NOTIFY, ``pgnotify.py``).
- **Taking over** (``HeldRuns.take``): after the lease is taken (new epoch: the
  old owner can add nothing more) the new owner pulls every chunk, then opens
  its writer on that copy and continues the log.
- **Sealing** (:meth:`LiveTier.sealed`): the owner uploads the ended log to
  object storage, verifies it (the object's size, the checksum of the uploaded
  bytes against the chunks), and only then deletes the chunks, so the table
  holds live runs only. A crash in between is finished by the repair loop
  (:meth:`LiveTier.repair`).

A reader that finds the chunks gone (the run was sealed meanwhile) completes
its local copy from the stored log and drops it: later reads go to storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from runevents.db.chunks import ChunkRepository, TierSize
from runevents.db.run_rows import insert_statement
from runevents.eventlog import EventLog, RunRef
from runevents.eventlog.files import last_line
from runevents.eventlog.locate import CompressedLog
from runevents.eventlog.types import ends_with_completed
from runevents.exceptions import LogNotFound, RunNotFound, StorageError, WriterFenced
from runevents.models import Run

if TYPE_CHECKING:
    from runevents.ownership import Lease

log = logging.getLogger(__name__)

#: read this much of a file per step when checksumming it
HASH_BLOCK = 1024 * 1024

Ship = Callable[[int, bytes, int, int], Awaitable[None]]

#: the run this task is pulling (its own read of the stored log must not pull again)
_PULLING: contextvars.ContextVar[str | None] = contextvars.ContextVar("pulling", default=None)


class LiveTier:
    """The live tier of one process: ships its writers' chunks, mirrors other owners'."""

    def __init__(self, chunks: ChunkRepository, event_log: EventLog) -> None:
        self.chunks = chunks
        self.log = event_log
        self._pulling: dict[str, asyncio.Lock] = {}

    def attach(self) -> None:
        """Make the event log read live runs through this tier."""
        self.log.mirror = self.pull

    @staticmethod
    def reset_cache(spool_dir: Path) -> None:
        """Drop the local copies a previous life of this process left (start-up).

        A data dir is a cache on several machines: a copy cut short by a crash
        would otherwise be taken for a prefix of the log.
        """
        shutil.rmtree(spool_dir, ignore_errors=True)

    # ------------------------------------------------------------------ writing
    def shipper(self, run_id: str, owner: str, lease: Lease) -> Ship:
        """The ``RunWriter.ship`` of a run this process owns under ``lease``."""
        chunks = self.chunks

        async def ship(start: int, data: bytes, first: int, last: int) -> None:
            try:
                await chunks.append(run_id, owner, lease.epoch, start, first, last, data)
            except WriterFenced:
                lease.mark_lost()
                raise

        return ship

    def creator(self, run: Run, owner: str | None, lease_seconds: float) -> Ship:
        """The ``ship`` of a new run's first write: its row and first chunk in one transaction."""
        chunks = self.chunks

        async def ship(start: int, data: bytes, first: int, last: int) -> None:
            assert start == 0 and first == 1, "the creator ships only the first write"
            row = run.evolve(event_count=last, events_bytes=len(data))
            stmt = insert_statement(row, owner, lease_seconds)
            await chunks.insert_run_with_chunk(stmt, run.id, 1 if owner else 0, data)

        return ship

    # ------------------------------------------------------------------ reading
    def _lock(self, run_id: str) -> asyncio.Lock:
        lock = self._pulling.get(run_id)
        if lock is None:
            if len(self._pulling) > 4096:
                for key, value in list(self._pulling.items()):
                    if not value.locked():
                        del self._pulling[key]
            lock = self._pulling[run_id] = asyncio.Lock()
        return lock

    async def pull(self, ref: RunRef) -> None:
        """Bring this process's copy of ``ref``'s log up to the committed chunks.

        Nothing to do while this process owns the run (its writer's file is the
        log). With no chunks at all, the run is sealed (or never was live here):
        a local copy is completed from the stored log and dropped.
        """
        if self.log.writer_open(ref) or _PULLING.get() == ref.run_id:
            return  # (the second: a read of the stored log from inside this pull)
        async with self._lock(ref.run_id):
            if self.log.writer_open(ref):
                return
            token = _PULLING.set(ref.run_id)
            try:
                await self._pull_locked(ref)
            finally:
                _PULLING.reset(token)

    async def _pull_locked(self, ref: RunRef) -> None:
        path = self.log.keys(ref).live
        size = _size(path)
        got_any = False
        while True:
            batch = await self.chunks.read(ref.run_id, size)
            if not batch:
                break
            if batch[0].start_offset != size:
                # not at a chunk boundary: this copy is not a prefix of the log
                log.warning("run %s: local copy misaligned at %d; fetched again", ref.run_id, size)
                await asyncio.to_thread(_truncate, path, 0)
                size = 0
                continue
            data = b"".join(c.data for c in batch)
            await _append(path, size, data)
            size += len(data)
            got_any = True
        if got_any or size == 0:
            return
        if await self.chunks.end(ref.run_id) is not None:
            return  # caught up with a live run
        await self._finish_from_store(ref, path)

    async def _finish_from_store(self, ref: RunRef, path: Path) -> None:
        """The chunks are gone (sealed): complete the local copy from storage, drop its name.

        A follower's tail keeps reading its open descriptor of the copy, so it
        sees the run to its end; new readers open the stored log.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return
        try:
            end = os.fstat(fd).st_size
            line = last_line(fd, end)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(FileNotFoundError):
                self.log.keys(ref).live_index.unlink()
            after = _sequence_of(line[1]) if line is not None else 0
            with contextlib.suppress(LogNotFound):
                async for chunk in self.log.read(ref, after_sequence=after):
                    os.write(fd, chunk.data)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ sealing
    async def checksum_file(self, path: Path) -> tuple[int, str]:
        """``(size, sha256)`` of a local file (the log about to be uploaded)."""
        return await asyncio.to_thread(_hash_file, path)

    async def checksum_chunks(self, run_id: str) -> tuple[int, str]:
        """``(size, sha256)`` of the run's committed chunks, read in bounded pieces."""
        digest = hashlib.sha256()
        size = 0
        while True:
            batch = await self.chunks.read(run_id, size)
            if not batch:
                break
            for chunk in batch:
                if chunk.start_offset != size:
                    raise StorageError(f"run {run_id}: the live tier has a gap at {size}")
                digest.update(chunk.data)
                size += len(chunk.data)
        return size, digest.hexdigest()

    async def sealed(self, ref: RunRef, uploaded: tuple[int, str] | None) -> None:
        """The ended log is in object storage: verify it against the chunks, then drop them.

        ``uploaded``: size and sha256 of the bytes that were uploaded (None: only
        the stored object's size can be checked, e.g. by the repair loop).
        StorageError (chunks kept) if they differ.
        """
        expected = await self.chunks.end(ref.run_id)
        if expected is None:
            return  # already dropped
        size, digest = await self.checksum_chunks(ref.run_id)
        if uploaded is not None and uploaded != (size, digest):
            raise StorageError(
                f"run {ref.run_id}: the uploaded log ({uploaded[0]} bytes) differs from the "
                f"live tier ({size} bytes); the chunks are kept"
            )
        stored = await self.stored_size(ref)
        if stored is not None and stored != size:
            raise StorageError(
                f"run {ref.run_id}: the stored log has {stored} bytes, the live tier {size}; "
                "the chunks are kept"
            )
        await self.chunks.delete(ref.run_id)

    async def stored_size(self, ref: RunRef) -> int | None:
        """Bytes of the sealed log in storage (plain, or the plain size a compressed form
        holds); None if it is not there."""
        keys = self.log.keys(ref)
        with contextlib.suppress(LogNotFound):
            return (await self.log.store.stat(keys.log)).size
        # no stored plain log: a compressed form's index records the plain bytes it holds
        try:
            opened = await self.log.open_log(ref)
        except LogNotFound:
            return None
        try:
            return opened.index.raw_bytes if isinstance(opened, CompressedLog) else None
        finally:
            opened.close()

    async def repair(self) -> int:
        """Drop the chunks of runs sealed by a process that died before dropping them."""
        done = 0
        for run_id in await self.chunks.ended_runs_with_chunks():
            run = await self.chunks_run(run_id)
            if run is None:
                continue
            ref = RunRef(run.workspace_id, run.configuration_id, run.id)
            try:
                if await self.stored_size(ref) is None:
                    continue  # not uploaded: the unsealed repair takes it over and seals it
                await self.sealed(ref, None)
                done += 1
            except StorageError:
                log.warning("run %s: dropping sealed chunks failed", run_id, exc_info=True)
        return done

    async def chunks_run(self, run_id: str) -> Run | None:
        try:
            return await self.chunks.repo.get_run(run_id)
        except RunNotFound:
            return None

    async def ends_run(self, run_id: str) -> bool:
        """Whether the run's committed chunks end with run.completed (its owner died
        between that commit and finishing the row)."""
        last = await self.chunks.last(run_id)
        return last is not None and ends_with_completed(last.data)

    async def size(self) -> TierSize:
        """What the tier holds now (bench, metrics)."""
        return await self.chunks.size()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _truncate(path: Path, size: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.truncate(path, size)


async def _append(path: Path, at: int, data: bytes) -> None:
    """Write ``data`` at ``at`` in the local copy (created with its directories)."""

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], at + done)
        finally:
            os.close(fd)

    try:
        if len(data) > 256 * 1024:
            await asyncio.to_thread(write)
        else:
            write()
    except OSError as exc:
        # a cache: cut back what may be torn, so the next pull starts at a boundary
        with contextlib.suppress(OSError):
            os.truncate(path, at)
        raise StorageError(f"cannot copy the live log to {path}: {exc}") from exc


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


class _Sequence(msgspec.Struct):
    sequence: int


def _sequence_of(line: bytes) -> int:
    """The sequence of one stored line (its envelope's ``sequence``)."""
    return msgspec.json.decode(line, type=_Sequence).sequence
