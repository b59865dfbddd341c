"""Ingest idempotency keys: the stored answer of each ``Idempotency-Key`` of a run.

Part of :class:`runevents.db.repository.RunRepository` (a mixin, see
``db/base.py``); the ``ingest_keys`` table is the only one it touches, apart
from reading ``runs`` to prune the keys of runs whose log is final.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from runevents.db.base import RepositoryBase, log_state_values
from runevents.db.rows import check_aware, scrub
from runevents.db.tables import ingest_keys, runs
from runevents.exceptions import Conflict, InvalidInput, RunNotFound
from runevents.models import LogState, utcnow

#: longest accepted Idempotency-Key
MAX_IDEMPOTENCY_KEY = 255


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What is stored for one ``Idempotency-Key``: the answer and what proves it."""

    answer: dict[str, Any]
    #: SHA-256 (hex) of the request body that used the key (None: stored before 0002)
    body_sha256: str | None
    #: event_id of the batch's first event: the batch is in the log iff that line is
    first_event_id: str | None


class IdempotencyKeys(RepositoryBase):
    """Get, put, delete, prune and count the idempotency keys of runs."""

    async def get_idempotency(self, run_id: str, key: str) -> IdempotencyRecord | None:
        """What is stored for ``key`` on the run, or None."""
        stmt = sa.select(
            ingest_keys.c.answer, ingest_keys.c.body_sha256, ingest_keys.c.first_event_id
        ).where(ingest_keys.c.run_id == run_id, ingest_keys.c.key == scrub(key))
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        return IdempotencyRecord(dict(row[0]), row[1], row[2])

    async def put_idempotency(
        self,
        run_id: str,
        key: str,
        answer: dict[str, Any],
        *,
        body_sha256: str | None = None,
        first_event_id: str | None = None,
    ) -> None:
        """Remember ``answer`` for ``key`` on the run, replacing a stale record.

        InvalidInput for an empty or over-long key; RunNotFound if the run does not exist.
        """
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        values = {
            "answer": scrub(answer),
            "created_at": utcnow(),
            "body_sha256": body_sha256,
            "first_event_id": first_event_id,
        }
        stmt = insert(ingest_keys).values(run_id=run_id, key=scrub(key), **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[ingest_keys.c.run_id, ingest_keys.c.key], set_=values
        )
        try:
            async with self._tx(write=True) as conn:
                await conn.execute(stmt)
        except Conflict as exc:
            # the primary key cannot clash (DO UPDATE): only the run's foreign key can
            raise RunNotFound(f"run {run_id} not found") from exc

    async def delete_idempotency(self, run_id: str, key: str | None = None) -> int:
        """Forget ``key`` on the run (every key with None); returns how many were dropped."""
        stmt = sa.delete(ingest_keys).where(ingest_keys.c.run_id == run_id)
        if key is not None:
            stmt = stmt.where(ingest_keys.c.key == scrub(key))
        async with self._tx(write=True) as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount or 0)

    async def prune_idempotency(self, before: datetime) -> int:
        """Drop the keys of runs compacted or expired that ended before ``before``."""
        old = sa.select(runs.c.id).where(
            runs.c.log_state.in_(log_state_values({LogState.COMPRESSED, LogState.EXPIRED})),
            runs.c.completed_at < check_aware(before, "before"),
        )
        stmt = sa.delete(ingest_keys).where(ingest_keys.c.run_id.in_(old))
        async with self._tx(write=True) as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount or 0)

    async def count_idempotency(self, run_id: str | None = None) -> int:
        """How many keys are stored (for one run, or all): tests and the bench."""
        stmt = sa.select(sa.func.count()).select_from(ingest_keys)
        if run_id is not None:
            stmt = stmt.where(ingest_keys.c.run_id == run_id)
        async with self._tx() as conn:
            return int(await conn.scalar(stmt) or 0)
