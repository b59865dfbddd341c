"""Deployment keys: secrets the whole deployment shares, created once.

Part of :class:`runevents.db.repository.RunRepository` (a mixin, see
``db/base.py``). The session key of the console (``api/deps.py``) and the key
that seals run masks (``run_masks.py``) live in ``server_keys`` so every
replica uses the same one.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from runevents.db.base import RepositoryBase
from runevents.db.tables import server_keys
from runevents.exceptions import DatabaseError
from runevents.models import utcnow


class ServerKeys(RepositoryBase):
    """The ``server_keys`` table: one value per name, first writer wins."""

    async def server_key(self, name: str, candidate: str) -> str:
        """The deployment's key ``name``, created as ``candidate`` if there is none yet.

        Race-safe on both backends: of processes starting at once, the first
        INSERT wins and every process reads the winner's value (``ON CONFLICT DO
        NOTHING``, then SELECT in the same transaction; on Postgres the second
        INSERT waits for the first to commit, and READ COMMITTED shows the
        SELECT the committed row).
        """
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt = (
            insert(server_keys)
            .values(name=name, value=candidate, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=[server_keys.c.name])
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)
            value = await conn.scalar(
                sa.select(server_keys.c.value).where(server_keys.c.name == name)
            )
        if not isinstance(value, str):  # pragma: no cover - the row was just written
            raise DatabaseError(f"server key {name!r} could not be created")
        return value
