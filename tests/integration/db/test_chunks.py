"""The live tier's chunk table (db/chunks.py) on Postgres: what the newest chunk says."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from runevents.db import RunRepository
from runevents.db.chunks import ChunkRepository, StoredChunk
from runevents.db.run_rows import insert_statement
from runevents.models import Run

# the live tier exists only on Postgres (several machines share it)
pytestmark = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


async def test_end_and_last_describe_the_newest_chunk(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    chunks = ChunkRepository(repository)
    run = make_run(external=True)
    first, second = b'{"a":1}\n{"a":2}\n', b'{"a":3}\n'
    await chunks.insert_run_with_chunk(insert_statement(run, "me", 30), run.id, 1, first)
    assert await chunks.end(run.id) == (len(first), 2)
    assert await chunks.last(run.id) == StoredChunk(0, 1, 2, 1, first)

    await chunks.append(run.id, "me", 1, len(first), 3, 3, second)
    assert await chunks.end(run.id) == (len(first) + len(second), 3)
    assert await chunks.last(run.id) == StoredChunk(len(first), 3, 3, 1, second)


async def test_end_and_last_of_a_run_without_chunks_are_none(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    chunks = ChunkRepository(repository)
    run = make_run()
    await repository.insert_run(run)
    assert await chunks.end(run.id) is None
    assert await chunks.last(run.id) is None
    assert await chunks.end("no-such-run") is None
