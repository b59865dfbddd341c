"""Run upkeep: the per-run steps of recovery and maintenance.

Part of :class:`runevents.manager.RunManager` (it inherits this mixin), kept
in its own module because these steps share one concern -- bringing a run's
row and its log back in line after time or failure: finishing runs whose
worker died, finishing completions a crash cut short, compacting and
expiring logs, and rebuilding rows from logs (``reindex.py``, its base). Every step that
writes or seals a log takes it through ``self.held`` (file lock, then writer
lease). The maintenance steps (compact, expire, reindex) first take the run's
maintenance lock (``db/runlocks.py``: a Postgres advisory lock, so one process
of the whole deployment at a time) and raise MaintenanceBusy when another
process has it; the policy counts that run as skipped. The policies that
choose *which* runs live in ``maintenance.py`` and ``repair.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from runevents import ids, metrics
from runevents.compaction_journal import CompactionJournal
from runevents.db.log_deletions import QueuedDeletion
from runevents.eventlog import EventLog, RunRef
from runevents.events import EventDraft
from runevents.exceptions import (
    InvalidInput,
    LogNotFound,
    MaintenanceBusy,
    RunNotFound,
    StorageError,
    WriterFenced,
    WriterMoving,
)
from runevents.held import LIVE_STATUSES, HeldRun, run_ref
from runevents.held_runs import HeldRuns
from runevents.models import LogState, Run, parse_timestamp, utcnow
from runevents.reindex import RunReindex, failed_completion

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from runevents.db.repository import RunRepository
    from runevents.db.runlocks import RunLocks
    from runevents.settings import Settings

__all__ = [
    "IDEMPOTENCY_KEEP",
    "LIVE_STATUSES",
    "RunUpkeep",
    "parse_timestamp",
    "reap_interval",
    "run_ref",
]

#: a retried batch of an ended run gets its first answer for at least this long (contract 6)
IDEMPOTENCY_KEEP = timedelta(hours=24)


#: the longest pause between two lease reaper rounds (seconds): contract 10 ends a dead
#: worker's run ``worker_lost`` within ``lease_seconds`` + 10 s of the death
REAP_INTERVAL_MAX = 5.0


def reap_interval(lease_seconds: float) -> float:
    """How often a process runs the lease reaper: a third of the lease, at least a second,
    at most ``REAP_INTERVAL_MAX`` (a round after the expiry is then well within 10 s)."""
    return min(REAP_INTERVAL_MAX, max(1.0, lease_seconds / 3))


def _dir_names(root: Path) -> list[str]:
    try:
        with os.scandir(root) as entries:
            return sorted(entry.name for entry in entries if entry.is_dir())
    except FileNotFoundError:
        return []


class RunUpkeep(RunReindex):
    """Recovery and maintenance steps for one run (mixed into ``RunManager``); rebuilding
    a row from its log (``reindex_run``, ``reindex_log``) is its base, ``reindex.py``."""

    settings: Settings
    repo: RunRepository
    log: EventLog
    held: HeldRuns
    run_locks: RunLocks

    if TYPE_CHECKING:
        # provided by RunManager

        async def complete_held(self, held: HeldRun, draft: EventDraft) -> Run: ...

        def executes(self, run_id: str) -> bool: ...

    async def reap_expired_leases(self, reaper_id: str = "reaper") -> list[Run]:
        """Finish runs whose worker stopped heart-beating as failed, with the reason.

        A run is only reaped by a process that can *take its log* (the file
        lock, then the writer lease): a worker that is alive but paused --
        stopped, or its heartbeat stalled past the lease by a database
        failover -- still holds its lock, so nothing is taken from it and it
        goes on when it wakes up. Of several reapers, the writer lease lets
        exactly one act. A process never reaps the runs it executes itself
        (a worker's, or the app's reaper beside an in-process worker): waking
        from a pause, its reaper round may come before its heartbeat, and the
        lease it finds expired is its own, of a run it is still executing.

        Every process without an in-process worker (a replica started with
        ``--workers 0``) runs it too (``App``), every ``reap_interval``: any
        surviving process ends a dead worker's run (contract 10).
        """
        reaped: list[Run] = []
        for run in await self.repo.expired_leases():
            if run.lease_owner == reaper_id or self.executes(run.id):
                continue  # our own heartbeat is late, not lost
            expired = run.lease_expires_at.isoformat() if run.lease_expires_at else "unknown"
            try:
                finished = await self.fail_orphan(
                    run,
                    code="worker_lost",
                    message=f"worker {run.lease_owner} stopped heart-beating; "
                    f"its lease expired at {expired}",
                    expired_lease=True,
                )
            except StorageError:
                continue  # the next round tries again
            if finished is not None:
                reaped.append(finished)
                metrics.run_reaped()  # metrics hook
                # the dead worker's scratch directory, when it shared this data dir
                await self.remove_scratch_dir(run.id)
        return reaped

    def _scratch_root(self) -> Path:
        """Where this process's executor makes the runs' scratch directories
        (``<data-dir>/tmp/{run_id}``, ``executor.execute``)."""
        return self.settings.data_dir.resolve() / "tmp"

    async def remove_scratch_dir(self, run_id: str) -> None:
        """Remove run ``run_id``'s scratch directory in this data dir, if there is one
        (the executor removes it at the end of a run; a worker killed mid-run cannot)."""
        path = self._scratch_root() / ids.check_run_id(run_id)
        if await asyncio.to_thread(path.exists):
            await asyncio.to_thread(shutil.rmtree, path, True)

    async def remove_ended_scratch_dirs(self) -> int:
        """Remove the scratch directories of this data dir's runs that have ended (or
        have no row): left by a worker killed (kill -9) while it executed them, whose
        run another process finished ``worker_lost`` from another data dir. A live
        run's directory stays (a worker sharing the data dir may be executing it).
        Returns how many were removed (a worker calls it when it starts)."""
        removed = 0
        for name in await asyncio.to_thread(_dir_names, self._scratch_root()):
            try:
                ids.check_run_id(name)
            except InvalidInput:
                continue  # not a run's directory
            try:
                ended = (await self.repo.get_run(name)).status.ended
            except RunNotFound:
                ended = True
            if ended:
                await self.remove_scratch_dir(name)
                removed += 1
        return removed

    async def fail_orphan(
        self, run: Run, *, code: str, message: str, expired_lease: bool = False
    ) -> Run | None:
        """Finish a run whose executor or producer is gone as failed.

        Returns None if a live process still holds the run (it is not
        orphaned), or -- with ``expired_lease`` -- if its worker renewed the
        lease meanwhile.
        """
        async with self.held.lock(run.id):
            held = self.held.get(run.id)
            current = await self.repo.get_run(run.id)
            if current.status.ended:
                return None
            if expired_lease and (
                current.lease_expires_at is None or current.lease_expires_at > utcnow()
            ):
                return None  # its worker is back
            if held is None:
                try:
                    held = await self.held.take(current, source="server", atomic=True)
                except WriterMoving:
                    return None
                try:
                    ended = (await self.repo.get_run(run.id)).status.ended
                except BaseException:
                    await held.let_go(f"run {run.id}: its row could not be read", fenced=False)
                    raise
                if ended:
                    # another process (a reaper elsewhere) finished it between our read
                    # and our take: nothing to do, nothing to write
                    await held.let_go(f"run {run.id} was ended by another process", fenced=False)
                    return None
            if held.writer.ended:
                # the log already ends with run.completed: only the row lagged behind
                return await self.finish_from_log(held)
            try:
                return await self.complete_held(held, failed_completion(code, message))
            except WriterFenced as exc:
                await held.let_go(str(exc), fenced=True)  # another process has it now
                return None

    async def finish_from_log(self, held: HeldRun) -> Run:
        """Finish the row of a held run whose log already holds run.completed (COMPLETING)."""
        return await held.settle()

    async def seal_ended(self, run: Run) -> Run | None:
        """Seal the log of a run whose row ended while its log stayed ``live`` (a crash
        between the row and the seal, or the store was down). None if someone holds it."""
        async with self.held.lock(run.id):
            current = await self.repo.get_run(run.id)
            if current.log_state is not LogState.LIVE or not current.status.ended:
                return None
            try:
                held = self.held.get(run.id) or await self.held.take(
                    current, source="server", atomic=True
                )
            except WriterMoving:
                return None
            except LogNotFound:
                return None
            held.run = current
            return await held.seal()

    # ------------------------------------------------------------------ maintenance (per run)
    @contextlib.asynccontextmanager
    async def maintaining(self, run_id: str) -> AsyncIterator[None]:
        """Hold ``run_id``'s maintenance lock (every process of the deployment);
        MaintenanceBusy at once if another process holds it. Not reentrant."""
        async with self.run_locks.hold(run_id) as got:
            if not got:
                raise MaintenanceBusy(f"another process is maintaining run {run_id}")
            yield

    async def compact_run(self, run: Run) -> tuple[int, int] | None:
        """Compress an ended run's plain log; returns (bytes before, bytes after) or None.

        Crash-safe order: the compressed form is written and verified beside the
        plain log (``EventLog.compact``); a journal entry names the run; the row
        points at the compressed form; the plain log is deleted; the entry goes.
        A kill -9 at any step leaves a readable log (readers take the plain form
        while it exists) and a row that matches a form in storage; the next
        pass finishes from the journal what was left half done. None when the
        run is live or its log is no longer plain (another pass got there first).
        MaintenanceBusy when another process is maintaining the run.
        """
        async with self.maintaining(run.id):
            return await self._compact_run(run)

    async def _compact_run(self, run: Run) -> tuple[int, int] | None:

        # the caller's row may be a page old (and another process may have acted
        # since): act on the current one, read under the maintenance lock
        run = await self.repo.get_run(run.id)
        if not run.status.ended or run.log_state is not LogState.PLAIN:
            return None
        ref = run_ref(run)
        info = await self.log.compact(ref)
        journal = CompactionJournal(self.log)
        await asyncio.to_thread(journal.add, run.id)
        if not await self.repo.mark_compressed(
            run.id, events_path=info.events_path, events_bytes=info.bytes
        ):
            # retention expired the run after we read its row (SQLite has no
            # cross-process maintenance lock): its queued deletion takes every form,
            # the compressed one just written too
            journal.remove(run.id)
            return None
        try:
            await self.log.drop_plain(ref)
        except StorageError:
            # the same race one step later: retention expired and deleted every form
            if (await self.repo.get_run(run.id)).log_state is not LogState.EXPIRED:
                raise
            journal.remove(run.id)
            return None
        journal.remove(run.id)
        await self._drop_keys(run)
        return info.source_bytes, info.bytes

    async def expire_run(self, run: Run) -> int | None:
        """Expire an ended run's log body (retention); the row and summary stay.

        The row says ``expired`` and the body is queued for deletion in one
        transaction (``db/log_deletions.py``): new reads get 410 at once, and
        the body goes ``delete_delay_seconds`` later (``delete_due_bodies``), so
        a read that started before -- on any machine -- goes on to its end
        (contract 10: no read fails meanwhile). With no delay the body goes now.
        A crash anywhere leaves the entry, and the next sweep deletes the body.
        Returns the bytes freed, or None if the run is live or already expired.
        MaintenanceBusy when another process is maintaining the run.
        """
        async with self.maintaining(run.id):
            # (re-checked in the UPDATE: a pass on another machine may have expired or
            # compacted it since ``run`` was read, and it is counted once)
            expired = await self.repo.expire_log(run.id, utcnow())
            if expired is None:
                return None
            await self._drop_keys(expired)
            if self.settings.delete_delay_seconds == 0:
                await self._delete_body(run_ref(expired))
            return expired.events_bytes

    async def delete_due_bodies(self, *, now: datetime | None = None, limit: int = 100) -> int:
        """Delete the bodies expired ``delete_delay_seconds`` (this process's setting) or
        longer ago; how many went.

        ``now``: the clock (tests pass a later one). Every process sweeps (the
        repair loop, each maintenance pass); the
        maintenance lock lets one of them delete each body, and a body another
        process is maintaining waits for the next sweep.
        """
        deleted = 0
        delay = timedelta(seconds=self.settings.delete_delay_seconds)
        for body in await self.repo.due_log_deletions((now or utcnow()) - delay, limit=limit):
            ref = RunRef(
                workspace_id=body.workspace_id,
                configuration_id=body.configuration_id,
                run_id=body.run_id,
            )
            try:
                async with self.maintaining(body.run_id):
                    # another process's sweep may have deleted it since the list was read
                    if not await self.repo.log_deletion_queued(body.run_id):
                        continue
                    await self._delete_body(ref)
            except MaintenanceBusy:
                continue
            deleted += 1
        return deleted

    async def queue_body_deletion(self, run: Run) -> None:
        """Queue an expired run's body for deletion after the delay (idempotent)."""
        body = QueuedDeletion(run.workspace_id, run.configuration_id, run.id)
        await self.repo.queue_log_deletion(body, utcnow())

    async def _delete_body(self, ref: RunRef) -> None:
        """Every form of ``ref``'s body, then its queue entry (the caller holds the lock)."""
        await self.log.delete(ref)
        await self.repo.log_deleted(ref.run_id)

    async def _drop_keys(self, run: Run) -> None:
        """Forget the run's idempotency keys once its log is compacted or expired (the
        database holds nothing per batch for old runs), but not before a retry of its
        last batch has had ``IDEMPOTENCY_KEEP`` to get its first answer (contract 6)."""
        if run.completed_at is not None and utcnow() - run.completed_at >= IDEMPOTENCY_KEEP:
            await self.repo.delete_idempotency(run.id)
