"""The registry of the runs this process holds, and the one way to take a run's log.

:class:`HeldRuns` maps a run id to its :class:`~runevents.held.HeldRun` (which
owns the writer, lease and summary of one run: ``held.py``). Taking a run --
file lock, then the writer lease, then recovery -- happens only here, and so
do the repairs of a held log that a read or a summary fold found damaged
(``damage_found`` flags it; the owner cuts it before acknowledging another
batch). :class:`KeyedLocks` serializes every operation on one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from runevents import metrics
from runevents.eventlog import EventLog
from runevents.events import EventDraft
from runevents.exceptions import LogDamaged, StorageError, WriterBusy, WriterMoving
from runevents.held import HeldRun, run_ref
from runevents.keyed_locks import KeyedLocks
from runevents.lifecycle import LogPhase, Step, advance
from runevents.models import Run
from runevents.ownership import Lease, Ownership
from runevents.summary_fold import FoldCheckpoint, SummaryFold

if TYPE_CHECKING:
    from runevents.db.repository import RunRepository
    from runevents.livetier import LiveTier

#: (the same logger as held.py: taking and repairing runs logs under one name)
log = logging.getLogger("runevents.held")

#: the folds of let-go runs kept for their next take (each bounded: summary/bounds.py)
KEPT_FOLDS = 256
#: how long a shutdown waits for seals still running past their answer (seconds)
SEAL_CLOSE_SECONDS = 5.0


class HeldRuns:
    """The registry of held runs, and the one way to take a run's log."""

    def __init__(
        self,
        event_log: EventLog,
        repo: RunRepository,
        ownership: Ownership,
        tier: LiveTier | None = None,
    ) -> None:
        self.log = event_log
        self.repo = repo
        self.ownership = ownership
        #: several machines: the shared live tier every write is committed to
        self.tier = tier
        #: serializes every operation on one run in this process
        self.lock = KeyedLocks()
        self._held: dict[str, HeldRun] = {}
        #: runs whose log a read or a summary fold found damaged (LogDamaged), by run id
        #: (the offset found): no batch is acknowledged on them until the owner cut it
        self.damaged: dict[str, int | None] = {}
        #: the repair task of each flagged run (one at a time per run)
        self._repairs: dict[str, asyncio.Task[bool]] = {}
        #: seals still running after their completion was answered (``seal_later``)
        self._sealing: set[asyncio.Task[Run]] = set()
        #: ended runs whose damaged log is left as it is (said once)
        self._final_damage: set[str] = set()
        #: the folds of runs this process let go, newest last (at most KEPT_FOLDS):
        #: taking one again folds only the log after its checkpoint
        self._folds: OrderedDict[str, FoldCheckpoint] = OrderedDict()

    def keep_fold(self, run_id: str, checkpoint: FoldCheckpoint) -> None:
        """Keep the fold of a run let go (``HeldRun.release``) for its next take."""
        self._folds[run_id] = checkpoint
        self._folds.move_to_end(run_id)
        while len(self._folds) > KEPT_FOLDS:
            self._folds.popitem(last=False)

    def get(self, run_id: str) -> HeldRun | None:
        return self._held.get(run_id)

    def __iter__(self) -> Iterator[HeldRun]:
        return iter(list(self._held.values()))

    def __len__(self) -> int:
        return len(self._held)

    def seal_later(self, run_id: str, sealing: asyncio.Task[Run]) -> None:
        """Keep a seal that goes on past its completion's answer (``HeldRun.seal``) until
        it ends; a failure is said, and left to the repair loop."""
        self._sealing.add(sealing)

        def ended(task: asyncio.Task[Run]) -> None:
            self._sealing.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning(
                    "run %s: sealing its log failed (%s); the repair loop seals it",
                    run_id, task.exception(),
                )  # fmt: skip

        sealing.add_done_callback(ended)

    def forget(self, held: HeldRun) -> None:
        if self._held.get(held.run.id) is held:
            del self._held[held.run.id]

    async def take(self, run: Run, *, source: str, atomic: bool, full: bool = False) -> HeldRun:
        """Own ``run``'s log: file lock, then the writer lease, then recovery. Caller holds
        ``lock(run.id)``.

        WriterMoving (503, retry) if a live writer on this host or a live lease
        elsewhere holds it. Recovery runs only once the lease is ours, and a cut
        it makes is marked by a ``log.recovered`` line in the same step (contract
        2.2). ``full``: ignore the row's checkpoint and check the whole log.
        """
        held = self._held.get(run.id)
        if held is not None:
            return held
        checkpoint = (run.event_count, run.events_bytes) if run.events_bytes and not full else None
        leases: list[Lease] = []

        async def own() -> None:
            # under the file lock, before recovery touches the log: only the owner cuts
            leases.append(await self.ownership.acquire(run.id))
            if self.tier is not None:
                # the epoch is ours now: nobody adds a chunk; copy every one of them here
                await self.tier.pull(run_ref(run))

        try:
            # the local guard first: a live writer here, even a stopped one, keeps it
            writer = await self.log.open_writer(
                run_ref(run),
                source=source,
                atomic=atomic,
                checkpoint=checkpoint,
                before_recovery=own,
                mark_cuts=True,
            )
        except WriterBusy as exc:
            raise WriterMoving(f"{exc.message}; retry shortly") from exc
        except BaseException:
            for lease in leases:
                with contextlib.suppress(StorageError):
                    await lease.release()
            raise
        lease = leases[0]
        existing = writer.durable_sequence
        phase = LogPhase.COMPLETING if writer.ended else LogPhase.RELEASED

        def on_damaged(exc: LogDamaged) -> None:
            self.damage_found(run.id, exc.offset)

        # a fold kept when this process let the run go: only the log after it is read (its
        # boundary checked first); a full recovery (damage) trusts no earlier state
        kept = self._folds.pop(run.id, None)
        resume = None if full or writer.recovered is not None else kept
        fold = SummaryFold(self.log, run_ref(run), existing, on_damaged, resume)
        held = HeldRun(run, writer, lease, fold, self)
        held.phase = advance(phase, Step.TAKE)
        self._held[run.id] = held
        if writer.recovered is not None:
            # recovery wrote the log.recovered line at the cut, in the same step
            log.warning("run %s: damaged log cut: %s", run.id, writer.recovered)
        return held

    async def recover_fully(self, held: HeldRun) -> None:
        """Damage before the checkpoint (a failing disk, not a crash): let the run go and
        take it again with a recovery of the whole log. Caller holds ``lock``."""
        again = await self.repair(held)
        await again.release()

    async def repair(self, held: HeldRun) -> HeldRun:
        """Cut a held log known damaged: let it go, take it again with a recovery of the
        whole log (cut at the first bad byte, quarantined, ``log.recovered``) and keep
        it. Caller holds ``lock``; StorageError if the recovery fails (still flagged)."""
        run_id = held.run.id
        offset = self.damaged.get(run_id)
        await held.release()
        current = await self.repo.get_run(run_id)
        again = await self.take(
            current, source=held.writer.source, atomic=held.writer.atomic, full=True
        )
        self.damaged.pop(run_id, None)
        recovered = again.writer.recovered
        log.warning(
            "run %s: the log a read found damaged (offset %s) is repaired: %s",
            run_id, offset, recovered if recovered is not None else "nothing to cut",
        )  # fmt: skip
        metrics.repair_found("damaged_read")
        return again

    # ------------------------------------------------------------------ damage found by reads
    def damage_found(self, run_id: str, offset: int | None = None) -> None:
        """A read (or a summary fold) of ``run_id``'s log raised LogDamaged.

        The run is flagged (ingest cuts the log before it acknowledges another
        batch, and refuses a batch that was syncing meanwhile) and a repair is
        scheduled at once -- one task per run at a time; the repair pass retries
        the flagged runs it could not repair yet (another process held them).
        """
        if run_id in self._final_damage:
            return  # an ended run's final log: left as it is, said so already
        self._folds.pop(run_id, None)
        if run_id not in self.damaged:
            log.warning("run %s: a read found damaged bytes at offset %s", run_id, offset)
            self.damaged[run_id] = offset
        task = self._repairs.get(run_id)
        if task is None or task.done():
            self._repairs[run_id] = asyncio.get_running_loop().create_task(
                self._repair_task(run_id)
            )

    async def _repair_task(self, run_id: str) -> bool:
        try:
            return await self.repair_damaged(run_id)
        except WriterMoving:
            log.info("run %s: its damaged log is held elsewhere; its owner cuts it", run_id)
        except Exception as exc:
            log.warning("run %s: repairing its damaged log failed (%s); next pass", run_id, exc)
        finally:
            if self._repairs.get(run_id) is asyncio.current_task():
                del self._repairs[run_id]
        return False

    async def repair_damaged(self, run_id: str) -> bool:
        """Cut the log of a flagged run if this process holds it or can take it.

        True when it is cut (or nothing is flagged any more). An ended run's log
        is final (sealed, or being sealed): it is left as it is -- reads of the
        damaged range keep answering 503 ``log_damaged`` -- and said so once in
        the server log and the ``damaged_sealed`` repair metric. A run held here
        by an executor (or completing) is not taken from under its session.
        """
        async with self.lock(run_id):
            if run_id not in self.damaged:
                return True
            held = self._held.get(run_id)
            if held is not None:
                if held.phase is not LogPhase.OWNED or not held.writer.atomic:
                    return False
                await self.repair(held)
                return True
            run = await self.repo.get_run(run_id)
            if run.status.ended:
                offset = self.damaged.pop(run_id)
                self._final_damage.add(run_id)
                log.error(
                    "run %s has ended and its log holds damaged bytes at offset %s: the log "
                    "is final and left as it is (reads of that range answer 503 log_damaged)",
                    run_id, offset,
                )  # fmt: skip
                metrics.repair_found("damaged_sealed")
                return False
            if not run.external and run.lease_owner is not None:
                return False  # a worker's run: its worker holds the log (here or elsewhere)
            held = await self.take(run, source="server", atomic=True, full=True)
            try:
                self.damaged.pop(run_id, None)
                log.warning(
                    "run %s: the log a read found damaged is repaired: %s",
                    run_id, held.writer.recovered or "nothing to cut",
                )  # fmt: skip
                metrics.repair_found("damaged_read")
            finally:
                await held.release()
            return True

    async def create(self, run: Run, queued: EventDraft, *, keep: bool) -> HeldRun | None:
        """Write a new run's first event, then insert its row holding the writer lease.

        The log is written before the row: a row always has a log, and a log
        without a row (a crash in between) is picked up by ``reindex``.
        Returns the HeldRun when ``keep`` (an external run's producer comes here next).
        """
        writer = await self.log.open_writer(run_ref(run), source="server", atomic=True)
        owner = self.ownership.owner if keep else None
        try:
            if self.tier is not None:
                # the row and the first chunk in one transaction: nothing lives on this disk only
                writer.ship = self.tier.creator(run, owner, self.ownership.lease_seconds)
                await writer.append([queued])
                writer.ship = None
            else:
                await writer.append([queued])
                await self.repo.insert_run(
                    run.evolve(event_count=1, events_bytes=writer.visible_offset),
                    writer_owner=owner,
                    writer_lease_seconds=self.ownership.lease_seconds,
                )
        except BaseException:
            await writer.close()
            raise
        if not keep:
            await writer.close()
            return None
        lease = self.ownership.adopt(run.id, 1)
        held = HeldRun(
            run.evolve(event_count=1, events_bytes=writer.visible_offset),
            writer,
            lease,
            SummaryFold(self.log, run_ref(run), 0),
            self,
        )
        held.fold.builder.add(queued.type, queued.created_at, queued.payload)
        self._held[run.id] = held
        return held

    async def close(self) -> None:
        """Let go of every held run (shutdown): all of it is durable, the leases given up."""
        for task in list(self._repairs.values()):
            task.cancel()
        if self._sealing:
            # a seal past its answer: given a moment to end, else stopped (its file lock
            # is released either way; the repair loop seals what is left)
            _, late = await asyncio.wait(list(self._sealing), timeout=SEAL_CLOSE_SECONDS)
            for seal in late:
                seal.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for held in list(self._held.values()):
            try:
                await held.release()
            except Exception:
                log.exception("run %s: releasing it failed", held.run.id)
