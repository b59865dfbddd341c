"""Run masks: the sealed ``::add-mask::`` values of each run.

Part of :class:`runevents.db.repository.RunRepository` (a mixin, see
``db/base.py``). Stored so every replica that reads or writes the run's log
masks the same values (``runevents/run_masks.py`` seals and opens them; only
the sealed form and a digest reach the database).
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from runevents.db.base import RepositoryBase
from runevents.db.tables import run_masks
from runevents.exceptions import Conflict, RunNotFound
from runevents.models import utcnow


class RunMasks(RepositoryBase):
    """The ``run_masks`` table: a run's sealed masks, one per digest."""

    async def run_masks(self, run_id: str) -> list[str]:
        """The sealed ``::add-mask::`` values stored for the run, oldest first."""
        stmt = (
            sa.select(run_masks.c.sealed)
            .where(run_masks.c.run_id == run_id)
            .order_by(run_masks.c.created_at, run_masks.c.digest)
        )
        async with self._tx() as conn:
            return [str(v) for v in (await conn.scalars(stmt)).all()]

    async def add_run_masks(self, run_id: str, masks: Collection[tuple[str, str]]) -> None:
        """Store ``(digest, sealed)`` masks of the run; a digest already stored is kept."""
        if not masks:
            return
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        now = utcnow()
        stmt = (
            insert(run_masks)
            .values(
                [
                    {"run_id": run_id, "digest": digest, "sealed": sealed, "created_at": now}
                    for digest, sealed in masks
                ]
            )
            .on_conflict_do_nothing(index_elements=[run_masks.c.run_id, run_masks.c.digest])
        )
        try:
            async with self._tx(write=True) as conn:
                await conn.execute(stmt)
        except Conflict as exc:
            # the primary key cannot clash (DO NOTHING): only the run's foreign key can
            raise RunNotFound(f"run {run_id} not found") from exc
