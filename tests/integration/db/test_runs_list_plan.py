"""The runs-list queries are index scans, never a full scan plus a sort.

Postgres: 20,000 synthetic runs (the benchmark's generator), ``VACUUM ANALYZE``,
then ``EXPLAIN (ANALYZE, BUFFERS)`` of every query ``bench/bench_runs_list.py``
times. SQLite (no statistics, as runevents uses it): ``EXPLAIN QUERY PLAN``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bench.bench_runs_list import Case, cases, load_runs, plan_nodes, with_cursor

from runevents.db import Database, RunRepository, open_database
from runevents.db.rows import encode_cursor
from runevents.ids import new_run_id

COUNT = 20_000
CASES = cases(COUNT)
LIST_INDEXES = (
    "ix_runs_list",
    "ix_runs_list_status",
    "ix_runs_list_configuration",
    "ix_runs_list_configuration_status",
    "ix_runs_queue",  # (status, created_at, id): serves a common status across workspaces
)


@pytest.fixture
async def loaded_pg(pg_database_url: str) -> Database:
    """A Postgres database of this test's own with COUNT runs and fresh statistics."""
    database = await open_database(pg_database_url)
    await load_runs(pg_database_url, COUNT)
    return database


@pytest.mark.postgres
@pytest.mark.slow  # loads 20,000 runs: a few seconds
async def test_every_list_query_is_an_index_scan_on_postgres(loaded_pg: Database) -> None:
    repository = RunRepository(loaded_pg)
    try:
        for case in CASES:
            query = await with_cursor(loaded_pg, case)
            page, _ = await repository.list_runs(query)
            assert page, case.name  # the data really has matches: the plan is not trivial
            plan = await repository.explain_list_runs(query)
            nodes = plan_nodes(plan)
            text = "\n".join(plan)
            assert not any("Seq Scan" in n or "Bitmap" in n for n in nodes), text
            scans = [n for n in nodes if "Scan" in n]
            assert scans, text
            assert all(n.startswith("Index Scan") for n in scans), text
            assert all(n.split(" using ")[1].split(" on ")[0] in LIST_INDEXES for n in scans)
            # a sort only merges the per-status branches (each at most limit + 1 rows)
            if "Sort" in nodes:
                assert "Append" in nodes, text
            if len(case.query.statuses) <= 1:
                assert "Sort" not in nodes and "Merge Append" not in nodes, text
            assert len(scans) == max(1, len(case.query.statuses)), text
    finally:
        await loaded_pg.close()


def _sqlite_query(case: Case) -> Case:
    if case.depth is None:
        return case
    cursor = encode_cursor(datetime(2026, 6, 1, tzinfo=UTC), new_run_id())
    return replace(case, query=replace(case.query, cursor=cursor))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_every_list_query_uses_a_list_index_on_sqlite(tmp_path: Path, case: Case) -> None:
    database = await open_database(f"sqlite:///{tmp_path}/plan.db")
    try:
        plan = await RunRepository(database).explain_list_runs(_sqlite_query(case).query)
    finally:
        await database.close()
    text = "\n".join(plan)
    accesses = [line for line in plan if " runs " in f" {line} "]
    assert accesses, text
    assert all("USING INDEX ix_runs_list" in line for line in accesses), text
    assert not any(line.startswith("SCAN runs") for line in plan), text
    if len(case.query.statuses) <= 1:
        # one index range, read in order: nothing to sort
        assert "TEMP B-TREE" not in text, text
    else:
        # each branch's (at most limit + 1) rows are merged in order
        assert "MERGE (UNION ALL)" in text, text
