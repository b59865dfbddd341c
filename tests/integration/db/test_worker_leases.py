"""Worker leases: claim_queued, renew/release, expiry, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest

from runevents.db import RunRepository
from runevents.exceptions import Conflict, RunNotFound
from runevents.models import Run, RunStatus, utcnow


async def test_claim_takes_the_oldest_queued_non_external_run(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    external = make_run(external=True)
    running = make_run(status=RunStatus.RUNNING)
    oldest = make_run()
    newer = make_run()
    for run in (newer, running, external, oldest):
        await repository.insert_run(run)
    claimed = await repository.claim_queued("w1", 30)
    assert claimed is not None
    assert claimed.id == oldest.id
    assert claimed.lease_owner == "w1"
    assert claimed.lease_expires_at is not None
    assert claimed.lease_expires_at > utcnow() + timedelta(seconds=25)
    second = await repository.claim_queued("w2", 30)
    assert second is not None
    assert second.id == newer.id
    assert await repository.claim_queued("w3", 30) is None


async def test_a_worker_without_the_configuration_failed_the_run_claim_takes_only_its_own(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    """A claim took the oldest queued run whatever its configuration, and a worker that
    did not have it failed the run ``configuration_not_found``. A claim now names the
    configurations its worker has; the others' runs stay queued, unleased."""
    foreign = make_run(workspace_id="acme", configuration_id="elsewhere")
    same_name_other_workspace = make_run(workspace_id="beta", configuration_id="etl")
    mine = make_run(workspace_id="acme", configuration_id="etl")
    for run in (foreign, same_name_other_workspace, mine):
        await repository.insert_run(run)
    known = [("acme", "etl"), ("acme", "other")]
    claimed = await repository.claim_queued("w1", 30, known)
    assert claimed is not None and claimed.id == mine.id
    assert await repository.claim_queued("w1", 30, known) is None
    assert await repository.claim_queued("w2", 30, []) is None  # knows nothing: takes nothing
    for run in (foreign, same_name_other_workspace):
        left = await repository.get_run(run.id)
        assert (left.status, left.lease_owner) == (RunStatus.QUEUED, None)
    # a worker that has it takes it (the oldest of its own)
    theirs = await repository.claim_queued("w3", 30, [("beta", "etl"), ("acme", "elsewhere")])
    assert theirs is not None and theirs.id == foreign.id


async def test_a_queued_run_with_an_expired_lease_can_be_claimed_again(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    run = make_run()
    await repository.insert_run(run)
    first = await repository.claim_queued("w1", 0.001)
    assert first is not None
    await asyncio.sleep(0.01)
    again = await repository.claim_queued("w2", 30)
    assert again is not None
    assert (again.id, again.lease_owner) == (run.id, "w2")
    with pytest.raises(Conflict, match="w1"):
        await repository.renew_lease(run.id, "w1", 30)


async def test_concurrent_claimers_never_share_a_run(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    runs = [make_run() for _ in range(12)]
    for run in runs:
        await repository.insert_run(run)
    claims: Counter[str] = Counter()

    async def worker(name: str) -> None:
        while (run := await repository.claim_queued(name, 60)) is not None:
            claims[run.id] += 1
            assert run.lease_owner == name

    await asyncio.gather(*(worker(f"w{i}") for i in range(6)))
    assert claims == Counter({run.id: 1 for run in runs})


async def test_concurrent_claimers_from_two_engines_never_share_a_run(
    database_url: str, repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    """Like two processes on one database: separate engines, separate pools."""
    from runevents.db import open_database

    other_db = await open_database(database_url)
    try:
        other = RunRepository(other_db)
        runs = [make_run() for _ in range(10)]
        for run in runs:
            await repository.insert_run(run)
        claims: Counter[str] = Counter()

        async def worker(repo: RunRepository, name: str) -> None:
            while (run := await repo.claim_queued(name, 60)) is not None:
                claims[run.id] += 1

        await asyncio.gather(
            *(
                worker(repo, f"{tag}{i}")
                for i in range(3)
                for tag, repo in (("a", repository), ("b", other))
            )
        )
        assert claims == Counter({run.id: 1 for run in runs})
    finally:
        await other_db.close()


async def test_renew_extends_only_the_owners_lease(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    await repository.insert_run(make_run())
    claimed = await repository.claim_queued("w1", 1)
    assert claimed is not None
    assert claimed.lease_expires_at is not None
    renewed = await repository.renew_lease(claimed.id, "w1", 120)
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > claimed.lease_expires_at + timedelta(seconds=100)
    with pytest.raises(Conflict):
        await repository.renew_lease(claimed.id, "intruder", 120)
    with pytest.raises(RunNotFound):
        await repository.renew_lease("run_01JAAAAAAAAAAAAAAAAAAAAAAA", "w1", 120)


async def test_release_drops_only_the_owners_lease(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    await repository.insert_run(make_run())
    claimed = await repository.claim_queued("w1", 60)
    assert claimed is not None
    await repository.release_lease(claimed.id, "intruder")
    assert (await repository.get_run(claimed.id)).lease_owner == "w1"
    await repository.release_lease(claimed.id, "w1")
    released = await repository.get_run(claimed.id)
    assert (released.lease_owner, released.lease_expires_at) == (None, None)
    # released and still queued: claimable again
    assert (await repository.claim_queued("w2", 60)) is not None


async def test_expired_leases_lists_not_ended_runs_past_expiry(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    now = utcnow()
    past, future = now - timedelta(seconds=5), now + timedelta(seconds=60)
    expired = make_run(status=RunStatus.RUNNING, lease_owner="w1", lease_expires_at=past)
    older = make_run(
        status=RunStatus.BUILDING, lease_owner="w2", lease_expires_at=past - timedelta(seconds=1)
    )
    live = make_run(status=RunStatus.RUNNING, lease_owner="w1", lease_expires_at=future)
    ended = make_run(status=RunStatus.FAILED, lease_owner="w1", lease_expires_at=past)
    unleased = make_run(status=RunStatus.RUNNING)
    for run in (expired, older, live, ended, unleased):
        await repository.insert_run(run)
    assert [r.id for r in await repository.expired_leases()] == [older.id, expired.id]
    later = now + timedelta(minutes=5)
    assert {r.id for r in await repository.expired_leases(later)} == {
        older.id,
        expired.id,
        live.id,
    }


async def test_claim_expired_lets_exactly_one_reaper_take_over(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    past = utcnow() - timedelta(seconds=5)
    run = make_run(status=RunStatus.RUNNING, lease_owner="dead", lease_expires_at=past)
    await repository.insert_run(run)
    results = await asyncio.gather(
        *(repository.claim_expired(run.id, f"reaper{i}", 30) for i in range(5))
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert (await repository.get_run(run.id)).lease_owner == winners[0].lease_owner
    assert await repository.claim_expired(run.id, "late", 30) is None
