"""SQL of the shared live tier: the committed chunks of live runs (contract 10).

A run's log on several machines is the concatenation of its ``live_chunks``
rows in ``start_offset`` order until it is sealed into object storage; then
the rows are deleted. Every append is fenced: it commits only while the run's
row still names the writer ``(owner, epoch)`` that wrote it, in the same
statement, so a process that lost the run can never add a byte (the epoch is
bumped by ``RunRepository.acquire_writer``, which needs the row lock the
append holds ``FOR SHARE``).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from runevents.db.repository import RunRepository
from runevents.db.tables import live_chunks, runs
from runevents.exceptions import Conflict, WriterFenced

#: one read returns chunks up to about this many bytes (the last one may pass it)
READ_BYTES = 8 * 1024 * 1024


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


@dataclass(frozen=True, slots=True)
class TierSize:
    """How much the live tier holds now."""

    runs: int
    chunks: int
    bytes: int


class ChunkRepository:
    """The ``live_chunks`` table; one short transaction per call (RunRepository's)."""

    def __init__(self, repo: RunRepository) -> None:
        self.repo = repo
        self._repo = repo

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
        holder = (
            sa.select(runs.c.id)
            .where(runs.c.id == run_id, runs.c.writer_epoch == epoch, runs.c.writer_owner == owner)
            .with_for_update(read=True)
        )
        async with self._repo._tx(write=True) as conn:
            if await conn.scalar(holder) is None:
                raise WriterFenced(f"run {run_id}: another process took its writer (epoch {epoch})")
            existing = await conn.execute(
                sa.select(live_chunks.c.epoch, sa.func.length(live_chunks.c.data)).where(
                    live_chunks.c.run_id == run_id, live_chunks.c.start_offset == start_offset
                )
            )
            row = existing.first()
            if row is not None:
                if int(row[0]) == epoch and int(row[1]) == len(data):
                    return  # our own chunk, committed by an attempt whose answer was lost
                raise WriterFenced(
                    f"run {run_id}: offset {start_offset} was written by another writer"
                )
            await conn.execute(
                live_chunks.insert().values(
                    run_id=run_id,
                    first_sequence=first_sequence,
                    last_sequence=last_sequence,
                    start_offset=start_offset,
                    epoch=epoch,
                    data=data,
                )
            )

    async def insert_run_with_chunk(
        self, insert_run: sa.Insert, run_id: str, epoch: int, data: bytes
    ) -> None:
        """A new run's row and its first chunk in one transaction (a row always has a log).

        Conflict if the run exists.
        """
        async with self._repo._tx(write=True) as conn:
            await conn.execute(insert_run)
            await conn.execute(
                live_chunks.insert().values(
                    run_id=run_id,
                    first_sequence=1,
                    last_sequence=data.count(b"\n"),
                    start_offset=0,
                    epoch=epoch,
                    data=data,
                )
            )

    async def read(
        self, run_id: str, from_offset: int, max_bytes: int = READ_BYTES
    ) -> list[StoredChunk]:
        """The chunks starting at or after ``from_offset``, in order, about ``max_bytes``.

        The size filter is in SQL (a running sum), so a big run's chunks are not
        all fetched to read the next few.
        """
        size = sa.func.length(live_chunks.c.data)
        running = (sa.func.sum(size).over(order_by=live_chunks.c.start_offset) - size).label(
            "before"
        )
        inner = (
            sa.select(
                live_chunks.c.start_offset,
                live_chunks.c.first_sequence,
                live_chunks.c.last_sequence,
                live_chunks.c.epoch,
                live_chunks.c.data,
                running,
            )
            .where(live_chunks.c.run_id == run_id, live_chunks.c.start_offset >= from_offset)
            .subquery()
        )
        stmt = (
            sa.select(
                inner.c.start_offset,
                inner.c.first_sequence,
                inner.c.last_sequence,
                inner.c.epoch,
                inner.c.data,
            )
            .where(inner.c.before < max_bytes)
            .order_by(inner.c.start_offset)
        )
        async with self._repo._tx() as conn:
            rows = (await conn.execute(stmt)).all()
        return [StoredChunk(int(r[0]), int(r[1]), int(r[2]), int(r[3]), bytes(r[4])) for r in rows]

    async def end(self, run_id: str) -> tuple[int, int] | None:
        """``(end offset, last sequence)`` of the run's committed chunks; None if it has none."""
        stmt = (
            sa.select(
                live_chunks.c.start_offset + sa.func.length(live_chunks.c.data),
                live_chunks.c.last_sequence,
            )
            .where(live_chunks.c.run_id == run_id)
            .order_by(live_chunks.c.start_offset.desc())
            .limit(1)
        )
        async with self._repo._tx() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else (int(row[0]), int(row[1]))

    async def last(self, run_id: str) -> StoredChunk | None:
        """The run's newest committed chunk, if any."""
        stmt = (
            sa.select(
                live_chunks.c.start_offset,
                live_chunks.c.first_sequence,
                live_chunks.c.last_sequence,
                live_chunks.c.epoch,
                live_chunks.c.data,
            )
            .where(live_chunks.c.run_id == run_id)
            .order_by(live_chunks.c.start_offset.desc())
            .limit(1)
        )
        async with self._repo._tx() as conn:
            r = (await conn.execute(stmt)).first()
        return (
            None
            if r is None
            else StoredChunk(int(r[0]), int(r[1]), int(r[2]), int(r[3]), bytes(r[4]))
        )

    async def delete(self, run_id: str) -> int:
        """Delete the run's chunks (its sealed log is verified in object storage)."""
        async with self._repo._tx(write=True) as conn:
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
        async with self._repo._tx() as conn:
            return [str(r[0]) for r in (await conn.execute(stmt)).all()]

    async def size(self) -> TierSize:
        """Runs, chunks and bytes the live tier holds now."""
        stmt = sa.select(
            sa.func.count(sa.distinct(live_chunks.c.run_id)),
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.func.length(live_chunks.c.data)), 0),
        )
        async with self._repo._tx() as conn:
            row = (await conn.execute(stmt)).one()
        return TierSize(int(row[0]), int(row[1]), int(row[2]))


__all__ = ["ChunkRepository", "Conflict", "StoredChunk", "TierSize"]
