"""Alembic environment for runevents.

At run time migrations run programmatically (``runevents.db.engine``), which
hands over an open connection in ``config.attributes["connection"]``. For a
developer generating a revision with the ``alembic`` command line, the URL comes
from ``-x url=...`` (user form, e.g. ``sqlite:///dev.db``).
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from runevents.db.engine import to_sqlalchemy_url
from runevents.db.tables import metadata

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: let autogenerate emit batch operations
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    engine = create_async_engine(to_sqlalchemy_url(url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


def main() -> None:
    """Run the migrations on the given connection, or on ``-x url=...``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database with: alembic -x url=sqlite:///file.db ...")
    asyncio.run(_run_standalone(url))


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
main()
