"""The run index's one entry point: :class:`RunRepository`, every SQL statement on runs.

(The replica registry, the live tier's chunks and the maintenance locks have
repositories of their own beside it; nothing outside ``runevents.db`` talks to
the database.)

Callers hold one ``RunRepository``; its statements are split by concept into
mixins, one module each, sharing the database and its transactions
(``base.py``):

- ``run_rows.py``: one run's row -- insert, get, conditional update, upsert;
- ``listing.py``: the runs list, its EXPLAIN, workspaces and counts;
- ``worker_leases.py``: which worker executes a queued run;
- ``writer_leases.py``: who may write a run's log (``ownership.py``);
- ``idempotency.py``: the stored answers of ingest ``Idempotency-Key`` s;
- ``server_keys.py`` and ``run_masks.py``: deployment keys, sealed run masks;
- ``maintenance_queries.py``: the runs retention, compaction and repair visit;
- ``log_deletions.py``: expiring a run, and the expired bodies waiting to be deleted;
- ``sessions.py``: browser sessions signed out before their cookie expired.

Concurrency guarantees the manager and worker rely on:

- :meth:`RunRepository.update_run` is one conditional ``UPDATE ... RETURNING``;
  of two concurrent completions guarded by ``expect`` exactly one matches.
- :meth:`RunRepository.claim_queued` never hands one run to two workers
  (Postgres: ``FOR UPDATE SKIP LOCKED``; SQLite: one ``UPDATE`` under
  ``BEGIN IMMEDIATE``, writers are serialized).
"""

from __future__ import annotations

from runevents.db.idempotency import IdempotencyKeys, IdempotencyRecord
from runevents.db.listing import RunListing
from runevents.db.log_deletions import LogDeletions
from runevents.db.maintenance_queries import MaintenanceQueries
from runevents.db.run_masks import RunMasks
from runevents.db.run_rows import RunRows
from runevents.db.server_keys import ServerKeys
from runevents.db.sessions import Sessions
from runevents.db.worker_leases import WorkerLeases
from runevents.db.writer_leases import WriterLeases

# IdempotencyRecord is what get_idempotency returns: its callers name it from here
__all__ = ["IdempotencyRecord", "RunRepository"]


class RunRepository(
    RunRows,
    RunListing,
    WorkerLeases,
    WriterLeases,
    IdempotencyKeys,
    ServerKeys,
    RunMasks,
    MaintenanceQueries,
    LogDeletions,
    Sessions,
):
    """The ``runs`` table and the tables that hang off a run, one short transaction per call."""
