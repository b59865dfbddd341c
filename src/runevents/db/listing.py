"""The runs-list query (built here, executed by ``repository.py``) and EXPLAIN.

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

from runevents.db.rows import check_aware, decode_cursor
from runevents.db.tables import runs
from runevents.exceptions import InvalidInput
from runevents.ids import check_name
from runevents.models import RunQuery, RunStatus

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
