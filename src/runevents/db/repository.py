"""Every SQL statement of runevents: the runs repository.

(The runs-list SELECT is built in ``listing.py``, the schema and migrations
live beside; nothing outside ``runevents.db`` talks to the database.)

Async only, one short transaction per call (SQLite is shared between processes
and serializes writers). Driver errors are translated here and nowhere else:
an integrity violation is :class:`Conflict`, a value the column cannot hold is
:class:`InvalidInput`, anything else the database or connection reports is
:class:`DatabaseError`.

Concurrency guarantees the manager and worker rely on:

- :meth:`RunRepository.update_run` is one conditional ``UPDATE ... RETURNING``;
  of two concurrent completions guarded by ``expect`` exactly one matches.
- :meth:`RunRepository.claim_queued` never hands one run to two workers
  (Postgres: ``FOR UPDATE SKIP LOCKED``; SQLite: one ``UPDATE`` under
  ``BEGIN IMMEDIATE``, writers are serialized).
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from runevents.db.engine import Database, transaction
from runevents.db.listing import MAX_HEADS, NEWEST_FIRST, Explain, list_statement
from runevents.db.rows import (
    RUN_FIELDS,
    check_aware,
    column_of,
    encode_cursor,
    field_to_column_value,
    from_row,
    scrub,
    to_row,
)
from runevents.db.tables import ingest_keys, run_masks, runs, server_keys
from runevents.exceptions import (
    Conflict,
    DatabaseError,
    InvalidInput,
    InvalidTransition,
    RunEnded,
    RunNotFound,
    WriterFenced,
)
from runevents.models import (
    ENDED_STATUSES,
    TRANSITIONS,
    LogState,
    Run,
    RunHead,
    RunQuery,
    RunStatus,
    utcnow,
)

#: longest accepted Idempotency-Key
MAX_IDEMPOTENCY_KEY = 255
_ENDED = sorted(s.value for s in ENDED_STATUSES)
_NOT_ENDED = sorted(s.value for s in RunStatus if s not in ENDED_STATUSES)
_UPDATABLE = frozenset(RUN_FIELDS) - {"id", "updated_at"}
#: columns reindex's upsert never overwrites: the lease of a running job stays its worker's
_KEEP_ON_UPSERT = frozenset({"id", "lease_owner", "lease_expires_at", "cancel_requested"})


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What is stored for one ``Idempotency-Key``: the answer and what proves it."""

    answer: dict[str, Any]
    #: SHA-256 (hex) of the request body that used the key (None: stored before 0002)
    body_sha256: str | None
    #: event_id of the batch's first event: the batch is in the log iff that line is
    first_event_id: str | None


def _values(states: Collection[LogState]) -> list[str]:
    return sorted(LogState(s).value for s in states)


def insert_statement(run: Run, writer_owner: str | None, writer_lease_seconds: float) -> sa.Insert:
    """The INSERT of a new run's row (with ``writer_owner``: holding its writer lease, epoch 1)."""
    values = to_row(run)
    if writer_owner is not None:
        values.update(
            writer_owner=writer_owner,
            writer_epoch=1,
            writer_expires_at=utcnow() + timedelta(seconds=writer_lease_seconds),
        )
    return runs.insert().values(**values)


class RunRepository:
    """The ``runs`` and ``ingest_keys`` tables, one short transaction per call."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._engine = database.engine

    @property
    def database(self) -> Database:
        """The database this repository works on (maintenance locks share it)."""
        return self._db

    # -- transactions ---------------------------------------------------------------

    def _tx(self, *, write: bool = False) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection in a transaction (``db.engine.transaction``)."""
        return transaction(self._db, write=write)

    # -- single runs -----------------------------------------------------------------

    async def insert_run(
        self, run: Run, *, writer_owner: str | None = None, writer_lease_seconds: float = 8.0
    ) -> None:
        """Insert a new run (with ``writer_owner``: holding its writer lease, epoch 1).

        Conflict if a run with that id exists.
        """
        try:
            async with self._tx(write=True) as conn:
                await conn.execute(insert_statement(run, writer_owner, writer_lease_seconds))
        except Conflict as exc:
            raise Conflict(f"run {run.id} already exists") from exc

    async def upsert_run(self, run: Run) -> None:
        """Insert ``run`` or overwrite every column of its row (reindex)."""
        row = to_row(run)
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt = insert(runs).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[runs.c.id],
            # a rebuilt row describes the log; who runs or writes it is not in the log
            set_={name: stmt.excluded[name] for name in row if name not in _KEEP_ON_UPSERT},
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)

    async def get_run(self, run_id: str) -> Run:
        """The run with id ``run_id``. RunNotFound if there is none."""
        async with self._tx() as conn:
            row = (await conn.execute(runs.select().where(runs.c.id == run_id))).mappings().first()
        if row is None:
            raise RunNotFound(f"run {run_id} not found")
        return from_row(row)

    async def update_run(
        self,
        run_id: str,
        *,
        expect: Collection[RunStatus] | None = None,
        where: sa.ColumnElement[bool] | None = None,
        **fields: Any,
    ) -> Run:
        """Set ``fields`` (Run field names) in one conditional UPDATE; return the updated run.

        ``updated_at`` is always set to the server's clock. The row must currently
        have a status in ``expect`` (any status if None); when ``fields`` sets a
        new ``status``, the row's status must also be one that
        ``models.TRANSITIONS`` allows to move there. The check and the write are
        one statement, so of two concurrent calls with the same ``expect`` only
        one can succeed. If nothing matched: RunNotFound if the run does not
        exist, RunEnded if it has ended (and ``expect`` allowed no ended status),
        otherwise InvalidTransition.
        """
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise InvalidInput(f"cannot update run fields {sorted(unknown)}")
        values = {column_of(k): field_to_column_value(k, v) for k, v in fields.items()}
        allowed = None if expect is None else {RunStatus(s) for s in expect}
        if "status" in fields:
            target = RunStatus(values["status"])
            sources = {s for s, targets in TRANSITIONS.items() if target in targets}
            allowed = sources if allowed is None else allowed & sources
        stmt = runs.update().where(runs.c.id == run_id)
        if where is not None:
            stmt = stmt.where(where)
        if allowed is not None:
            stmt = stmt.where(runs.c.status.in_(sorted(s.value for s in allowed)))
        stmt = stmt.values(**values, updated_at=utcnow()).returning(*runs.c)
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is not None:
                return from_row(row)
            current = await conn.scalar(sa.select(runs.c.status).where(runs.c.id == run_id))
            fenced = (
                where is not None
                and current is not None
                and not await conn.scalar(
                    sa.select(sa.literal(True)).where(runs.c.id == run_id, where)
                )
            )
        if current is None:
            raise RunNotFound(f"run {run_id} not found")
        if fenced:
            raise WriterFenced(f"this process no longer holds the writer of run {run_id}")
        status = RunStatus(current)
        if status.ended and not any(s.ended for s in allowed or ()):
            raise RunEnded(f"run {run_id} has already ended ({status.value})")
        wanted = ", ".join(sorted(s.value for s in allowed or ())) or "none"
        raise InvalidTransition(
            f"run {run_id} is {status.value}; this change needs one of: {wanted}"
        )

    # -- the runs list ----------------------------------------------------------------

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

    # -- worker leases ---------------------------------------------------------------

    async def claim_queued(self, worker_id: str, lease_seconds: float) -> Run | None:
        """Lease the oldest queued, non-external run that no live lease holds; None if none.

        Never hands the same run to two concurrent callers. A queued run whose
        lease expired (its worker died before starting it) is claimable again.
        """
        now = utcnow()
        free = sa.or_(runs.c.lease_owner.is_(None), runs.c.lease_expires_at < now)
        queued = runs.c.status == RunStatus.QUEUED.value
        pick = (
            sa.select(runs.c.id)
            .where(queued, runs.c.external == sa.false(), free)
            .order_by(runs.c.created_at, runs.c.id)
            .limit(1)
        )
        if self._db.dialect == "postgresql":
            # skip rows another claimer has locked instead of queueing behind it
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            runs.update()
            .where(runs.c.id == pick.scalar_subquery(), queued, free)
            .values(lease_owner=worker_id, lease_expires_at=now + timedelta(seconds=lease_seconds))
            .returning(*runs.c)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else from_row(row)

    async def claim_expired(self, run_id: str, worker_id: str, lease_seconds: float) -> Run | None:
        """Take over the run's lease if it has expired and the run has not ended; else None.

        Lets one reaper (of several) act on a run whose worker died.
        """
        now = utcnow()
        stmt = (
            runs.update()
            .where(
                runs.c.id == run_id,
                runs.c.status.in_(_NOT_ENDED),
                runs.c.lease_owner.is_not(None),
                runs.c.lease_expires_at < now,
            )
            .values(lease_owner=worker_id, lease_expires_at=now + timedelta(seconds=lease_seconds))
            .returning(*runs.c)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else from_row(row)

    async def renew_lease(self, run_id: str, worker_id: str, lease_seconds: float) -> Run:
        """Extend the lease ``worker_id`` holds on the run.

        RunNotFound if there is no such run; Conflict if the worker no longer owns it.
        """
        expires = utcnow() + timedelta(seconds=lease_seconds)
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.lease_owner == worker_id)
            .values(lease_expires_at=expires)
            .returning(*runs.c)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
            exists = row is not None or (
                await conn.scalar(sa.select(runs.c.id).where(runs.c.id == run_id)) is not None
            )
        if row is not None:
            return from_row(row)
        if not exists:
            raise RunNotFound(f"run {run_id} not found")
        raise Conflict(f"worker {worker_id} no longer holds the lease on run {run_id}")

    async def release_lease(self, run_id: str, worker_id: str) -> None:
        """Drop the lease if ``worker_id`` still holds it (otherwise do nothing)."""
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.lease_owner == worker_id)
            .values(lease_owner=None, lease_expires_at=None)
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)

    async def expired_leases(self, now: datetime | None = None, *, limit: int = 100) -> list[Run]:
        """Runs that have not ended and whose lease expired before ``now``, oldest expiry first."""
        now = check_aware(now, "now") or utcnow()
        stmt = (
            runs.select()
            .where(runs.c.lease_expires_at < now, runs.c.status.in_(_NOT_ENDED))
            .order_by(runs.c.lease_expires_at, runs.c.id)
            .limit(limit)
        )
        return await self._runs(stmt)

    async def idle_external_runs(self, before: datetime, *, limit: int = 100) -> list[Run]:
        """External runs not ended whose row has not changed since ``before``, oldest first."""
        before = check_aware(before, "before") or utcnow()
        stmt = (
            runs.select()
            .where(
                runs.c.external.is_(True),
                runs.c.status.in_(_NOT_ENDED),
                runs.c.updated_at < before,
            )
            .order_by(runs.c.updated_at, runs.c.id)
            .limit(limit)
        )
        return await self._runs(stmt)

    # -- writer leases (ownership.py) -------------------------------------------------

    async def acquire_writer(self, run_id: str, owner: str, lease_seconds: float) -> int | None:
        """Take the run's writer lease if it is free, expired or already ``owner``'s.

        Bumps the fencing epoch and returns it; None if another owner holds a
        live lease. RunNotFound if the run does not exist.
        """
        now = utcnow()
        free = sa.or_(
            runs.c.writer_owner.is_(None),
            runs.c.writer_expires_at < now,
            runs.c.writer_owner == owner,
        )
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, free)
            .values(
                writer_owner=owner,
                writer_epoch=runs.c.writer_epoch + 1,
                writer_expires_at=now + timedelta(seconds=lease_seconds),
            )
            .returning(runs.c.writer_epoch)
        )
        async with self._tx(write=True) as conn:
            epoch = await conn.scalar(stmt)
            if epoch is None and (
                await conn.scalar(sa.select(runs.c.id).where(runs.c.id == run_id)) is None
            ):
                raise RunNotFound(f"run {run_id} not found")
        return None if epoch is None else int(epoch)

    async def renew_writer(self, run_id: str, owner: str, epoch: int, lease_seconds: float) -> bool:
        """Extend a writer lease that is still ``(owner, epoch)``'s; False if it was taken.

        Expiry alone does not lose a lease: after a pause (a failover, a stalled
        loop) the owner keeps it unless someone else took it meanwhile.
        """
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.writer_owner == owner, runs.c.writer_epoch == epoch)
            .values(writer_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        )
        async with self._tx(write=True) as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)

    async def renew_writers(self, owner: str, lease_seconds: float) -> set[str]:
        """Extend every writer lease ``owner`` still holds, in one statement; their run ids."""
        stmt = (
            runs.update()
            .where(runs.c.writer_owner == owner)
            .values(writer_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            .returning(runs.c.id)
        )
        async with self._tx(write=True) as conn:
            return {str(r) for r in (await conn.execute(stmt)).scalars()}

    async def release_writer(self, run_id: str, owner: str, epoch: int) -> None:
        """Give the writer lease up if it is still ``(owner, epoch)``'s (the epoch stays)."""
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.writer_owner == owner, runs.c.writer_epoch == epoch)
            .values(writer_owner=None, writer_expires_at=None)
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)

    async def writer_of(self, run_id: str) -> tuple[str | None, int, datetime | None]:
        """``(owner, epoch, expires_at)`` of the run's writer lease (tests, the repair loop)."""
        stmt = sa.select(runs.c.writer_owner, runs.c.writer_epoch, runs.c.writer_expires_at).where(
            runs.c.id == run_id
        )
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise RunNotFound(f"run {run_id} not found")
        expires = row[2]
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return row[0], int(row[1]), expires

    async def finish_owned(
        self, run_id: str, owner: str, epoch: int, *, expect: Collection[RunStatus], **fields: Any
    ) -> Run:
        """``update_run`` fenced by the writer lease: only ``(owner, epoch)`` may finish the row.

        WriterFenced if the lease moved on; otherwise as ``update_run``.
        """
        held = sa.and_(runs.c.writer_owner == owner, runs.c.writer_epoch == epoch)
        return await self.update_run(run_id, expect=expect, where=held, **fields)

    # -- ingest idempotency -------------------------------------------------------------

    async def get_idempotency(self, run_id: str, key: str) -> IdempotencyRecord | None:
        """What is stored for ``key`` on the run, or None."""
        stmt = sa.select(
            ingest_keys.c.answer, ingest_keys.c.body_sha256, ingest_keys.c.first_event_id
        ).where(ingest_keys.c.run_id == run_id, ingest_keys.c.key == scrub(key))
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        return IdempotencyRecord(dict(row[0]), row[1], row[2])

    async def put_idempotency(
        self,
        run_id: str,
        key: str,
        answer: dict[str, Any],
        *,
        body_sha256: str | None = None,
        first_event_id: str | None = None,
    ) -> None:
        """Remember ``answer`` for ``key`` on the run, replacing a stale record.

        InvalidInput for an empty or over-long key; RunNotFound if the run does not exist.
        """
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        values = {
            "answer": scrub(answer),
            "created_at": utcnow(),
            "body_sha256": body_sha256,
            "first_event_id": first_event_id,
        }
        stmt = insert(ingest_keys).values(run_id=run_id, key=scrub(key), **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[ingest_keys.c.run_id, ingest_keys.c.key], set_=values
        )
        try:
            async with self._tx(write=True) as conn:
                await conn.execute(stmt)
        except Conflict as exc:
            # the primary key cannot clash (DO UPDATE): only the run's foreign key can
            raise RunNotFound(f"run {run_id} not found") from exc

    async def delete_idempotency(self, run_id: str, key: str | None = None) -> int:
        """Forget ``key`` on the run (every key with None); returns how many were dropped."""
        stmt = sa.delete(ingest_keys).where(ingest_keys.c.run_id == run_id)
        if key is not None:
            stmt = stmt.where(ingest_keys.c.key == scrub(key))
        async with self._tx(write=True) as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount or 0)

    async def prune_idempotency(self, before: datetime) -> int:
        """Drop the keys of runs compacted or expired that ended before ``before``."""
        old = sa.select(runs.c.id).where(
            runs.c.log_state.in_(_values({LogState.COMPRESSED, LogState.EXPIRED})),
            runs.c.completed_at < check_aware(before, "before"),
        )
        stmt = sa.delete(ingest_keys).where(ingest_keys.c.run_id.in_(old))
        async with self._tx(write=True) as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount or 0)

    async def live_runs(self, *, limit: int = 1000, after_id: str | None = None) -> list[Run]:
        """Runs whose log is still ``live`` (ended or not), by id: the repair loop's work list."""
        where: list[sa.ColumnElement[bool]] = [runs.c.log_state == LogState.LIVE.value]
        if after_id is not None:
            where.append(runs.c.id > after_id)
        return await self._runs(runs.select().where(*where).order_by(runs.c.id).limit(limit))

    async def count_idempotency(self, run_id: str | None = None) -> int:
        """How many keys are stored (for one run, or all): tests and the bench."""
        stmt = sa.select(sa.func.count()).select_from(ingest_keys)
        if run_id is not None:
            stmt = stmt.where(ingest_keys.c.run_id == run_id)
        async with self._tx() as conn:
            return int(await conn.scalar(stmt) or 0)

    # -- deployment keys and run masks ---------------------------------------------------

    async def server_key(self, name: str, candidate: str) -> str:
        """The deployment's key ``name``, created as ``candidate`` if there is none yet.

        Race-safe on both backends: of processes starting at once, the first
        INSERT wins and every process reads the winner's value (``ON CONFLICT DO
        NOTHING``, then SELECT in the same transaction; on Postgres the second
        INSERT waits for the first to commit, and READ COMMITTED shows the
        SELECT the committed row).
        """
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt = (
            insert(server_keys)
            .values(name=name, value=candidate, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=[server_keys.c.name])
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)
            value = await conn.scalar(
                sa.select(server_keys.c.value).where(server_keys.c.name == name)
            )
        if not isinstance(value, str):  # pragma: no cover - the row was just written
            raise DatabaseError(f"server key {name!r} could not be created")
        return value

    async def run_masks(self, run_id: str) -> list[str]:
        """The sealed ``::add-mask::`` values stored for the run, oldest first."""
        stmt = (
            sa.select(run_masks.c.sealed)
            .where(run_masks.c.run_id == run_id)
            .order_by(run_masks.c.created_at, run_masks.c.digest)
        )
        async with self._tx() as conn:
            return [str(v) for v in (await conn.scalars(stmt)).all()]

    async def add_run_masks(self, run_id: str, masks: Collection[tuple[str, str]]) -> None:
        """Store ``(digest, sealed)`` masks of the run; a digest already stored is kept."""
        if not masks:
            return
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        now = utcnow()
        stmt = (
            insert(run_masks)
            .values(
                [
                    {"run_id": run_id, "digest": digest, "sealed": sealed, "created_at": now}
                    for digest, sealed in masks
                ]
            )
            .on_conflict_do_nothing(index_elements=[run_masks.c.run_id, run_masks.c.digest])
        )
        try:
            async with self._tx(write=True) as conn:
                await conn.execute(stmt)
        except Conflict as exc:
            # the primary key cannot clash (DO NOTHING): only the run's foreign key can
            raise RunNotFound(f"run {run_id} not found") from exc

    # -- maintenance -----------------------------------------------------------------

    async def runs_ended_before(
        self,
        cutoff: datetime,
        *,
        log_states: Collection[LogState],
        limit: int,
        after_id: str | None = None,
    ) -> list[Run]:
        """Ended runs with ``completed_at < cutoff`` and a log in one of ``log_states``.

        In id order, at most ``limit``, after ``after_id`` (pass the last id of
        the previous page). Runs that have not ended are never returned.
        """
        where = [
            runs.c.status.in_(_ENDED),
            runs.c.completed_at < check_aware(cutoff, "cutoff"),
            runs.c.log_state.in_(_values(log_states)),
        ]
        if after_id is not None:
            where.append(runs.c.id > after_id)
        return await self._runs(runs.select().where(*where).order_by(runs.c.id).limit(limit))

    async def runs_with_log_states(
        self,
        log_states: Collection[LogState],
        *,
        ended: bool | None = None,
        limit: int,
        after_id: str | None = None,
    ) -> list[Run]:
        """Runs whose log is in one of ``log_states`` (optionally only ended / not ended), by id.

        E.g. ended runs still ``live`` after a crash, which need sealing.
        """
        where: list[sa.ColumnElement[bool]] = [runs.c.log_state.in_(_values(log_states))]
        if ended is not None:
            where.append(runs.c.status.in_(_ENDED if ended else _NOT_ENDED))
        if after_id is not None:
            where.append(runs.c.id > after_id)
        return await self._runs(runs.select().where(*where).order_by(runs.c.id).limit(limit))

    async def runs_beyond_per_configuration(
        self,
        keep: int,
        *,
        log_states: Collection[LogState],
        limit: int,
        after_id: str | None = None,
    ) -> list[Run]:
        """Ended runs with a log in ``log_states`` that are not among the ``keep`` newest
        such runs of their (workspace, configuration); in id order, paged by ``after_id``.
        """
        if keep < 0:
            raise InvalidInput("keep must be >= 0")
        rank = (
            sa.func.row_number()
            .over(
                partition_by=(runs.c.workspace_id, runs.c.configuration_id),
                order_by=NEWEST_FIRST,
            )
            .label("rank")
        )
        ranked = (
            sa.select(runs.c.id, rank)
            .where(runs.c.status.in_(_ENDED), runs.c.log_state.in_(_values(log_states)))
            .subquery()
        )
        where = [ranked.c.rank > keep]
        if after_id is not None:
            where.append(ranked.c.id > after_id)
        stmt = (
            runs.select()
            .join(ranked, ranked.c.id == runs.c.id)
            .where(*where)
            .order_by(runs.c.id)
            .limit(limit)
        )
        return await self._runs(stmt)

    async def ended_runs_by_age(
        self,
        *,
        log_states: Collection[LogState],
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[Run]:
        """Ended runs with a log in ``log_states``, oldest ``(completed_at, id)`` first.

        For a total-bytes cap: delete from the oldest until under it. ``after`` is
        the ``(completed_at, id)`` of the last run of the previous page.
        """
        where: list[sa.ColumnElement[bool]] = [
            runs.c.status.in_(_ENDED),
            runs.c.log_state.in_(_values(log_states)),
            runs.c.completed_at.is_not(None),
        ]
        if after is not None:
            stamp = check_aware(after[0], "after")
            where.append(sa.tuple_(runs.c.completed_at, runs.c.id) > (stamp, after[1]))
        stmt = runs.select().where(*where).order_by(runs.c.completed_at, runs.c.id).limit(limit)
        return await self._runs(stmt)

    async def log_bytes_total(self, log_states: Collection[LogState]) -> int:
        """Sum of ``events_bytes`` over runs whose log is in one of ``log_states``."""
        stmt = sa.select(sa.func.coalesce(sa.func.sum(runs.c.events_bytes), 0)).where(
            runs.c.log_state.in_(_values(log_states))
        )
        async with self._tx() as conn:
            return int(await conn.scalar(stmt) or 0)

    async def database_size_bytes(self) -> int | None:
        """Bytes the database uses on disk (whole database), or None if unknown."""
        async with self._tx() as conn:
            if self._db.dialect == "postgresql":
                size = await conn.scalar(sa.text("SELECT pg_database_size(current_database())"))
            else:
                pages = await conn.scalar(sa.text("PRAGMA page_count"))
                page_size = await conn.scalar(sa.text("PRAGMA page_size"))
                size = None if pages is None or page_size is None else pages * page_size
        return None if size is None else int(size)

    async def runs_table_bytes(self) -> int | None:
        """Bytes of the runs table and its indexes (Postgres), or None where not measurable."""
        if self._db.dialect != "postgresql":
            return None
        async with self._tx() as conn:
            size = await conn.scalar(sa.text("SELECT pg_total_relation_size('runs')"))
        return None if size is None else int(size)

    async def _runs(self, stmt: sa.Select[Any]) -> list[Run]:
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [from_row(row) for row in rows]
