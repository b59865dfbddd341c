"""The replica registry's SQL: which serving process is reachable at which URL.

A ``runevents serve`` process announces its owner id (the name its writer
leases carry, ``ownership.new_owner_id``) and the URL other replicas reach it
at, refreshes ``seen_at`` while it runs and removes its row when it stops
cleanly (``runevents.replicas.Presence``). The ingest route of another
replica looks the owner of a run's writer up here and forwards the batch
there (``api/forward.py``). A process killed with ``kill -9`` leaves its row:
``seen_at`` then grows old, readers treat it as gone, and the next
announcement of any replica purges rows not seen for :data:`PURGE_AFTER`.

Its own module, beside ``repository.py``, on the same engine; one short
transaction per call, driver errors turned into :class:`DatabaseError`
(there is no constraint a caller could violate: the writes are upserts).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from runevents.db.engine import Database, transaction
from runevents.db.tables import replicas, runs
from runevents.models import utcnow

#: rows of processes not seen for this long are deleted (they died without a goodbye)
PURGE_AFTER = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Replica:
    """One registered serving process."""

    owner: str
    url: str
    seen_at: datetime

    def fresh(self, within: float, now: datetime | None = None) -> bool:
        """Seen within the last ``within`` seconds?"""
        age = ((now or utcnow()) - self.seen_at).total_seconds()
        return age <= within


class ReplicaRepository:
    """The ``replicas`` table (and the one read of ``runs`` that names a run's writer's URL)."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._engine = database.engine

    def _tx(self, *, write: bool = False) -> AbstractAsyncContextManager[AsyncConnection]:
        return transaction(self._db, write=write)

    async def announce(self, owner: str, url: str, *, purge: bool = False) -> None:
        """Insert or refresh ``owner``'s row (``seen_at`` now); ``purge``: also drop the rows
        of processes not seen for :data:`PURGE_AFTER`."""
        now = utcnow()
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt = insert(replicas).values(owner=owner, url=url, seen_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=[replicas.c.owner], set_={"url": url, "seen_at": now}
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)
            if purge:
                await conn.execute(replicas.delete().where(replicas.c.seen_at < now - PURGE_AFTER))

    async def remove(self, owner: str) -> None:
        """Delete ``owner``'s row (a clean shutdown: nobody forwards to it any more)."""
        async with self._tx(write=True) as conn:
            await conn.execute(replicas.delete().where(replicas.c.owner == owner))

    async def lookup(self, owner: str) -> Replica | None:
        """``owner``'s row, if it registered."""
        stmt = sa.select(replicas.c.owner, replicas.c.url, replicas.c.seen_at).where(
            replicas.c.owner == owner
        )
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else _replica(*row)

    async def writer_replica(self, run_id: str) -> tuple[str | None, Replica | None]:
        """``(owner, its row)`` of the run's live writer lease, in one read.

        ``(None, None)``: nobody holds a live lease (or no such run);
        ``(owner, None)``: the holder is not a registered replica (a worker, or
        a process that never announced itself).
        """
        stmt = (
            sa.select(runs.c.writer_owner, replicas.c.owner, replicas.c.url, replicas.c.seen_at)
            .select_from(runs.outerjoin(replicas, replicas.c.owner == runs.c.writer_owner))
            .where(runs.c.id == run_id, runs.c.writer_expires_at >= utcnow())
        )
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None or row[0] is None:
            return None, None
        if row[1] is None:
            return str(row[0]), None
        return str(row[0]), _replica(row[1], row[2], row[3])

    async def all(self) -> list[Replica]:
        """Every registered row (operators, tests)."""
        stmt = sa.select(replicas.c.owner, replicas.c.url, replicas.c.seen_at).order_by(
            replicas.c.owner
        )
        async with self._tx() as conn:
            return [_replica(*row) for row in (await conn.execute(stmt)).all()]


def _replica(owner: object, url: object, seen_at: object) -> Replica:
    assert isinstance(seen_at, datetime)
    if seen_at.tzinfo is None:
        seen_at = seen_at.replace(tzinfo=UTC)
    return Replica(owner=str(owner), url=str(url), seen_at=seen_at)
