"""The replica registry (db/replicas.py) and the holder a refused lease names, on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest

from runevents.app import App
from runevents.db import Database, RunRepository, open_database
from runevents.db.replicas import PURGE_AFTER, ReplicaRepository
from runevents.db.tables import replicas, runs
from runevents.exceptions import WriterMoving
from runevents.models import Run, utcnow
from runevents.ownership import Ownership
from runevents.replicas import Presence
from runevents.settings import Settings


@pytest.fixture
def registry(database: Database) -> ReplicaRepository:
    return ReplicaRepository(database)


async def _age(database: Database, owner: str, by: timedelta) -> None:
    async with database.engine.begin() as conn:
        await conn.execute(
            replicas.update().where(replicas.c.owner == owner).values(seen_at=utcnow() - by)
        )


async def test_announce_lookup_refresh_and_remove(registry: ReplicaRepository) -> None:
    assert await registry.lookup("a") is None
    before = utcnow()
    await registry.announce("a", "http://10.0.0.1:8000")
    found = await registry.lookup("a")
    assert found is not None
    assert (found.owner, found.url) == ("a", "http://10.0.0.1:8000")
    assert found.seen_at >= before - timedelta(seconds=1)
    assert found.fresh(5)
    # a refresh moves seen_at and may change the URL; it never adds a second row
    await registry.announce("a", "http://10.0.0.2:8000")
    again = await registry.lookup("a")
    assert again is not None
    assert again.url == "http://10.0.0.2:8000"
    assert again.seen_at >= found.seen_at
    await registry.announce("b", "http://10.0.0.3:8000")
    assert [r.owner for r in await registry.all()] == ["a", "b"]
    await registry.remove("a")
    assert await registry.lookup("a") is None
    assert [r.owner for r in await registry.all()] == ["b"]


async def test_an_old_row_is_not_fresh_and_purged_by_the_next_announcement(
    registry: ReplicaRepository, database: Database
) -> None:
    await registry.announce("dead", "http://10.0.0.9:8000")
    await registry.announce("idle", "http://10.0.0.8:8000")
    await _age(database, "dead", PURGE_AFTER + timedelta(minutes=1))
    await _age(database, "idle", timedelta(seconds=30))
    idle = await registry.lookup("idle")
    assert idle is not None and not idle.fresh(12)
    await registry.announce("new", "http://10.0.0.7:8000")  # no purge: both stay
    assert {r.owner for r in await registry.all()} == {"dead", "idle", "new"}
    await registry.announce("new", "http://10.0.0.7:8000", purge=True)
    assert {r.owner for r in await registry.all()} == {"idle", "new"}


async def test_writer_replica_names_the_live_lease_holder_and_its_url(
    registry: ReplicaRepository, repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run(external=True)
    await repository.insert_run(run)
    assert await registry.writer_replica(run.id) == (None, None)  # nobody writes it
    assert await repository.acquire_writer(run.id, "owner-a", 30) is not None
    assert await registry.writer_replica(run.id) == ("owner-a", None)  # not registered
    await registry.announce("owner-a", "http://10.0.0.1:8000")
    owner, replica = await registry.writer_replica(run.id)
    assert owner == "owner-a"
    assert replica is not None and replica.url == "http://10.0.0.1:8000"
    assert await registry.writer_replica("run_00000000000000000000000000") == (None, None)


async def test_writer_replica_ignores_an_expired_lease(
    registry: ReplicaRepository,
    repository: RunRepository,
    database: Database,
    make_run: Callable[..., Run],
) -> None:
    run = make_run(external=True)
    await repository.insert_run(run)
    await registry.announce("owner-a", "http://10.0.0.1:8000")
    assert await repository.acquire_writer(run.id, "owner-a", 0.001) is not None
    await _expire_writer(database, run.id)
    assert await registry.writer_replica(run.id) == (None, None)


async def _expire_writer(database: Database, run_id: str) -> None:
    async with database.engine.begin() as conn:
        await conn.execute(
            runs.update()
            .where(runs.c.id == run_id)
            .values(writer_expires_at=utcnow() - timedelta(seconds=5))
        )


async def test_a_refused_lease_names_its_holder(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    """WriterMoving carries the owner id the ingest route forwards to."""
    run = make_run(external=True)
    await repository.insert_run(run)
    a = Ownership(repository, owner="owner-a", lease_seconds=30)
    b = Ownership(repository, owner="owner-b", lease_seconds=30)
    lease = await a.acquire(run.id)
    with pytest.raises(WriterMoving) as refused:
        await b.acquire(run.id)
    assert refused.value.owner == "owner-a"
    assert refused.value.retry_after == 1
    await lease.release()
    assert (await b.acquire(run.id)).epoch == lease.epoch + 1


async def test_presence_announces_refreshes_and_removes_itself(
    registry: ReplicaRepository, database: Database
) -> None:
    presence = Presence(registry, "owner-p", "http://127.0.0.1:8123/", writer_lease_seconds=0.5)
    assert presence.interval == 1.0  # never more often than once a second
    await presence.start()
    try:
        found = await registry.lookup("owner-p")
        assert found is not None and found.url == "http://127.0.0.1:8123"
        await _age(database, "owner-p", timedelta(seconds=60))
        # the loop refreshes seen_at within an interval
        for _ in range(40):
            refreshed = await registry.lookup("owner-p")
            assert refreshed is not None
            if refreshed.fresh(5):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the presence loop did not refresh seen_at")
    finally:
        await presence.close()
    assert await registry.lookup("owner-p") is None


async def test_a_serving_app_announces_itself_until_it_closes_and_a_worker_never_does(
    api_settings: Settings,
) -> None:
    worker = await App.open(api_settings, worker=False)  # ``runevents worker``: no HTTP
    serving = await App.open(api_settings, worker=False, advertise="http://127.0.0.1:8765")
    registry = ReplicaRepository(serving.database)
    try:
        rows = await registry.all()
        assert [(r.owner, r.url) for r in rows] == [
            (serving.manager.ownership.owner, "http://127.0.0.1:8765")
        ]
    finally:
        await serving.close()
        await worker.close()
    database = await open_database(api_settings.resolved_database_url)
    try:
        assert await ReplicaRepository(database).all() == []
    finally:
        await database.close()
