"""A process frozen inside a transaction must not block every other process's writes.

A replica stopped with SIGSTOP (or a hung VM) in the middle of a transaction
keeps its Postgres session open: the backend waits for the next statement,
and the row locks it holds stay. Every other process that writes those rows
-- taking over the frozen owner's runs, reaping its leases -- then waited
until it woke (an outside probe saw a replica frozen for 12 s hold a
transaction open all that time). Our sessions now carry
``idle_in_transaction_session_timeout``: Postgres ends the frozen one and
its locks go with it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from runevents.db import RunRepository, open_database
from runevents.db.engine import IDLE_IN_TRANSACTION_MS
from tests.fixtures.db import new_run

pytestmark = pytest.mark.postgres

#: a process of ours that takes the run's row lock in a transaction, says so, and then
#: would commit only much later (it is frozen before it can)
_HOLDER = """
import asyncio, sys
import sqlalchemy as sa
from runevents.db.engine import create_engine

async def main():
    database = create_engine(sys.argv[1])
    async with database.engine.connect() as conn:
        await conn.execute(
            sa.text("SELECT id FROM runs WHERE id = :id FOR UPDATE"), {"id": sys.argv[2]}
        )
        print("locked", flush=True)
        await asyncio.sleep(120)

asyncio.run(main())
"""


async def test_a_frozen_process_holding_a_transaction_blocked_other_processes_writes(
    pg_database_url: str,
) -> None:
    """Before: the update waited for the frozen holder (until the client's 30 s command
    timeout, 503). Now Postgres ends the holder's session after
    ``IDLE_IN_TRANSACTION_MS`` and the update goes through."""
    database = await open_database(pg_database_url)
    holder = None
    try:
        repo = RunRepository(database)
        run = new_run()
        await repo.insert_run(run)
        holder = subprocess.Popen(  # noqa: ASYNC220  (it must hold the lock while we write)
            [sys.executable, "-c", _HOLDER, pg_database_url, run.id],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert holder.stdout is not None
        assert await asyncio.to_thread(holder.stdout.readline) == "locked\n"
        holder.send_signal(signal.SIGSTOP)  # frozen with the row locked
        started = time.monotonic()
        updated = await asyncio.wait_for(
            repo.update_run(run.id, cancel_requested=True),
            timeout=IDLE_IN_TRANSACTION_MS / 1000 + 8,
        )
        assert updated.cancel_requested
        # it waited for the holder's session to be ended, not for the holder to wake
        assert time.monotonic() - started >= IDLE_IN_TRANSACTION_MS / 1000 - 1.5
    finally:
        if holder is not None:
            holder.kill()  # (SIGKILL reaches a stopped process too)
            holder.wait()
        await database.close()
