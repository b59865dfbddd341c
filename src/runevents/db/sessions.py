"""Signed-out browser sessions (``tables.revoked_sessions``).

Part of :class:`runevents.db.repository.RunRepository` (a mixin, see
``db/base.py``). A session cookie is signed and carries its own expiry, so it
needs no row while it is good; signing out writes one, and every process of
the deployment refuses the cookie from then on (contract 7).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from runevents.db.base import RepositoryBase
from runevents.db.rows import check_aware
from runevents.db.tables import revoked_sessions
from runevents.models import utcnow


class Sessions(RepositoryBase):
    """Revoking a session id, and asking whether one is revoked."""

    async def revoke_session(self, session_id: str, expires_at: datetime) -> None:
        """Refuse session ``session_id`` from now on (until ``expires_at``, when its cookie
        is refused anyway). Idempotent; also drops the rows whose cookies have expired."""
        expires_at = check_aware(expires_at, "expires_at") or expires_at
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt = (
            insert(revoked_sessions)
            .values(session_id=session_id, expires_at=expires_at)
            .on_conflict_do_nothing(index_elements=[revoked_sessions.c.session_id])
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)
            # sign-outs are rare: the table's upkeep rides on them
            await conn.execute(
                revoked_sessions.delete().where(revoked_sessions.c.expires_at < utcnow())
            )

    async def session_revoked(self, session_id: str) -> bool:
        """Whether ``session_id`` was signed out."""
        async with self._tx() as conn:
            found = await conn.scalar(
                sa.select(revoked_sessions.c.session_id).where(
                    revoked_sessions.c.session_id == session_id
                )
            )
        return found is not None
