"""Alembic migrations: head equals ``tables.metadata``; upgrades on empty SQLite and Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import runevents.db
from runevents.db.engine import alembic_config, create_engine, head_revision, open_database
from runevents.db.tables import metadata
from runevents.exceptions import ConfigError
from tests.fixtures.db import BACKENDS, admin_execute, pg_url, run_in_thread, unique_db_name


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A user-form URL of an empty database (no tables at all)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh' / 'runevents.db'}"
        return
    request.getfixturevalue("postgres_available")
    name = unique_db_name("empty")
    run_in_thread(lambda: admin_execute(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_url(name)
    finally:
        run_in_thread(lambda: admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _diff(sync_conn: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _indexes(sync_conn: sa.Connection) -> dict[str, list[str | None]]:
    inspector = sa.inspect(sync_conn)
    found: dict[str, list[str | None]] = {}
    for table in ("runs", "ingest_keys", "log_deletions", "revoked_sessions"):
        for index in inspector.get_indexes(table):
            assert index["name"] is not None
            found[index["name"]] = list(index["column_names"])
    return found


def _tables(sync_conn: sa.Connection) -> set[str]:
    return set(sa.inspect(sync_conn).get_table_names())


async def test_upgrade_on_an_empty_database_reaches_head_and_matches_the_models(
    empty_url: str,
) -> None:
    database = await open_database(empty_url)
    try:
        assert await database.current_revision() == head_revision()
        async with database.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            assert await conn.run_sync(_tables) == {
                "runs",
                "ingest_keys",
                "server_keys",
                "run_masks",
                "live_chunks",
                "replicas",
                "log_deletions",
                "revoked_sessions",
                "alembic_version",
            }
            indexes = await conn.run_sync(_indexes)
    finally:
        await database.close()
    expected = {
        index.name
        for table in metadata.sorted_tables
        for index in table.indexes
        if index.name is not None
    }
    assert expected <= set(indexes)


async def test_reopening_a_migrated_database_changes_nothing(empty_url: str) -> None:
    first = await open_database(empty_url)
    await first.close()
    again = await open_database(empty_url)
    try:
        assert await again.current_revision() == head_revision()
    finally:
        await again.close()
    checked = await open_database(empty_url, migrate=False)
    await checked.close()


async def test_concurrent_start_ups_migrate_once(empty_url: str) -> None:
    """A server and a worker starting together on a new database both come up."""
    databases = await asyncio.gather(*(open_database(empty_url) for _ in range(3)))
    try:
        for database in databases:
            assert await database.current_revision() == head_revision()
    finally:
        for database in databases:
            await database.close()


async def test_an_unmigrated_database_is_refused_without_migrate(empty_url: str) -> None:
    with pytest.raises(ConfigError, match="schema is at revision None"):
        await open_database(empty_url, migrate=False)


async def test_downgrade_to_base_and_upgrade_again(empty_url: str) -> None:
    database = await open_database(empty_url)

    def cycle(sync_conn: sa.Connection) -> tuple[set[str], set[str]]:
        config = alembic_config()
        config.attributes["connection"] = sync_conn
        command.downgrade(config, "base")
        after_down = _tables(sync_conn)
        command.upgrade(config, "head")
        return after_down, _tables(sync_conn)

    try:
        async with database.engine.begin() as conn:
            down, up = await conn.run_sync(cycle)
    finally:
        await database.close()
    assert down == {"alembic_version"}
    assert up == {
        "runs",
        "ingest_keys",
        "server_keys",
        "run_masks",
        "live_chunks",
        "replicas",
        "log_deletions",
        "revoked_sessions",
        "alembic_version",
    }


def test_every_revision_has_a_downgrade_and_one_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1
    for revision in script.walk_revisions():
        assert revision.module.downgrade.__doc__, revision.revision


def test_migrations_ship_inside_the_package() -> None:
    """The wheel includes everything under src/runevents: the migrations must live there."""
    package = Path(runevents.db.__file__).parent
    location = Path(alembic_config().get_main_option("script_location") or "")
    assert location == package / "migrations"
    assert (location / "env.py").is_file()
    assert (location / "script.py.mako").is_file()
    assert list((location / "versions").glob("0001_*.py"))


async def test_unreachable_database_is_a_database_error(tmp_path: Path) -> None:
    from runevents.exceptions import DatabaseError

    with pytest.raises(DatabaseError, match="cannot open database"):
        await open_database("postgresql://nobody:secret@127.0.0.1:1/none")
    # a SQLite path whose parent is a file cannot be created
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot create the SQLite database directory"):
        await open_database(f"sqlite:///{blocker / 'db.sqlite'}")


async def test_connection_errors_do_not_show_the_password() -> None:
    from runevents.exceptions import DatabaseError

    with pytest.raises(DatabaseError) as caught:
        await open_database("postgresql://nobody:s3cret-pw@127.0.0.1:1/none")
    assert "s3cret-pw" not in str(caught.value)
    assert "***" in str(caught.value)


def test_create_engine_makes_the_sqlite_parent_directory(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "runevents.db"
    database = create_engine(f"sqlite:///{target}")
    assert target.parent.is_dir()
    assert database.dialect == "sqlite"
    asyncio.run(database.close())


async def test_a_database_from_a_newer_runevents_is_refused(empty_url: str) -> None:
    database = await open_database(empty_url)
    try:
        async with database.engine.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        await database.close()
    with pytest.raises(ConfigError, match="9999"):
        await open_database(empty_url)
    with pytest.raises(ConfigError, match="schema is at revision '9999'"):
        await open_database(empty_url, migrate=False)
