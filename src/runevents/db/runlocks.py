"""Per-run exclusion of maintenance across processes: Postgres session advisory locks.

Compaction, retention and reindex of one run must not overlap, whichever
machines they run on (contract section 10): two compactions of one log would
upload the compressed form twice and one would drop the plain form while the
other still reads it; a compaction racing retention can resurrect a deleted
body's row. The engine's ``flock`` only guards one host's spool, so on
Postgres every per-run maintenance step first takes
``pg_try_advisory_lock(key(run_id))`` on a connection of its own and holds it
until the step ends; a process that does not get it skips the run (another
process is doing it).

Why an advisory lock and not the run's writer lease (ownership.py):

- it is held exactly as long as the holder lives: a kill -9 or a lost
  connection ends the session and the lock with it, at once, with no expiry
  to wait for, and a *paused* holder (SIGSTOP, a long GC) keeps it -- the
  others skip the run rather than take it over and race the holder when it
  wakes (a lease expires under a paused holder, and compaction has no fencing
  point before its upload);
- it writes nothing: no row update, no epoch bump that the live tier's chunk
  fencing would see, nothing to renew;
- it is non-blocking: ``try`` answers at once, so a pass never queues behind
  another.

A session lock outlives the transaction it was taken in, so the connection
is not left "idle in transaction" (no held-back vacuum horizon, no
``idle_in_transaction_session_timeout``) during a long compaction; it is
released explicitly, and a connection whose unlock failed is discarded (its
session, and the lock, end). Session locks need session pooling: behind
PgBouncer in transaction mode use a direct connection for maintenance.

Keys are 64-bit, from BLAKE2b over a namespace and the run id: another
feature's advisory locks (the migration lock uses a small constant) never
collide with them, and two run ids share a key with negligible probability
(a collision would only make one run skip a pass).

SQLite is one machine: the engine's file locks already exclude, so
:meth:`RunLocks.hold` grants at once and touches nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from runevents.db.engine import Database, describe_error
from runevents.exceptions import DatabaseError

__all__ = ["RunLocks", "maintenance_key"]

_NAMESPACE = b"runevents/maintenance/"


def maintenance_key(run_id: str) -> int:
    """The signed 64-bit advisory lock key of ``run_id``'s maintenance."""
    digest = hashlib.blake2b(_NAMESPACE + run_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class RunLocks:
    """Cross-process per-run locks of maintenance steps (see the module doc)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    @property
    def shared(self) -> bool:
        """Whether the locks exclude other machines (Postgres), not only this host."""
        return self._db.dialect == "postgresql"

    @contextlib.asynccontextmanager
    async def hold(self, run_id: str) -> AsyncIterator[bool]:
        """Yield True while this process holds ``run_id``'s maintenance lock, False (at
        once) if another session holds it. DatabaseError if the database is away."""
        if not self.shared:
            yield True
            return
        key = maintenance_key(run_id)
        try:
            conn = await self._db.engine.connect()
        except (sa.exc.DBAPIError, OSError) as exc:
            raise DatabaseError(f"maintenance lock of {run_id}: {describe_error(exc)}") from exc
        try:
            try:
                got = bool(
                    (
                        await conn.execute(
                            sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}
                        )
                    ).scalar()
                )
                # end the transaction: the session lock stays, the connection is idle
                await conn.commit()
            except (sa.exc.DBAPIError, OSError) as exc:
                await conn.invalidate()
                raise DatabaseError(f"maintenance lock of {run_id}: {describe_error(exc)}") from exc
            if not got:
                yield False
                return
            try:
                yield True
            finally:
                await _unlock(conn, key)
        finally:
            await conn.close()


async def _unlock(conn: AsyncConnection, key: int) -> None:
    """Release the lock; if that fails (or is cancelled), discard the session instead,
    which releases it too -- a pooled connection must never carry a held lock."""
    try:
        await conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        await conn.commit()
    except (sa.exc.DBAPIError, OSError):
        # the step itself is done; the discarded session takes the lock with it
        with contextlib.suppress(Exception):
            await conn.invalidate()
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.invalidate()
        raise
