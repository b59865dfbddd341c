"""RunRepository.list_runs / list_workspaces / count_runs, on SQLite and Postgres."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from runevents.db import RunRepository
from runevents.db.rows import encode_cursor
from runevents.exceptions import InvalidInput
from runevents.ids import new_run_id
from runevents.models import Run, RunQuery, RunStatus

STATUS_CYCLE = [
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.SUCCEEDED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
    RunStatus.BUILDING,
]


async def _seed(
    repository: RunRepository, make_run: Callable[..., Run], count: int = 30
) -> list[Run]:
    """``count`` runs in ws, two configurations, cycling statuses; returned newest first."""
    runs = [
        make_run(
            configuration_id="a" if i % 2 else "b",
            status=STATUS_CYCLE[i % len(STATUS_CYCLE)],
        )
        for i in range(count)
    ]
    for run in runs:
        await repository.insert_run(run)
    await repository.insert_run(make_run(workspace_id="other"))
    return sorted(runs, key=lambda r: (r.created_at, r.id), reverse=True)


async def _all_pages(repository: RunRepository, query: RunQuery) -> list[list[Run]]:
    pages: list[list[Run]] = []
    cursor: str | None = None
    while True:
        page, cursor = await repository.list_runs(
            RunQuery(
                workspace_id=query.workspace_id,
                statuses=query.statuses,
                configuration_id=query.configuration_id,
                created_after=query.created_after,
                created_before=query.created_before,
                limit=query.limit,
                cursor=cursor,
            )
        )
        pages.append(page)
        if cursor is None:
            return pages
        assert len(pages) < 1000


def _ids(runs: list[Run]) -> list[str]:
    return [r.id for r in runs]


async def test_newest_first_with_keyset_pages(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    expected = await _seed(repository, make_run, 23)
    pages = await _all_pages(repository, RunQuery(workspace_id="ws", limit=5))
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert _ids([r for p in pages for r in p]) == _ids(expected)


async def test_last_full_page_has_no_cursor(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    await _seed(repository, make_run, 10)
    pages = await _all_pages(repository, RunQuery(workspace_id="ws", limit=5))
    assert [len(p) for p in pages] == [5, 5]


async def test_equal_timestamps_are_ordered_by_id(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    first = make_run()
    same = [make_run(created_at=first.created_at, updated_at=first.created_at) for _ in range(7)]
    for run in same:
        await repository.insert_run(run)
    pages = await _all_pages(repository, RunQuery(workspace_id="ws", limit=2))
    assert _ids([r for p in pages for r in p]) == sorted(_ids(same), reverse=True)


@pytest.mark.parametrize(
    "statuses",
    [
        {RunStatus.RUNNING},
        {RunStatus.SUCCEEDED, RunStatus.FAILED},
        {RunStatus.QUEUED, RunStatus.BUILDING, RunStatus.RUNNING},
        set(RunStatus),
    ],
    ids=lambda s: "+".join(sorted(s)),
)
async def test_status_filter(
    repository: RunRepository, make_run: Callable[..., Run], statuses: set[RunStatus]
) -> None:
    runs = await _seed(repository, make_run)
    pages = await _all_pages(
        repository, RunQuery(workspace_id="ws", statuses=frozenset(statuses), limit=3)
    )
    assert _ids([r for p in pages for r in p]) == _ids([r for r in runs if r.status in statuses])


async def test_configuration_and_status_filters_combine(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    runs = await _seed(repository, make_run)
    wanted = {RunStatus.SUCCEEDED, RunStatus.QUEUED, RunStatus.RUNNING}
    query = RunQuery(workspace_id="ws", configuration_id="a", statuses=frozenset(wanted), limit=2)
    got = [r for p in await _all_pages(repository, query) for r in p]
    expected = [r for r in runs if r.configuration_id == "a" and r.status in wanted]
    assert expected
    assert _ids(got) == _ids(expected)


async def test_created_after_is_inclusive_and_created_before_exclusive(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    runs = await _seed(repository, make_run)  # newest first
    after, before = runs[20].created_at, runs[5].created_at
    query = RunQuery(workspace_id="ws", created_after=after, created_before=before, limit=4)
    got = [r for p in await _all_pages(repository, query) for r in p]
    assert _ids(got) == _ids(runs[6:21])


async def test_time_range_with_status_filter(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    runs = await _seed(repository, make_run)
    after = runs[-10].created_at
    statuses = frozenset({RunStatus.FAILED, RunStatus.CANCELLED})
    query = RunQuery(workspace_id="ws", created_after=after, statuses=statuses, limit=50)
    page, cursor = await repository.list_runs(query)
    assert cursor is None
    assert _ids(page) == _ids([r for r in runs[:-9] if r.status in statuses])


async def test_workspaces_are_isolated(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    await _seed(repository, make_run, 4)
    page, cursor = await repository.list_runs(RunQuery(workspace_id="other"))
    assert [r.workspace_id for r in page] == ["other"]
    assert cursor is None
    assert await repository.list_runs(RunQuery(workspace_id="nobody")) == ([], None)


async def test_pages_are_stable_under_concurrent_inserts(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    original = await _seed(repository, make_run, 12)
    seen: list[Run] = []
    cursor: str | None = None
    for round_ in range(10):
        page, cursor = await repository.list_runs(
            RunQuery(workspace_id="ws", limit=4, cursor=cursor)
        )
        seen.extend(page)
        # newer runs arrive between page requests: they must not shift later pages
        newest = max(r.created_at for r in original) + timedelta(seconds=round_ + 1)
        await repository.insert_run(make_run(created_at=newest, updated_at=newest))
        if cursor is None:
            break
    assert _ids(seen) == _ids(original)


@pytest.mark.parametrize("limit", [0, -1, 501])
async def test_limit_out_of_range_is_invalid(repository: RunRepository, limit: int) -> None:
    with pytest.raises(InvalidInput, match="limit"):
        await repository.list_runs(RunQuery(workspace_id="ws", limit=limit))


async def test_limit_bounds_are_accepted(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    runs = await _seed(repository, make_run, 3)
    assert _ids((await repository.list_runs(RunQuery(workspace_id="ws", limit=1)))[0]) == _ids(
        runs[:1]
    )
    assert len((await repository.list_runs(RunQuery(workspace_id="ws", limit=500)))[0]) == 3


@pytest.mark.parametrize("cursor", ["garbage", "", "AAAA", "x" * 300])
async def test_garbage_cursor_is_invalid(repository: RunRepository, cursor: str) -> None:
    with pytest.raises(InvalidInput, match="cursor"):
        await repository.list_runs(RunQuery(workspace_id="ws", cursor=cursor))


async def test_a_cursor_positions_after_its_run(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    runs = await _seed(repository, make_run, 8)
    cursor = encode_cursor(runs[2].created_at, runs[2].id)
    page, _ = await repository.list_runs(RunQuery(workspace_id="ws", cursor=cursor, limit=3))
    assert _ids(page) == _ids(runs[3:6])


@pytest.mark.parametrize(
    "query",
    [
        RunQuery(workspace_id="../etc"),
        RunQuery(workspace_id="ws", configuration_id="a b"),
    ],
)
async def test_bad_ids_are_invalid(repository: RunRepository, query: RunQuery) -> None:
    with pytest.raises(InvalidInput):
        await repository.list_runs(query)


async def test_list_workspaces_and_counts(
    repository: RunRepository, make_run: Callable[..., Run]
) -> None:
    assert await repository.list_workspaces() == []
    assert await repository.count_runs() == 0
    for ws in ["zeta", "alpha", "mid", "alpha", "zeta", "zeta"]:
        await repository.insert_run(make_run(workspace_id=ws, id=new_run_id()))
    assert await repository.list_workspaces() == ["alpha", "mid", "zeta"]
    assert await repository.count_runs() == 6
    assert await repository.count_runs("zeta") == 3
