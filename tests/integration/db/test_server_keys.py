"""Deployment keys and sealed run masks (``server_keys``, ``run_masks``), on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from runevents.db import Database, RunRepository
from runevents.db.engine import open_database
from runevents.db.tables import runs
from runevents.exceptions import RunNotFound
from runevents.models import Run


async def test_a_key_is_created_once_and_read_by_every_process(
    database_url: str, repository: RunRepository
) -> None:
    # several processes starting at once, each with its own connection pool and
    # its own random candidate: all end up with the first one written
    others = [await open_database(database_url) for _ in range(3)]
    try:
        repos = [repository, *(RunRepository(db) for db in others)]
        values = await asyncio.gather(
            *(repo.server_key("session", f"candidate-{i}") for i, repo in enumerate(repos * 3))
        )
    finally:
        for db in others:
            await db.close()
    assert len(set(values)) == 1 and values[0].startswith("candidate-")
    assert await repository.server_key("session", "later") == values[0]
    assert await repository.server_key("other", "x-1") == "x-1"  # one key per name


async def test_run_masks_are_kept_once_per_digest_and_go_with_the_run(
    database: Database, repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run()
    await repository.insert_run(run)
    assert await repository.run_masks(run.id) == []
    await repository.add_run_masks(run.id, [("d1", "sealed-1"), ("d2", "sealed-2")])
    await repository.add_run_masks(run.id, [("d1", "sealed-1-again")])  # another replica
    assert sorted(await repository.run_masks(run.id)) == ["sealed-1", "sealed-2"]
    with pytest.raises(RunNotFound):
        await repository.add_run_masks("run_01JAAAAAAAAAAAAAAAAAAAAAAA", [("d", "s")])
    async with database.engine.begin() as conn:
        await conn.execute(sa.delete(runs).where(runs.c.id == run.id))
        count = await conn.scalar(sa.text("SELECT count(*) FROM run_masks"))
    assert count == 0
