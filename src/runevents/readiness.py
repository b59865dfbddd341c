"""Readiness: do the database and the log store answer right now?

``GET /api/v1/health`` says the process is alive; readiness is what a load
balancer asks before sending traffic. Each dependency gets one cheap round
trip, both at once, each bounded by a timeout so a hung database makes the
check fail fast instead of hanging the probe:

* database: ``SELECT 1`` through the pool (a connection the pool holds to a
  stopped Postgres fails its pre-ping and the reconnect is refused);
* log store: ``stat`` of a key that does not exist -- "not found" is an
  answer (an S3 HEAD that got a 404 reached the bucket); a failure to reach
  the backend is ``StorageError``. For the local disk the data root must also
  exist, since a missing mount also answers "not found".
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from runevents.db.engine import Database, describe_error
from runevents.db.stats import ping
from runevents.exceptions import LogNotFound
from runevents.logstore.base import LogStore

#: the key stat-ed to see whether the log store answers (never written)
PROBE_KEY = "runevents-ready-probe"
OK = "ok"


async def _bounded(name: str, check: asyncio.Future[None], timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            await check
    except TimeoutError:
        return f"{name} did not answer within {timeout:g} s"
    except Exception as exc:
        return f"{name} failed: {describe_error(exc)}"
    return OK


async def _probe_store(store: LogStore) -> None:
    local = store.local_path(PROBE_KEY)
    if local is not None and not Path(local).parent.is_dir():
        raise FileNotFoundError(f"the log directory {Path(local).parent} does not exist")
    with contextlib.suppress(LogNotFound):
        await store.stat(PROBE_KEY)


async def check(database: Database, store: LogStore, *, timeout: float) -> dict[str, str]:
    """``{"database": "ok" | reason, "log_store": "ok" | reason}``."""
    database_state, store_state = await asyncio.gather(
        _bounded("the database", asyncio.ensure_future(ping(database)), timeout),
        _bounded("the log store", asyncio.ensure_future(_probe_store(store)), timeout),
    )
    return {"database": database_state, "log_store": store_state}
