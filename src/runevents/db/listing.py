"""The runs list: its query, the pages it returns, and its EXPLAIN.

:class:`RunListing` is the part of :class:`runevents.db.repository.RunRepository`
that lists runs (a mixin, see ``db/base.py``): pages of whole rows or of
light heads, the plan of a page, the workspaces and run counts.

Every list query is a keyset scan of one of the ``ix_runs_list*`` indexes,
read backwards for newest first, stopping after ``limit + 1`` rows: its cost
depends on the page size, not on how many runs the workspace has or how deep
the page is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable

from runevents.db.base import RepositoryBase
from runevents.db.rows import check_aware, decode_cursor, encode_cursor, from_row
from runevents.db.tables import runs
from runevents.exceptions import InvalidInput
from runevents.ids import check_name
from runevents.models import LogState, Run, RunHead, RunQuery, RunStatus

#: runs-list page size bounds (contract section 4)
MAX_LIMIT = 500
#: page size bound of the light rows a search lists (``RunRepository.list_run_heads``)
MAX_HEADS = 5000
NEWEST_FIRST = (runs.c.created_at.desc(), runs.c.id.desc())


def list_statement(
    query: RunQuery,
    columns: Sequence[sa.ColumnElement[Any]] | None = None,
    max_limit: int = MAX_LIMIT,
) -> sa.Select[Any]:
    """The SELECT of one runs-list page: ``query.limit + 1`` rows, newest first.

    The extra row tells whether a next page exists. InvalidInput for a bad
    limit, id, timestamp or cursor. ``columns``: only these (default: all),
    which must include ``created_at`` and ``id``; light rows may come in
    larger pages (``max_limit``).
    """
    selected = list(columns) if columns is not None else list(runs.c)
    check_name(query.workspace_id, "workspace_id")
    if not isinstance(query.limit, int) or not 1 <= query.limit <= max_limit:
        raise InvalidInput(f"limit must be between 1 and {max_limit}")
    where: list[sa.ColumnElement[bool]] = [runs.c.workspace_id == query.workspace_id]
    if query.configuration_id is not None:
        check_name(query.configuration_id, "configuration_id")
        where.append(runs.c.configuration_id == query.configuration_id)
    after = check_aware(query.created_after, "created_after")
    before = check_aware(query.created_before, "created_before")
    if after is not None:
        where.append(runs.c.created_at >= after)
    if before is not None:
        where.append(runs.c.created_at < before)
    if query.cursor is not None:
        created_at, run_id = decode_cursor(query.cursor)
        # a row-value comparison is one index range on (created_at, id) in both databases
        where.append(sa.tuple_(runs.c.created_at, runs.c.id) < (created_at, run_id))
    try:
        statuses = sorted({RunStatus(s).value for s in query.statuses})
    except ValueError:
        raise InvalidInput(f"invalid status filter {sorted(query.statuses)!r}") from None
    fetch = query.limit + 1
    if len(statuses) <= 1 or len(statuses) == len(RunStatus):
        if len(statuses) == 1:
            where.append(runs.c.status == statuses[0])
        return sa.select(*selected).where(*where).order_by(*NEWEST_FIRST).limit(fetch)
    # Several statuses: one ordered index range per status, each cut at `fetch`,
    # then merged. With `status IN (...)` the database would have to either sort
    # every matching run or walk the whole workspace filtering on status.
    branches = [
        sa.select(
            sa.select(*selected)
            .where(*where, runs.c.status == status)
            .order_by(*NEWEST_FIRST)
            .limit(fetch)
            .subquery()
        )
        for status in statuses
    ]
    merged = sa.union_all(*branches).subquery("merged")
    return sa.select(merged).order_by(merged.c.created_at.desc(), merged.c.id.desc()).limit(fetch)


class Explain(Executable, ClauseElement):
    """``EXPLAIN ...`` of a statement, with its parameters bound as usual."""

    inherit_cache = False

    def __init__(self, statement: sa.Select[Any], prefix: str) -> None:
        self.statement = statement
        self.prefix = prefix


@compiles(Explain)
def _compile_explain(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{element.prefix} {compiler.process(element.statement, **kw)}"


class RunListing(RepositoryBase):
    """Pages of a workspace's runs (keyset, newest first), their plan, and counts."""

    async def list_runs(self, query: RunQuery) -> tuple[list[Run], str | None]:
        """One page of a workspace's runs (newest first) and the cursor of the next page.

        Order: ``(created_at, id)`` descending.
        Filters: ``statuses`` (any of), ``configuration_id``, ``created_after``
        (inclusive: ``created_at >= created_after``) and ``created_before``
        (exclusive: ``created_at < created_before``). Pages are keyset-based, so
        runs inserted meanwhile never shift or repeat later pages. ``next_cursor``
        is None on the last page. InvalidInput for a bad limit, id or cursor.
        """
        stmt = list_statement(query)
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        page = [from_row(row) for row in rows[: query.limit]]
        more = len(rows) > query.limit
        return page, encode_cursor(page[-1].created_at, page[-1].id) if more else None

    async def list_run_heads(self, query: RunQuery) -> tuple[list[RunHead], str | None]:
        """:meth:`list_runs` reading only what a search needs of each run (no summary).

        Same order, filters and cursor; pages of up to 5000 light rows.
        """
        created: sa.ColumnElement[Any] = runs.c.created_at
        if self._db.dialect == "sqlite":
            # the text as stored, parsed below: the DateTime type's own parsing cost
            # more than everything else of a row (a search lists thousands)
            created = sa.type_coerce(runs.c.created_at, sa.String).label("created_at")
        columns = [
            runs.c.id,
            runs.c.configuration_id,
            created,
            runs.c.status,
            runs.c.log_state,
            runs.c.event_count,
        ]
        stmt = list_statement(query, columns, max_limit=MAX_HEADS)
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).all()
        # enum lookups by value without the Enum call machinery: thousands of rows
        statuses = RunStatus._value2member_map_
        states = LogState._value2member_map_
        page = [
            RunHead(
                id=row[0],
                workspace_id=query.workspace_id,
                configuration_id=row[1],
                created=row[2],
                status=statuses[row[3]],  # type: ignore[arg-type]
                log_state=states[row[4]],  # type: ignore[arg-type]
                event_count=row[5],
            )
            for row in rows[: query.limit]
        ]
        more = len(rows) > query.limit
        return page, encode_cursor(page[-1].created_at, page[-1].id) if more else None

    async def get_run_head(self, workspace_id: str, run_id: str) -> RunHead | None:
        """The light row of one run of ``workspace_id`` (None if there is none)."""
        stmt = sa.select(
            runs.c.id,
            runs.c.configuration_id,
            runs.c.created_at,
            runs.c.status,
            runs.c.log_state,
            runs.c.event_count,
        ).where(runs.c.id == run_id, runs.c.workspace_id == workspace_id)
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        return RunHead(
            id=row[0],
            workspace_id=workspace_id,
            configuration_id=row[1],
            created=row[2],
            status=RunStatus(row[3]),
            log_state=LogState(row[4]),
            event_count=row[5],
        )

    async def explain_list_runs(self, query: RunQuery, *, analyze: bool = True) -> list[str]:
        """The database's plan for :meth:`list_runs` with ``query``, one line per item.

        Postgres: ``EXPLAIN (ANALYZE, BUFFERS)`` (plain ``EXPLAIN`` if not
        ``analyze``); SQLite: ``EXPLAIN QUERY PLAN``. For benchmarks and tests.
        """
        stmt = list_statement(query)
        async with self._tx() as conn:
            if self._db.dialect == "postgresql":
                prefix = "EXPLAIN (ANALYZE, BUFFERS)" if analyze else "EXPLAIN"
                rows = (await conn.execute(Explain(stmt, prefix))).all()
                return [str(row[0]) for row in rows]
            rows = (await conn.execute(Explain(stmt, "EXPLAIN QUERY PLAN"))).all()
            return [str(row[-1]) for row in rows]

    async def list_workspaces(self) -> list[str]:
        """The distinct workspace ids that have runs, sorted."""
        # a loose index scan: one index probe per workspace, not a scan of every run
        stmt = sa.text(
            "WITH RECURSIVE w(ws) AS ("
            " SELECT min(workspace_id) FROM runs"
            " UNION ALL"
            " SELECT (SELECT min(workspace_id) FROM runs WHERE workspace_id > w.ws)"
            " FROM w WHERE w.ws IS NOT NULL"
            ") SELECT ws FROM w WHERE ws IS NOT NULL"
        )
        async with self._tx() as conn:
            return list((await conn.execute(stmt)).scalars())

    async def count_runs(self, workspace_id: str | None = None) -> int:
        """How many runs there are (in one workspace, or in all)."""
        stmt = sa.select(sa.func.count()).select_from(runs)
        if workspace_id is not None:
            stmt = stmt.where(runs.c.workspace_id == workspace_id)
        async with self._tx() as conn:
            return int(await conn.scalar(stmt) or 0)
