"""The runs this process holds: one :class:`HeldRun` per run, owning its writer, lease and summary.

A run is *held* while this process owns its log (``lifecycle.LogPhase.OWNED``
or ``COMPLETING``): it has the file lock (``RunWriter``), the writer lease in
the database (``ownership.Lease``, proven before every write) and the run
summary folded so far. Nothing else keeps per-run state: the registry
(``held_runs.HeldRuns``) maps a run id to its HeldRun and is the one way to
take a run, and its :class:`KeyedLocks` serializes every operation on one run
(taking it, appending, judging an idempotency key, completing) without ever
dropping a lock someone holds.

Completing a run (:meth:`HeldRun.complete`), in this order, each step
crash-safe (ARCHITECTURE.md, failure table):

1. the summary is built from the fold (no re-read of the log) and put into
   ``run.completed``, which is committed and made durable -- if it cannot be,
   nothing is finished (an atomic writer rolled it back: 503);
2. the row is finished, fenced by the lease (``finish_owned``), still
   ``log_state: live``;
3. the log is sealed under the same file lock (never released in between);
4. the row says ``plain`` and the lease is given up.

A crash after 1 or 2 leaves ``COMPLETING``: the repair loop finishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runevents import metrics
from runevents.eventlog import RunRef, RunWriter
from runevents.eventlog.writer import Ticket
from runevents.events import RUN_COMPLETED, Event, EventDraft
from runevents.exceptions import RunEnded, StorageError
from runevents.lifecycle import LogPhase, Step, advance
from runevents.models import ENDED_STATUSES, LogState, Run, RunStatus, parse_timestamp, utcnow
from runevents.ownership import Lease
from runevents.summary import row_exit_code, run_fields
from runevents.summary_fold import SummaryFold

if TYPE_CHECKING:
    from runevents.eventlog.files import WriterLock
    from runevents.held_runs import HeldRuns

log = logging.getLogger(__name__)

#: statuses a run can be finished from (the conditional UPDATE's expectation)
LIVE_STATUSES = frozenset(RunStatus) - ENDED_STATUSES
#: a live run's event_count is written to its row at most this often (seconds)
PROGRESS_SECONDS = 1.0
#: how long a completion waits for its log's seal before it answers (``HeldRun.seal``)
SEAL_WAIT_SECONDS = 5.0


def final_status(summary: dict[str, Any]) -> RunStatus:
    """The ended row's status from a summary: its ``status`` when that is an ended status,
    else ``failed`` (a log's run.completed always says one; a hand-made log may not, and
    its row must still end -- live finishing and reindex read it alike)."""
    status = summary.get("status")
    if isinstance(status, str) and status in {s.value for s in ENDED_STATUSES}:
        return RunStatus(status)
    return RunStatus.FAILED


#: the events the server writes into every log itself: a log of only these is a run
#: that nothing (no producer, no command) ever ran
SERVER_ONLY_EVENTS = ("run.queued", "run.completed", "log.recovered")


def producer_talked(summary: dict[str, Any]) -> bool:
    """Whether the log a summary describes holds an event besides the server's own
    (``SERVER_ONLY_EVENTS``): for an external run, whether its producer ever sent one."""
    events = summary.get("events")
    if not isinstance(events, dict):
        return False
    by_type = events.get("by_type")
    by_type = by_type if isinstance(by_type, dict) else {}
    # a by_type cut at its cap may lack the server's names: the total is then larger
    # anyway, and with that many types the producer did talk
    server = sum(int(by_type.get(name) or 0) for name in SERVER_ONLY_EVENTS)
    return int(events.get("total") or 0) > server


def run_ref(run: Run) -> RunRef:
    """The log address of a run."""
    return RunRef(
        workspace_id=run.workspace_id, configuration_id=run.configuration_id, run_id=run.id
    )


class HeldRun:
    """A run whose log this process owns: writer, lease, summary and phase, together."""

    def __init__(
        self,
        run: Run,
        writer: RunWriter,
        lease: Lease,
        fold: SummaryFold,
        registry: HeldRuns,
        phase: LogPhase = LogPhase.OWNED,
    ) -> None:
        #: the row as this process last wrote or read it (nobody else writes a held run's log)
        self.run = run
        self.writer = writer
        self.lease = lease
        self.fold = fold
        self.phase = phase
        self.registry = registry
        loop = asyncio.get_running_loop()
        #: loop time of the last producer batch (external runs: the release timer)
        self.last_batch = loop.time()
        #: run.completed's ``created_at`` when the server stamped it (the row's completed_at)
        self.completed_at: datetime | None = None
        self._progress_at = 0.0
        writer.fence = lease.ensure
        writer.on_durable = fold.add
        if registry.tier is not None:
            writer.ship = registry.tier.shipper(run.id, registry.ownership.owner, lease)

    @property
    def ref(self) -> RunRef:
        return run_ref(self.run)

    @property
    def logging_degraded(self) -> bool:
        """Whether the row must say ``logging_degraded``: lines of a *buffered* writer (an
        executor's) are being retried or were dropped. An atomic writer's failed write is
        answered 503 and leaves nothing of the batch behind (the failure table: the row is
        unchanged), so it never degrades the run."""
        return self.writer.degraded and not self.writer.atomic

    def _step(self, step: Step) -> None:
        self.phase = advance(self.phase, step)

    # ------------------------------------------------------------------ appending
    def commit(self, drafts: Sequence[EventDraft]) -> tuple[list[Event], Ticket]:
        """Number and buffer ``drafts`` as one unit (durable after ``writer.sync``)."""
        events = self.writer.prepare(drafts)
        return events, self.writer.commit(events)

    async def record_progress(self, *, force: bool = False) -> Run:
        """Keep the row's ``event_count``/``events_bytes`` roughly current (at most once per
        ``PROGRESS_SECONDS``); they are a durable position, so recovery checks only what
        came after it."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        writer = self.writer
        degraded = self.logging_degraded and not self.run.logging_degraded
        if not force and not degraded and now - self._progress_at < PROGRESS_SECONDS:
            return self.run
        if (
            self.run.event_count == writer.durable_sequence
            and self.run.events_bytes == writer.visible_offset
            and not degraded
        ):
            self._progress_at = now
            return self.run
        self._progress_at = now
        fields: dict[str, Any] = {
            "event_count": writer.durable_sequence,
            "events_bytes": writer.visible_offset,
        }
        if degraded:
            fields["logging_degraded"] = True
        self.run = await self.registry.repo.update_run(self.run.id, expect=LIVE_STATUSES, **fields)
        return self.run

    # ------------------------------------------------------------------ completing
    async def complete(
        self, events: list[Event], *, server_clock: bool = True, by_server: bool = False
    ) -> Run:
        """Commit ``events`` (from ``writer.prepare``; the last is run.completed) and finish
        the run: durable first, then the row, then the seal (see the module doc).

        ``server_clock``: run.completed's ``created_at`` is the server's (not a
        producer's); the row's ``completed_at`` is then that very instant, so a row
        rebuilt from the log (reindex) is the same row (contract 2).
        ``by_server``: the server wrote this run.completed (a lost worker, a cancel,
        a timeout, a worker that could not run the command): one without an
        ``execution`` gets the one the summary derives from the log (contract 2:
        every run.completed carries it; a producer's is stored as sent).
        """
        completed = events[-1]
        assert completed.type == RUN_COMPLETED
        if server_clock:
            self.completed_at = parse_timestamp(completed.created_at)
        run = self.run
        payload = completed.payload
        payload.setdefault("failure", None)
        artifacts = payload.get("artifacts")
        if not isinstance(artifacts, dict):
            artifacts = {}
        artifacts.setdefault("output_paths", list(run.output_paths))
        artifacts["events_path"] = run.events_path
        payload["artifacts"] = artifacts
        builder = await self.fold.ready()
        # an executor's buffered lines (committed, not durable yet) precede run.completed in
        # the log, so its summary counts them too: the stored run.completed carries the
        # same summary as the row, which folds them once they are durable (contract 2.1)
        earlier = [event for unit in self.writer.undurable_units for event in unit]
        payload["summary"] = builder.with_events([*earlier, *events]).build()
        if by_server and not isinstance(payload.get("execution"), dict):
            # exit_code null; started_at the first run.started's created_at or null; the
            # summary, folded again from the stored event, then reads the same object
            payload["execution"] = dict(payload["summary"]["execution"])
        # the server's own event: its summary is bounded, the producer's limit does not apply
        ticket = self.writer.commit(events, check_size=False)
        await self.writer.sync(ticket)
        self._step(Step.COMPLETE)
        return await self.settle()

    async def settle(self) -> Run:
        """From COMPLETING (run.completed durable): finish the row, seal, let go.

        Called again (by the worker, or the repair loop) after a failure here.
        Never without run.completed committed: a completion that failed before it
        (StorageError) is retried with :meth:`complete`, not settled.
        """
        if not self.writer.ended:
            raise StorageError(f"run {self.run.id}: run.completed is not in its log yet")
        if self.writer.pending_events:
            await self.writer.sync()  # a non-atomic writer still retrying run.completed
        if self.phase is LogPhase.OWNED:
            self._step(Step.COMPLETE)
        builder = await self.fold.ready()
        summary = builder.build()
        repo, run = self.registry.repo, self.run
        now = self.completed_at or utcnow()
        fields: dict[str, Any] = {
            "status": final_status(summary),
            "exit_code": row_exit_code(summary),
            "completed_at": now,
            "summary": summary,
            "failure": summary.get("failure"),
            "last_console_snippet": builder.console_snippet or None,
            "logging_degraded": run.logging_degraded or self.logging_degraded,
            "event_count": self.writer.durable_sequence,
            "events_bytes": self.writer.visible_offset,
            "log_state": LogState.LIVE,
            "lease_owner": None,
            "lease_expires_at": None,
            **run_fields(summary),
        }
        if run.started_at is None and run.external and producer_talked(summary):
            # an external run starts when its producer first talks (``_after_batch``); a
            # batch that also ended it never got there. An executed run's started_at is
            # its run.started's instant (``set_status``): without one it never started
            # (cancelled while queued, its build failed) and stays null (contract 2.1)
            fields["started_at"] = now
        if not run.status.ended:
            self.run = await repo.finish_owned(
                run.id, self.registry.ownership.owner, self.lease.epoch,
                expect=LIVE_STATUSES, **fields,
            )  # fmt: skip
            metrics.run_finished(self.run)
        return await self.seal()

    async def seal(self) -> Run:
        """Make the ended log final under the writer's own file lock, then say so in the row.

        Waits at most ``SEAL_WAIT_SECONDS`` for it: with an object store the seal is
        an upload, and a store that hangs held a completion's answer (and every
        keyed retry behind the run's lock) about 30 s, past many producers'
        timeouts, for a run whose run.completed was durable and whose row was
        finished. Past the wait the seal goes on in the background (under the file
        lock, so nobody takes the log meanwhile) and the answer is the ended row
        (``log_state: live``, reads served from the spool); a seal that fails is
        the repair loop's, as before (failure table: object store down at seal).
        """
        checkpoint = (self.writer.durable_sequence, self.writer.visible_offset)
        lock = await self.writer.close(keep_lock=True)
        self.registry.forget(self)
        sealing = asyncio.get_running_loop().create_task(self._seal_locked(lock, checkpoint))
        try:
            return await asyncio.wait_for(asyncio.shield(sealing), SEAL_WAIT_SECONDS)
        except TimeoutError:
            log.warning(
                "run %s: ended; its seal is slow (the object store?) and goes on in the "
                "background", self.run.id,
            )  # fmt: skip
        except asyncio.CancelledError:
            self.registry.seal_later(self.run.id, sealing)
            raise
        self.registry.seal_later(self.run.id, sealing)
        return self.run

    async def _seal_locked(self, lock: WriterLock | None, checkpoint: tuple[int, int]) -> Run:
        tier = self.registry.tier
        handed = False  # the seal releases the lock, whatever happens to it
        try:
            uploaded = None
            if tier is not None and self.writer.path.exists():
                uploaded = await tier.checksum_file(self.writer.path)
            handed = True
            info = await self.registry.log.seal(self.ref, lock, checkpoint)
            if tier is not None:
                # verified in storage, then the chunks go: the tier holds live runs only
                await tier.sealed(self.ref, uploaded)
        finally:
            if not handed and lock is not None:
                lock.release()  # (the repair loop takes the log again)
            self.fold.cancel()
        self.run = await self.registry.repo.update_run(
            self.run.id,
            log_state=LogState.PLAIN,
            events_path=info.events_path,
            event_count=info.event_count,
            events_bytes=info.bytes,
        )
        self._step(Step.UPLOAD if self.registry.log.keys(self.ref).spooled else Step.SEAL)
        with contextlib.suppress(StorageError):
            await self.lease.release()
        return self.run

    # ------------------------------------------------------------------ letting go
    async def release(self) -> None:
        """Let go of a live run: its writer closed (all of it durable), the lease given up.

        The lease is given back only when the run is let go *cleanly*: the row's
        counters are the log's end, and the log holds no run.completed the row lacks
        (a completion whose row update failed). Otherwise it is left to lapse, and
        the repair loop, which takes only runs that may need it (``repair.py``),
        takes this one. The fold's state is kept (``HeldRuns.keep_fold``): taking
        the run again folds only the log after it.
        """
        if self.phase is LogPhase.OWNED:
            self._step(Step.RELEASE)
        clean = not self.lease.lost and not (self.writer.ended and not self.run.status.ended)
        if clean:
            try:
                await self.record_progress(force=True)
            except StorageError:
                clean = False
        await self.writer.close()
        checkpoint = None if self.writer.ended else self.fold.checkpoint()
        self.fold.cancel()
        self.registry.forget(self)
        if checkpoint is not None:
            self.registry.keep_fold(self.run.id, checkpoint)
        if not clean and not self.lease.lost:
            # not given back: it lapses within the lease, and the repair loop takes the run
            self.registry.ownership.forget(self.lease)
            return
        with contextlib.suppress(StorageError):
            await self.lease.release()

    async def let_go(self, reason: str, *, fenced: bool) -> None:
        """Let go without writing anything more: another process owns or ended the run.

        ``fenced``: this process lost it -- its writer lease was taken over while
        it was paused, or its row was ended under another owner (a reaper's
        ``worker_lost``); the lease is never used again. Otherwise the lease is
        given back (a reaper that found the run finished by another one). The
        writer is closed without a flush: what it still buffers is nobody's to
        write now, and the row is not touched.
        """
        if self.phase in (LogPhase.OWNED, LogPhase.COMPLETING):
            self._step(Step.FENCED if fenced else Step.RELEASE)
        if fenced:
            self.lease.mark_lost()
        self.writer.refuse_writes(reason)
        await self.writer.close()
        self.fold.cancel()
        self.registry.forget(self)
        with contextlib.suppress(StorageError):
            await self.lease.release()


def ended_error(run: Run) -> RunEnded:
    return RunEnded(f"run {run.id} has already ended ({run.status.value})")
