"""A worker's steps of ``RunManager`` (mixed into it): claim, start, heartbeat, append, let go.

The executed run's side of the manager: a worker claims a queued run with an
execution lease, takes its log (``start_session``), keeps the lease alive and
hears a cancel (``heartbeat``, and the worker's cancel watch through
``cancels_requested``), appends the command's lines, and lets the run go when
it cannot finish it. Completing goes through ``RunManager.complete_run``; the
cancel of a run this process executes through ``RunManager.cancel_run``, which
reaches the signal registered here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from typing import TYPE_CHECKING, cast

from runevents import metrics
from runevents.configs import ConfigRegistry
from runevents.events import EventDraft
from runevents.exceptions import StorageError, WriterMoving
from runevents.held import HeldRun
from runevents.held_runs import HeldRuns
from runevents.models import Run
from runevents.session import RunSession
from runevents.settings import Settings

if TYPE_CHECKING:
    from runevents.db.repository import RunRepository
    from runevents.manager import RunManager


class ExecutedRuns:
    """The worker-facing steps of ``RunManager`` (mixed into it)."""

    settings: Settings
    repo: RunRepository
    configs: ConfigRegistry
    held: HeldRuns
    #: cancel signals of runs executed by this process's worker (an immediate local cancel)
    _cancel_signals: dict[str, asyncio.Event]

    if TYPE_CHECKING:
        # provided by RunUpkeep

        async def finish_from_log(self, held: HeldRun) -> Run: ...

    async def claim_next(self, worker_id: str) -> Run | None:
        """Claim the oldest queued run this process has the configuration of, for
        ``worker_id`` with a lease (None if none).

        A run of a configuration this process does not know stays queued for a
        worker that knows it (workers sharing one database may load different
        configuration files), as a CI runner takes only the jobs that match it;
        until one comes the run waits, and a user can cancel it.
        """
        known = [(c.workspace_id, c.configuration_id) for c in self.configs.list()]
        return await self.repo.claim_queued(worker_id, self.settings.lease_seconds, known)

    async def heartbeat(self, session: RunSession, worker_id: str) -> None:
        """Renew the execution lease of a run this worker executes; relay a remote cancel.

        The writer lease is renewed with every other lease of this process
        (``Ownership.run``); a lost one fences the writer (WriterFenced on write).
        """
        run = await self.repo.renew_lease(session.run.id, worker_id, self.settings.lease_seconds)
        metrics.lease_renewed()  # metrics hook
        if run.cancel_requested or session.held.lease.lost:
            session.cancel.set()
        session.held.run = run
        await session.held.record_progress(force=True)

    async def release(self, run: Run, worker_id: str) -> None:
        """Give a claimed run back to the queue (we could not start it)."""
        await self.repo.release_lease(run.id, worker_id)

    async def start_session(self, run: Run, worker_id: str) -> RunSession | None:
        """Take the log of a run this worker claimed; None if it is not ours to run.

        Returns None when another process holds the writer or the run already ended.

        A cancel accepted while the worker claims the run is never lost: the
        run's cancel signal is registered *before* the row is read, and
        :meth:`_flag_cancel` sets the signal after it flags the row -- so a flag
        this read misses finds the signal. The row is read again once the log
        is ours: a run another process cancelled (and completed) meanwhile is
        let go unwritten. A flag set by another process after that read reaches
        the worker's cancel watch (``Worker``, every ``CANCEL_POLL_SECONDS``).
        """
        cancel = asyncio.Event()
        async with self.held.lock(run.id):
            self._cancel_signals[run.id] = cancel
            try:
                current = await self.repo.get_run(run.id)
                if current.status.ended or current.lease_owner != worker_id:
                    self._drop_signal(run.id, cancel)
                    return None
                try:
                    # an executor's console lines are buffered and retried on failure:
                    # nobody was promised them
                    held = await self.held.take(current, source="worker", atomic=False)
                except WriterMoving:
                    self._drop_signal(run.id, cancel)
                    return None
                try:
                    current = await self.repo.get_run(run.id)
                except BaseException:
                    await held.let_go(f"run {run.id}: its row could not be read", fenced=False)
                    raise
                if current.status.ended or current.lease_owner != worker_id:
                    # ended (a cancel completed it) or taken by another worker between
                    # the read and the take: not ours to run, nothing to write
                    await held.let_go(
                        f"run {run.id} ended, or was claimed by another worker, before "
                        "this worker took its log: letting it go",
                        fenced=False,
                    )
                    self._drop_signal(run.id, cancel)
                    return None
                if held.writer.ended:
                    # the log ends with run.completed, the row lagged (a crash between):
                    # finish the row from the log rather than run the command again
                    try:
                        await self.finish_from_log(held)
                    except BaseException:
                        await held.let_go(f"run {run.id}: finishing it failed", fenced=False)
                        raise
                    self._drop_signal(run.id, cancel)
                    return None
            except BaseException:
                self._drop_signal(run.id, cancel)
                raise
            held.run = current
        if current.cancel_requested:
            cancel.set()
        # (the mixin is always a RunManager: the session's calls go back to it)
        return RunSession(cast("RunManager", self), held, cancel)

    def _drop_signal(self, run_id: str, cancel: asyncio.Event) -> None:
        if self._cancel_signals.get(run_id) is cancel:
            del self._cancel_signals[run_id]

    async def cancels_requested(self, run_ids: Collection[str]) -> set[str]:
        """Which of ``run_ids`` (runs this process's worker executes) have a cancel
        request on their row -- set by another process (its API, the CLI)."""
        return await self.repo.cancel_requested_among(run_ids)

    def executes(self, run_id: str) -> bool:
        """Whether a worker of this process executes ``run_id`` (its session is open, or
        being opened: ``start_session`` registers the run's signal before it reads the row)."""
        return run_id in self._cancel_signals

    def end_session(self, run_id: str) -> None:
        """The worker is done with a run (completed or abandoned)."""
        self._cancel_signals.pop(run_id, None)

    async def append_executed(self, session: RunSession, drafts: list[EventDraft]) -> Run:
        """Append an executor's events to a run this process executes (buffered)."""
        held = session.held
        async with self.held.lock(held.run.id):
            held.commit(drafts)
        await held.writer.flush_if_due()
        if held.writer.degraded and not held.run.logging_degraded:
            # the run goes on whatever the database says: the flag is retried next time
            with contextlib.suppress(StorageError):
                await held.record_progress()
        return held.run

    async def abandon(self, session: RunSession) -> None:
        """Let go of an executed run without completing it (worker shutdown)."""
        self.end_session(session.run.id)
        async with self.held.lock(session.run.id):
            if self.held.get(session.run.id) is session.held:
                await session.held.release()

    async def let_go(self, session: RunSession, reason: str) -> None:
        """This process lost an executed run (WriterFenced: taken over, or ended by
        another process): let it go without writing or recording anything more."""
        self.end_session(session.run.id)
        async with self.held.lock(session.run.id):
            if self.held.get(session.run.id) is session.held:
                await session.held.let_go(reason, fenced=True)
