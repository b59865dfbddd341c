"""Ingest idempotency keys (db/idempotency.py), on SQLite and Postgres."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from runevents.db import Database, RunRepository
from runevents.db.tables import runs
from runevents.exceptions import InvalidInput, RunNotFound
from runevents.models import Run


async def test_idempotency_keys_store_the_answer_and_its_proof(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run()
    await repository.insert_run(run)
    assert await repository.get_idempotency(run.id, "k1") is None
    await repository.put_idempotency(
        run.id, "k1", {"first_sequence": 1, "last_sequence": 3}, body_sha256="a" * 64,
        first_event_id="evt_1",
    )  # fmt: skip
    record = await repository.get_idempotency(run.id, "k1")
    assert record is not None
    assert record.answer == {"first_sequence": 1, "last_sequence": 3}
    assert (record.body_sha256, record.first_event_id) == ("a" * 64, "evt_1")
    # only the owner replaces a record, after the log proved the batch is not in it
    await repository.put_idempotency(run.id, "k1", {"first_sequence": 4, "last_sequence": 9})
    record = await repository.get_idempotency(run.id, "k1")
    assert record is not None and record.answer["first_sequence"] == 4
    assert await repository.count_idempotency(run.id) == 1
    assert await repository.delete_idempotency(run.id) == 1
    assert await repository.get_idempotency(run.id, "k1") is None
    other = make_run()
    await repository.insert_run(other)
    assert await repository.get_idempotency(other.id, "k1") is None


async def test_idempotency_key_for_unknown_run_is_not_found(repository: RunRepository) -> None:
    with pytest.raises(RunNotFound):
        await repository.put_idempotency("run_01JAAAAAAAAAAAAAAAAAAAAAAA", "k", {"a": 1})


@pytest.mark.parametrize("key", ["", "k" * 256])
async def test_bad_idempotency_key_is_invalid(
    repository: RunRepository, make_run: Callable[..., Run], key: str
) -> None:
    run = make_run()
    await repository.insert_run(run)
    with pytest.raises(InvalidInput, match="Idempotency-Key"):
        await repository.put_idempotency(run.id, key, {"a": 1})


async def test_deleting_a_run_deletes_its_idempotency_keys(
    database: Database, repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run()
    await repository.insert_run(run)
    await repository.put_idempotency(run.id, "k", {"a": 1})
    async with database.engine.begin() as conn:
        await conn.execute(sa.delete(runs).where(runs.c.id == run.id))
        count = await conn.scalar(sa.text("SELECT count(*) FROM ingest_keys"))
    assert count == 0
