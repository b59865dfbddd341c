"""SQL of the shared live tier: the committed chunks of live runs (contract 10).

A run's log on several machines is the concatenation of its ``live_chunks``
rows in ``start_offset`` order until it is sealed into object storage; then
the rows are deleted. Every append is fenced: it commits only while the run's
row still names the writer ``(owner, epoch)`` that wrote it, in the same
statement, so a process that lost the run can never add a byte (the epoch is
bumped by ``RunRepository.acquire_writer``, which needs the row lock the
append holds ``FOR SHARE``).

Chunks are stored as one zstd frame each (level 1: about 1 ms per 400 KB
batch, a fifth of the bytes): Postgres writes a large ``bytea`` through
TOAST in 2 KB pieces, so the bytes written are what a commit costs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import zstandard
from sqlalchemy.dialects import postgresql

from runevents.db.repository import RunRepository
from runevents.db.tables import live_chunks, runs
from runevents.exceptions import Conflict, WriterFenced

#: one read returns chunks up to about this many bytes (the last one may pass it)
READ_BYTES = 8 * 1024 * 1024
#: zstd level of stored chunks (fast: it is on the acknowledgement's path)
LEVEL = 1
#: chunks bigger than this are (de)compressed off the event loop
INLINE_BYTES = 512 * 1024

# A (de)compressor per call: python-zstandard objects must not be used by two threads
# at once (shared ones, between the loop and to_thread workers, wrote corrupt frames and
# crashed the process); making one costs ~20 us, a chunk's commit milliseconds.


async def pack(data: bytes) -> bytes:
    """One chunk's bytes as stored (a zstd frame with its size)."""
    compress = zstandard.ZstdCompressor(level=LEVEL).compress
    if len(data) > INLINE_BYTES:
        return await asyncio.to_thread(compress, data)
    return compress(data)


def unpack(stored: bytes) -> bytes:
    """The log bytes of one stored chunk."""
    return zstandard.ZstdDecompressor().decompress(stored)


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """One committed chunk of a live run's log."""

    start_offset: int
    first_sequence: int
    last_sequence: int
    epoch: int
    data: bytes

    @property
    def end_offset(self) -> int:
        return self.start_offset + len(self.data)


#: the columns of a StoredChunk, in its fields' order (``_stored_chunk`` reads them)
_CHUNK_COLUMNS = (
    live_chunks.c.start_offset,
    live_chunks.c.first_sequence,
    live_chunks.c.last_sequence,
    live_chunks.c.epoch,
    live_chunks.c.data,
)


def _stored_chunk(row: sa.Row[*tuple[Any, ...]]) -> StoredChunk:
    return StoredChunk(int(row[0]), int(row[1]), int(row[2]), int(row[3]), unpack(bytes(row[4])))


@dataclass(frozen=True, slots=True)
class TierSize:
    """How much the live tier holds now."""

    runs: int
    chunks: int
    #: log bytes the chunks hold
    bytes: int
    #: bytes stored (compressed)
    stored_bytes: int


class ChunkRepository:
    """The ``live_chunks`` table; one short transaction per call (RunRepository's)."""

    def __init__(self, repo: RunRepository) -> None:
        self.repo = repo

    async def append(
        self,
        run_id: str,
        owner: str,
        epoch: int,
        start_offset: int,
        first_sequence: int,
        last_sequence: int,
        data: bytes,
    ) -> None:
        """Commit one chunk if ``(owner, epoch)`` still holds the run's writer.

        WriterFenced otherwise. A retry of a chunk whose commit's outcome was
        unknown (the connection broke after COMMIT) finds its own row and
        succeeds; a different chunk at the same offset is a fence too.
        """
        stored = await pack(data)
        # One statement, one round trip: the insert happens only if the row still names
        # this writer, whose lock (FOR SHARE) holds off a takeover until it commits.
        holder = (
            sa.select(
                sa.literal(run_id),
                sa.literal(first_sequence),
                sa.literal(last_sequence),
                sa.literal(start_offset),
                sa.literal(epoch),
                sa.literal(len(data)),
                sa.literal(stored, sa.LargeBinary()),
            )
            .select_from(runs)
            .where(runs.c.id == run_id, runs.c.writer_epoch == epoch, runs.c.writer_owner == owner)
            .with_for_update(read=True)
        )
        columns = ["run_id", "first_sequence", "last_sequence", "start_offset", "epoch", "size"]
        insert = (
            postgresql.insert(live_chunks)
            .from_select([*columns, "data"], holder)
            .on_conflict_do_nothing(index_elements=["run_id", "start_offset"])
            .returning(live_chunks.c.size)
        )
        async with self.repo._tx() as conn:  # autocommit: the statement is the transaction
            if await conn.scalar(insert) is not None:
                return
            row = (
                await conn.execute(
                    sa.select(live_chunks.c.epoch, live_chunks.c.size).where(
                        live_chunks.c.run_id == run_id, live_chunks.c.start_offset == start_offset
                    )
                )
            ).first()
        if row is not None and int(row[0]) == epoch and int(row[1]) == len(data):
            return  # our own chunk, committed by an attempt whose answer was lost
        if row is not None:
            raise WriterFenced(f"run {run_id}: offset {start_offset} was written by another writer")
        raise WriterFenced(f"run {run_id}: another process took its writer (epoch {epoch})")

    async def insert_run_with_chunk(
        self, insert_run: sa.Insert, run_id: str, epoch: int, data: bytes
    ) -> None:
        """A new run's row and its first chunk in one transaction (a row always has a log).

        Conflict if the run exists.
        """
        stored = await pack(data)
        async with self.repo._tx(write=True) as conn:
            await conn.execute(insert_run)
            await conn.execute(
                live_chunks.insert().values(
                    run_id=run_id,
                    first_sequence=1,
                    last_sequence=data.count(b"\n"),
                    start_offset=0,
                    epoch=epoch,
                    size=len(data),
                    data=stored,
                )
            )

    async def read(
        self, run_id: str, from_offset: int, max_bytes: int = READ_BYTES
    ) -> list[StoredChunk]:
        """The chunks starting at or after ``from_offset``, in order, about ``max_bytes``.

        The size filter is in SQL (a running sum), so a big run's chunks are not
        all fetched to read the next few.
        """
        size = live_chunks.c.size
        running = (sa.func.sum(size).over(order_by=live_chunks.c.start_offset) - size).label(
            "before"
        )
        inner = (
            sa.select(*_CHUNK_COLUMNS, running)
            .where(live_chunks.c.run_id == run_id, live_chunks.c.start_offset >= from_offset)
            .subquery()
        )
        stmt = (
            sa.select(*(inner.c[column.name] for column in _CHUNK_COLUMNS))
            .where(inner.c.before < max_bytes)
            .order_by(inner.c.start_offset)
        )
        async with self.repo._tx() as conn:
            rows = (await conn.execute(stmt)).all()
        stored = sum(len(r[4]) for r in rows)

        def unpack_all() -> list[StoredChunk]:
            return [_stored_chunk(r) for r in rows]

        return await asyncio.to_thread(unpack_all) if stored > INLINE_BYTES else unpack_all()

    async def _newest(
        self, run_id: str, *columns: sa.ColumnElement[Any]
    ) -> sa.Row[*tuple[Any, ...]] | None:
        """``columns`` of the run's newest chunk (highest offset); None if it has none.

        Only the named columns are read: ``end`` is asked on every pull and seal and
        must not fetch the chunk's bytes.
        """
        stmt = (
            sa.select(*columns)
            .where(live_chunks.c.run_id == run_id)
            .order_by(live_chunks.c.start_offset.desc())
            .limit(1)
        )
        async with self.repo._tx() as conn:
            return (await conn.execute(stmt)).first()

    async def end(self, run_id: str) -> tuple[int, int] | None:
        """``(end offset, last sequence)`` of the run's committed chunks; None if it has none."""
        row = await self._newest(
            run_id, live_chunks.c.start_offset + live_chunks.c.size, live_chunks.c.last_sequence
        )
        return None if row is None else (int(row[0]), int(row[1]))

    async def last(self, run_id: str) -> StoredChunk | None:
        """The run's newest committed chunk, if any."""
        row = await self._newest(run_id, *_CHUNK_COLUMNS)
        return None if row is None else _stored_chunk(row)

    async def delete(self, run_id: str) -> int:
        """Delete the run's chunks (its sealed log is verified in object storage)."""
        async with self.repo._tx(write=True) as conn:
            result = await conn.execute(live_chunks.delete().where(live_chunks.c.run_id == run_id))
        return int(result.rowcount or 0)

    async def ended_runs_with_chunks(self, limit: int = 100) -> list[str]:
        """Ended runs whose chunks are still here (a crash between seal and delete)."""
        stmt = (
            sa.select(live_chunks.c.run_id)
            .join(runs, runs.c.id == live_chunks.c.run_id)
            .where(runs.c.log_state != "live")
            .group_by(live_chunks.c.run_id)
            .limit(limit)
        )
        async with self.repo._tx() as conn:
            return [str(r[0]) for r in (await conn.execute(stmt)).all()]

    async def size(self) -> TierSize:
        """Runs, chunks and bytes the live tier holds now."""
        stmt = sa.select(
            sa.func.count(sa.distinct(live_chunks.c.run_id)),
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(live_chunks.c.size), 0),
            sa.func.coalesce(sa.func.sum(sa.func.length(live_chunks.c.data)), 0),
        )
        async with self.repo._tx() as conn:
            row = (await conn.execute(stmt)).one()
        return TierSize(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


__all__ = ["ChunkRepository", "Conflict", "StoredChunk", "TierSize"]
