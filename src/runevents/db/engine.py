"""Database URLs, the async engine and start-up migrations.

Users write the standard URL forms (contract section 8):
``postgresql://user:password@host:5432/dbname`` or ``sqlite:///path/to/file.db``.
:func:`to_sqlalchemy_url` maps them onto the async drivers (asyncpg, aiosqlite);
:func:`open_database` builds the engine and brings the schema to the Alembic
head, as "the server creates or migrates its schema at start-up".

SQLite is shared by several processes (a server and a standalone worker), so
every connection runs in WAL mode with a busy timeout, and write transactions
start with ``BEGIN IMMEDIATE``: the write lock is taken up front and waited for
(busy timeout), instead of a read transaction failing at once with
``SQLITE_BUSY`` when it later tries to upgrade to a write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from runevents.exceptions import ConfigError, Conflict, DatabaseError, InvalidInput

Dialect = Literal["sqlite", "postgresql"]

#: how long a SQLite connection waits for another process's write lock (ms)
SQLITE_BUSY_TIMEOUT_MS = 5000
#: execution option that makes a SQLite transaction start with BEGIN IMMEDIATE
WRITE_OPTION = "runevents_write"
#: Postgres advisory lock key that serializes concurrent start-up migrations
_MIGRATION_LOCK_KEY = 0x52554E45  # "RUNE"
_MIGRATIONS = str(Path(__file__).resolve().parent / "migrations")

_SCHEMES: dict[str, str] = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(
            "invalid database URL: use postgresql://user:password@host:5432/dbname "
            "or sqlite:///path/to/file.db"
        ) from exc


def to_sqlalchemy_url(url: str) -> str:
    """Map a user's database URL onto the async driver SQLAlchemy should use.

    ``postgresql://`` (or ``postgres://``) becomes ``postgresql+asyncpg://`` and
    ``sqlite:///file`` becomes ``sqlite+aiosqlite:///file``; URLs that already
    name those drivers pass through. libpq's ``sslmode=`` is renamed to asyncpg's
    ``ssl=``. In-memory SQLite is refused (every pooled connection would see its
    own empty database), as is any other scheme: :class:`ConfigError`.
    """
    parsed = _parse(url)
    driver = _SCHEMES.get(parsed.drivername)
    if driver is None:
        raise ConfigError(
            f"unsupported database URL scheme {parsed.drivername!r}: "
            "use postgresql://user:password@host:5432/dbname or sqlite:///path/to/file.db"
        )
    parsed = parsed.set(drivername=driver)
    if driver.startswith("sqlite"):
        if not parsed.database or parsed.database == ":memory:" or parsed.host:
            raise ConfigError(
                "a SQLite database URL needs a file path: sqlite:///relative/file.db "
                "or sqlite:////absolute/file.db (in-memory databases are not supported)"
            )
    elif "sslmode" in parsed.query:
        query = dict(parsed.query)
        query["ssl"] = query.pop("sslmode")
        parsed = parsed.set(query=query)
    return parsed.render_as_string(hide_password=False)


def _dialect_of(url: URL) -> Dialect:
    return "sqlite" if url.get_backend_name() == "sqlite" else "postgresql"


@dataclasses.dataclass(eq=False)
class Database:
    """An open database: the async engine and what kind of database it is."""

    #: the SQLAlchemy URL (async driver) the engine was built from, password included
    url: str = dataclasses.field(repr=False)
    engine: AsyncEngine
    dialect: Dialect

    @property
    def display_url(self) -> str:
        """The URL with its password masked, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    async def close(self) -> None:
        """Close every pooled connection. The object must not be used afterwards."""
        await self.engine.dispose()

    async def current_revision(self) -> str | None:
        """The Alembic revision the database is at (None for an empty database)."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    async def migrate(self) -> None:
        """Bring the schema to the Alembic head (idempotent; safe from several processes)."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**{WRITE_OPTION: True})
            async with conn.begin():
                if self.dialect == "postgresql":
                    # Two processes starting together must not both create the tables.
                    await conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": _MIGRATION_LOCK_KEY},
                    )
                await conn.run_sync(_upgrade_head)

    async def check_schema(self) -> None:
        """Raise ConfigError unless the schema is at the Alembic head."""
        current, head = await self.current_revision(), head_revision()
        if current != head:
            raise ConfigError(
                f"the database schema is at revision {current!r}, this runevents needs {head!r}; "
                "start it with migrations enabled to upgrade"
            )


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a driver error: the driver's own message, without the SQL
    text and parameters SQLAlchemy appends (those may hold user data)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def alembic_config() -> Config:
    """An Alembic config for the bundled migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", _MIGRATIONS)
    return config


@functools.cache
def head_revision() -> str | None:
    """The newest revision of the bundled migrations (read once per process)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current_revision(sync_conn: sa.Connection) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


def _upgrade_head(sync_conn: sa.Connection) -> None:
    if _current_revision(sync_conn) == head_revision():
        return  # the usual start-up: nothing to do, skip loading Alembic's machinery
    config = alembic_config()
    # env.py uses this connection (and its open transaction) instead of making its own
    config.attributes["connection"] = sync_conn
    command.upgrade(config, "head")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the driver so that BEGIN is ours
    # (see _sqlite_begin); pragmas are per connection, so set them on each one.
    # (journal_mode=WAL is persistent in the file and set once by _ensure_wal: switching
    # modes can fail at once with "database is locked" instead of waiting)
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # WAL + NORMAL: a commit is durable after the next checkpoint, never corrupt
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


async def _ensure_wal(engine: AsyncEngine) -> None:
    """Put the SQLite file in WAL mode (readers never block the writer, and vice versa).

    Several processes may open a new file at once; the mode switch then fails
    with "database is locked" without waiting, so it is retried here.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        # the driver connection, outside any transaction (journal_mode cannot change in one)
        driver = raw.driver_connection
        assert driver is not None
        while True:
            try:
                cursor = await driver.execute("PRAGMA journal_mode=WAL")
                row = await cursor.fetchone()
                await cursor.close()
                mode = str(row[0]).lower() if row else ""
            except Exception as exc:  # aiosqlite raises sqlite3 errors
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise sa.exc.OperationalError("PRAGMA journal_mode=WAL", None, exc) from exc
                await asyncio.sleep(0.05)
                continue
            if mode != "wal":
                raise ConfigError(f"cannot put the SQLite database in WAL mode (got {mode!r})")
            return


def _sqlite_begin(conn: sa.Connection) -> None:
    if conn.get_execution_options().get(WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


#: a Postgres statement with no answer for this long fails (DatabaseError, 503): a
#: network that drops packets leaves an open connection waiting for ever otherwise
COMMAND_TIMEOUT_SECONDS = 30.0
#: Postgres ends a session of ours that sits in an open transaction this long without a
#: statement (``idle_in_transaction_session_timeout``). Our transactions run their
#: statements back to back; one idle for seconds belongs to a process that is frozen
#: (SIGSTOP, a hung VM) or stalled, and its row locks would block every other process
#: until it woke -- a frozen replica stopped the others from taking over the runs whose
#: rows it had locked. Below the writer lease (8 s): a frozen owner's locks are gone
#: before its lease can be taken over.
IDLE_IN_TRANSACTION_MS = 5000


def create_engine(url: str, *, command_timeout: float = COMMAND_TIMEOUT_SECONDS) -> Database:
    """Build the engine for a user's database URL, without touching the database."""
    sa_url = make_url(to_sqlalchemy_url(url))
    dialect = _dialect_of(sa_url)
    if dialect == "sqlite":
        assert sa_url.database is not None  # checked by to_sqlalchemy_url
        directory = Path(sa_url.database).expanduser().parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the SQLite database directory {directory}: {exc}"
            ) from exc
        engine = create_async_engine(sa_url, pool_size=8, max_overflow=8, pool_timeout=30)
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    else:
        engine = create_async_engine(
            sa_url,
            pool_size=10,
            max_overflow=10,
            pool_timeout=30,
            # a restarted Postgres must not leave dead connections in the pool
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={
                "timeout": 10,
                "command_timeout": command_timeout,
                "server_settings": {
                    "application_name": "runevents",
                    "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
                },
            },
        )
    rendered = sa_url.render_as_string(hide_password=False)
    return Database(url=rendered, engine=engine, dialect=dialect)


async def open_database(
    url: str, *, migrate: bool = True, command_timeout: float = COMMAND_TIMEOUT_SECONDS
) -> Database:
    """Open the database at ``url`` and (by default) migrate it to the current schema.

    With ``migrate=False`` the schema must already be current (ConfigError otherwise).
    Raises ConfigError for a bad URL and DatabaseError when the database cannot be
    reached.
    """
    database = create_engine(url, command_timeout=command_timeout)
    try:
        if database.dialect == "sqlite":
            await _ensure_wal(database.engine)
        if migrate:
            await database.migrate()
        else:
            await database.check_schema()
    except (sa.exc.DBAPIError, OSError, TimeoutError) as exc:
        await database.close()
        reason = describe_error(exc)
        raise DatabaseError(f"cannot open database {database.display_url}: {reason}") from exc
    except CommandError as exc:
        # e.g. the database was migrated by a newer runevents than this one
        await database.close()
        raise ConfigError(f"cannot migrate database {database.display_url}: {exc}") from exc
    except BaseException:
        await database.close()
        raise
    return database


@asynccontextmanager
async def transaction(database: Database, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction; driver errors become runevents errors.

    Reads are single statements: on Postgres they run in autocommit, which
    saves the BEGIN and COMMIT round trips (a statement is atomic anyway).
    Every repository of ``db/`` opens its transactions here.
    """
    try:
        async with database.engine.connect() as conn:
            if write:
                conn = await conn.execution_options(**{WRITE_OPTION: True})
            elif database.dialect == "postgresql":
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            async with conn.begin():
                yield conn
    except sa.exc.IntegrityError as exc:
        raise Conflict(f"conflicting row ({describe_error(exc)})") from exc
    except sa.exc.DataError as exc:
        raise InvalidInput(f"value not accepted by the database ({describe_error(exc)})") from exc
    except (sa.exc.DBAPIError, sa.exc.TimeoutError, OSError, TimeoutError) as exc:
        raise DatabaseError(f"the database failed ({describe_error(exc)})") from exc
