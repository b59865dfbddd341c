"""Runs-list benchmark: 1,000,000 runs in Postgres, every list query through RunRepository.

    python bench/bench_runs_list.py            # 1,000,000 runs (a few minutes)
    python bench/bench_runs_list.py --quick    # 100,000 runs
    python bench/bench_runs_list.py --plans    # also print every EXPLAIN (ANALYZE, BUFFERS)

Creates a scratch database on the server (dropped at the end), migrates it,
fills it server-side with ``INSERT ... SELECT generate_series`` (80 % of the
runs in one workspace, 20 configurations, realistic status mix: 85 % succeeded,
0.5 % queued...), ``VACUUM ANALYZE``, then times each list query (median of
several calls of ``RunRepository.list_runs``, 50 rows per page, rows converted
to ``Run``: ``value``) and its plan with the server's execution time (``note``).
``vs``/``ratio`` compare server execution times with the naive SQL the design
avoids (``OFFSET`` paging, ``status IN (...)``): ratio = naive / ours.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import re
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from runevents.db import Database, RunRepository, open_database
from runevents.db.listing import list_statement
from runevents.db.rows import encode_cursor
from runevents.models import RunQuery, RunStatus

SECTION = "runs list"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
WORKSPACE = "acme"
#: the newest run of the synthetic data; created_at goes back `DAYS` from here
END = datetime(2026, 11, 24, tzinfo=UTC)
DAYS = 365

# Columns in table order; each value is a SQL expression over g (the run number,
# 1 = oldest), h (a per-run hash in 0..999, picks the status) and n (events).
_LOAD_SQL = """
INSERT INTO runs (
    id, workspace_id, configuration_id, status, external, mode, options, exit_code,
    created_at, started_at, completed_at, updated_at, events_path, output_paths,
    summary_json, failure, input_file_count, table_count, row_count,
    max_validation_severity, last_console_snippet, logging_degraded, event_count,
    events_bytes, log_state, cancel_requested, lease_owner, lease_expires_at)
SELECT
    'run_' || lpad(upper(to_hex(g)), 26, '0'),
    CASE WHEN g % 5 = 0 THEN 'ws' || (1 + (g / 5) % 19) ELSE $2 END,
    'cfg' || (abs(hashtextextended(g::text, 1)) % 20),
    s.status,
    false, 'execute', '{}'::jsonb,
    CASE WHEN s.ended THEN (s.status <> 'succeeded')::int END,
    t.created_at,
    CASE WHEN s.status NOT IN ('queued', 'building') THEN t.created_at + interval '2 seconds' END,
    CASE WHEN s.ended THEN t.created_at + interval '90 seconds' END,
    t.created_at + interval '90 seconds',
    'workspaces/x/runs/run_' || g || '/logs/events.ndjson',
    '["normalized.xlsx"]'::jsonb,
    CASE WHEN s.ended THEN jsonb_build_object(
        'schema', 'runevents.run_summary/v1', 'status', s.status, 'failure', null,
        'events', jsonb_build_object('total', n, 'by_type',
            jsonb_build_object('console.line', n - 3), 'ignored', 0),
        'console', jsonb_build_object('lines', n - 3, 'truncated', 0),
        'tables', jsonb_build_object('input_file_count', 1, 'table_count', 2, 'row_count', n),
        'validation', jsonb_build_object('issues_total', 0, 'max_severity', null)) END,
    NULL, 1, 2, n, NULL,
    'row ' || n || ' ok' || chr(10) || 'done' || chr(10),
    false, n, n * 180,
    CASE WHEN NOT s.ended THEN 'live' WHEN g < $1 / 2 THEN 'compressed' ELSE 'plain' END,
    false, NULL, NULL
FROM generate_series(1, $1::int) AS g,
LATERAL (SELECT abs(hashtextextended(g::text, 0)) % 1000 AS h,
                100 + abs(hashtextextended(g::text, 2)) % 5000 AS n) AS r,
LATERAL (SELECT CASE WHEN r.h < 5 THEN 'queued' WHEN r.h < 10 THEN 'building'
                     WHEN r.h < 20 THEN 'running' WHEN r.h < 50 THEN 'cancelled'
                     WHEN r.h < 150 THEN 'failed' ELSE 'succeeded' END AS status) AS s0,
LATERAL (SELECT s0.status, s0.status IN ('succeeded', 'failed', 'cancelled') AS ended) AS s,
LATERAL (SELECT $3::timestamptz - make_interval(secs => ($1 - g) * ($4::float8 / $1))
         AS created_at) AS t
"""


async def load_runs(url: str, count: int, *, workspace: str = WORKSPACE) -> None:
    """Fill the (migrated, empty) database at ``url`` with ``count`` synthetic runs, then
    ``VACUUM ANALYZE``. Run ``g`` is created ``(count - g) * DAYS / count`` days before END."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute(_LOAD_SQL, count, workspace, END, DAYS * 86400.0)
        await conn.execute("VACUUM ANALYZE runs")
    finally:
        await conn.close()


@dataclass(frozen=True)
class Case:
    """One list query: a name and its RunQuery (cursor filled in for deep pages)."""

    name: str
    query: RunQuery
    #: position (runs skipped) of a deep keyset page; None: first page
    depth: int | None = None
    #: naive SQL the design avoids, timed for comparison ($1 = workspace)
    naive: str | None = None
    naive_name: str | None = None


def cases(count: int) -> list[Case]:
    """The list queries to time, for a database loaded with ``count`` runs."""
    q = RunQuery(workspace_id=WORKSPACE, limit=50)
    mid = END - timedelta(days=DAYS / 2)
    deep = int(count * 0.8 * 0.6)  # 60 % into the workspace's runs
    # 60 % into one configuration's failed runs (1/20 of the workspace, 10 % failed)
    deep_filtered = max(1, int(count * 0.8 / 20 * 0.1 * 0.6))
    select = "SELECT * FROM runs WHERE workspace_id = $1"
    order = "ORDER BY created_at DESC, id DESC"
    return [
        Case("first page", q),
        Case(
            f"deep page (after {deep:,} runs, keyset)",
            q,
            depth=deep,
            naive=f"{select} {order} LIMIT 51 OFFSET {deep}",
            naive_name="OFFSET",
        ),
        Case("status=succeeded (85 %)", replace(q, statuses=frozenset({RunStatus.SUCCEEDED}))),
        Case("status=running (1 %)", replace(q, statuses=frozenset({RunStatus.RUNNING}))),
        Case(
            "status in (queued, building, running) (2 %)",
            replace(
                q,
                statuses=frozenset({RunStatus.QUEUED, RunStatus.BUILDING, RunStatus.RUNNING}),
            ),
            naive=f"{select} AND status IN ('queued', 'building', 'running') {order} LIMIT 51",
            naive_name="status IN (...)",
        ),
        Case("configuration", replace(q, configuration_id="cfg7")),
        Case(
            "created in one day (mid-year)",
            replace(q, created_after=mid - timedelta(days=1), created_before=mid),
        ),
        Case(
            "configuration + status in (failed, cancelled) + 30 days",
            replace(
                q,
                configuration_id="cfg7",
                statuses=frozenset({RunStatus.FAILED, RunStatus.CANCELLED}),
                created_after=mid - timedelta(days=30),
                created_before=mid,
            ),
        ),
        Case(
            f"configuration + status=failed, deep page (after {deep_filtered:,})",
            replace(q, configuration_id="cfg7", statuses=frozenset({RunStatus.FAILED})),
            depth=deep_filtered,
        ),
    ]


async def with_cursor(database: Database, case: Case) -> RunQuery:
    """``case.query`` positioned after its first ``case.depth`` runs (found once, not timed)."""
    if case.depth is None:
        return case.query
    # the very statement list_runs runs, cut to the one run at that depth
    stmt = list_statement(case.query).limit(1).offset(case.depth - 1)
    async with database.engine.connect() as conn:
        row = (await conn.execute(stmt)).mappings().one()
    return replace(case.query, cursor=encode_cursor(row["created_at"], row["id"]))


async def median_ms(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    """Median wall time of ``fn`` in ms, after two warm-up calls."""
    for _ in range(2):
        await fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS) "


def execution_ms(plan: list[str]) -> float:
    """The ``Execution Time`` of an ``EXPLAIN ANALYZE`` plan, in ms."""
    for line in plan:
        if line.strip().startswith("Execution Time:"):
            return float(line.split(":")[1].split()[0])
    raise ValueError("plan has no Execution Time line")


def plan_nodes(plan: list[str]) -> list[str]:
    """The node names of a Postgres plan (``Index Scan Backward using ix_runs_list on runs``)."""
    nodes = []
    for line in plan:
        if "(cost=" in line or "(actual" in line:
            node = line.strip().removeprefix("->").strip().split("  (")[0]
            nodes.append(re.sub(r" runs_\d+$", "", node))  # union branches alias runs
    return nodes


def plan_summary(plan: list[str]) -> str:
    """The plan's nodes (without Limit) and its first Buffers line, on one line."""
    nodes = [n for n in dict.fromkeys(plan_nodes(plan)) if n not in {"Limit", "Subquery Scan"}]
    buffers = next((line.strip() for line in plan if "Buffers:" in line), "")
    return "; ".join([" > ".join(nodes), buffers])


async def run_benchmark(
    admin_url: str, count: int, repeat: int, show_plans: bool
) -> list[dict[str, Any]]:
    """Create, load, measure and drop a scratch database; return the result rows."""
    name = f"runevents_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    rows: list[dict[str, Any]] = []
    database: Database | None = None
    try:
        database = await open_database(url)
        start = time.perf_counter()
        await load_runs(url, count)
        load_ms = (time.perf_counter() - start) * 1000
        repo = RunRepository(database)
        size = await repo.runs_table_bytes()
        rows.append(
            _row(
                f"load {count:,} runs (INSERT ... SELECT + VACUUM ANALYZE)",
                load_ms,
                note=f"runs table + indexes: {(size or 0) / 2**20:.0f} MiB",
            )
        )
        raw = await asyncpg.connect(url)
        try:
            for case in cases(count):
                query = await with_cursor(database, case)
                ms = await median_ms(functools.partial(repo.list_runs, query), repeat)
                plans = [await repo.explain_list_runs(query) for _ in range(max(3, repeat // 3))]
                server = statistics.median(execution_ms(plan) for plan in plans)
                if show_plans:
                    print(f"\n== {case.name}\n" + "\n".join(plans[-1]), file=sys.stderr)
                vs = ratio = None
                if case.naive is not None:
                    naive_plans = [
                        [r[0] for r in await raw.fetch(EXPLAIN + case.naive, WORKSPACE)]
                        for _ in range(max(3, repeat // 3))
                    ]
                    naive = statistics.median(execution_ms(plan) for plan in naive_plans)
                    if show_plans:
                        print(
                            f"\n== naive: {case.naive}\n" + "\n".join(naive_plans[-1]),
                            file=sys.stderr,
                        )
                    vs, ratio = f"{case.naive_name} (server {naive:.2f} ms)", naive / server
                note = f"server {server:.3f} ms; {plan_summary(plans[-1])}"
                rows.append(_row(case.name, ms, vs=vs, ratio=ratio, note=note))
        finally:
            await raw.close()
    finally:
        if database is not None:
            await database.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return rows


def _row(
    name: str, value: float, *, vs: str | None = None, ratio: float | None = None, note: str = ""
) -> dict[str, Any]:
    return {
        "section": SECTION,
        "name": name,
        "value": round(value, 3),
        "unit": "ms",
        "vs": vs,
        "ratio": None if ratio is None else round(ratio, 1),
        "note": note,
    }


def collect(
    quick: bool, *, admin_url: str = DEFAULT_ADMIN_URL, plans: bool = False
) -> list[dict[str, Any]]:
    """Benchmark rows for the runs list (100,000 runs if ``quick``, else 1,000,000).

    Returns no rows (and says why on stderr) when Postgres is not reachable.
    """
    try:
        return asyncio.run(
            run_benchmark(admin_url, 100_000 if quick else 1_000_000, 5 if quick else 15, plans)
        )
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"runs list benchmark skipped: PostgreSQL at {admin_url}: {exc}", file=sys.stderr)
        return []


def main() -> None:
    """Command line: print a table of the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 runs instead of 1,000,000")
    parser.add_argument("--plans", action="store_true", help="print every query plan")
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL, help="maintenance database")
    args = parser.parse_args()
    for row in collect(args.quick, admin_url=args.admin_url, plans=args.plans):
        vs = f"  vs {row['vs']} (x{row['ratio']})" if row["vs"] else ""
        print(f"{row['value']:>10.2f} ms  {row['name']}{vs}\n              {row['note']}")


if __name__ == "__main__":
    main()
