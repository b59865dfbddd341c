"""RunManager: every run operation, in one place.

Routes, the worker and the CLI call only this class; it is the one owner of the
rules that span the run row and the run's log:

* a run's log is written only by the process that *holds* it
  (``held.HeldRun``: the file lock, the writer lease with its fencing epoch,
  the summary fold); every path that writes or seals a log -- ingest,
  executor, cancel, reaper, idle timeout, completion, repair -- takes it
  through ``self.held`` and its per-run lock;
* ``run.completed`` is written exactly once and last, durable before the row
  is finished (``HeldRun.complete``); the lifecycle is ``lifecycle.py``;
* the database never holds events -- only the row, the summary and pointers.

The ingest steps live in ``producer.py``, a worker's steps in ``executed_runs.py``
and the recovery/maintenance steps in ``upkeep.py`` (mixed in); all per-run state
is in ``self.held``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection
from datetime import datetime
from typing import Any

from runevents import ids
from runevents.configs import ConfigRegistry, Configuration
from runevents.db.chunks import ChunkRepository
from runevents.db.repository import RunRepository
from runevents.db.runlocks import RunLocks
from runevents.eventlog import Chunk, EventLog
from runevents.events import FINAL_STATUSES, EventDraft
from runevents.exceptions import (
    InvalidInput,
    LogDamaged,
    LogExpired,
    LogNotFound,
    RunEnded,
    RunNotFound,
    StorageError,
    WriterFenced,
    WriterMoving,
)
from runevents.executed_runs import ExecutedRuns
from runevents.held import LIVE_STATUSES, HeldRun, run_ref
from runevents.held_runs import HeldRuns
from runevents.livetier import LiveTier
from runevents.masking import Masker
from runevents.models import LogState, Run, RunQuery, RunStatus, rfc3339, utcnow
from runevents.ownership import Ownership
from runevents.producer import ProducerIngest, cancelled_by_request
from runevents.run_masks import RunMasks
from runevents.search import SearchRequest, WorkspaceSearch, search_console
from runevents.session import RunSession
from runevents.settings import Settings
from runevents.upkeep import RunUpkeep

log = logging.getLogger(__name__)

#: times a read goes on from the compressed form after compaction dropped the one it read
REFORM_TRIES = 2


class RunManager(ProducerIngest, ExecutedRuns, RunUpkeep):
    """Owns every run operation: create, append, start, complete, cancel, read, list."""

    def __init__(
        self,
        *,
        settings: Settings,
        repo: RunRepository,
        log: EventLog,
        configs: ConfigRegistry,
        owner_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.log = log
        self.configs = configs
        #: this process's writer leases (renewed by ``ownership.run()``)
        self.ownership = Ownership(
            repo, owner=owner_id, lease_seconds=settings.writer_lease_seconds
        )
        #: several machines: the shared live tier (None on one machine)
        self.tier: LiveTier | None = None
        if settings.live_tier_enabled:
            self.tier = LiveTier(ChunkRepository(repo), log)
            self.tier.attach()
        #: the runs this process holds, and the per-run lock of every operation
        self.held = HeldRuns(log, repo, self.ownership, self.tier)
        # cancel signals of runs executed by this process's worker (immediate local cancel)
        self._cancel_signals: dict[str, asyncio.Event] = {}
        #: called after a run is queued, so an embedded worker claims it at once
        self.on_queued: Callable[[], None] | None = None
        # secret masking of producers' batches (contract 11; hooked in producer.ingest)
        self.masks = RunMasks(repo, configs)
        #: per-run maintenance locks shared by every process of the deployment
        self.run_locks = RunLocks(repo.database)

    async def close(self) -> None:
        """Let go of every run this process holds (server shutdown); nothing is lost:
        every acknowledged batch is durable already."""
        await self.held.close()

    # ------------------------------------------------------------------ create / read rows
    async def create_run(
        self,
        workspace_id: str,
        configuration_id: str,
        *,
        mode: str = "execute",
        options: dict[str, Any] | None = None,
        external: bool = False,
        rerun_of: str | None = None,
    ) -> Run:
        """Create a queued run and write its ``run.queued`` event.

        Non-external runs must name a registered configuration (ConfigurationNotFound).
        """
        ids.check_name(workspace_id, "workspace_id")
        ids.check_name(configuration_id, "configuration_id")
        if not isinstance(mode, str) or not mode or len(mode) > 64:
            raise InvalidInput("mode must be a non-empty string of at most 64 characters")
        options = dict(options or {})
        if not external:
            self.configs.get(workspace_id, configuration_id)
        now = utcnow()
        queued = EventDraft(
            type="run.queued",
            # the row's created_at is exactly this event's (contract 2): reindex rebuilds it
            created_at=rfc3339(now),
            payload={
                "status": "queued",
                "mode": mode,
                "options": options,
                "external": external,
                # issue 19: a re-run names its original (no column needed)
                **({"rerun_of": rerun_of} if rerun_of else {}),
            },
        )
        # Contract 11: a declared secret a caller put in the options (or the mode) is
        # masked like in any other event -- keys, values, encoded forms, counted in
        # payload.masked -- before it reaches the log, and the row takes the masked
        # values, so no response shows it either. The child does not need the value
        # from its options file: the configuration hands it every declared secret in
        # its environment. An external run's configuration may declare none (or not
        # exist): then there is nothing to mask.
        masker = Masker(self.masks.declared(workspace_id, configuration_id))
        if masker:
            masker.mask_drafts([queued])
            mode, options = queued.payload["mode"], queued.payload["options"]
        run = Run(
            id=ids.new_run_id(),
            workspace_id=workspace_id,
            configuration_id=configuration_id,
            status=RunStatus.QUEUED,
            external=external,
            mode=mode,
            options=options,
            created_at=now,
            updated_at=now,
            log_state=LogState.LIVE,
        )
        run = run.evolve(events_path=self.log.events_path(run_ref(run)))
        # an external run's producer comes here next: keep its writer
        held = await self.held.create(run, queued, keep=external)
        if held is not None:
            return held.run
        if self.on_queued is not None:
            self.on_queued()
        return run.evolve(event_count=1)

    async def get_run(self, workspace_id: str, configuration_id: str, run_id: str) -> Run:
        """The run, if it exists under this workspace and configuration (RunNotFound)."""
        ids.check_name(workspace_id, "workspace_id")
        ids.check_name(configuration_id, "configuration_id")
        ids.check_run_id(run_id)
        run = await self.repo.get_run(run_id)
        if run.workspace_id != workspace_id or run.configuration_id != configuration_id:
            raise RunNotFound(f"no run {run_id} in {workspace_id}/{configuration_id}")
        return run

    async def lookup_run(self, run_id: str) -> Run:
        """A run by its id alone (the caller checks workspace access)."""
        return await self.repo.get_run(ids.check_run_id(run_id))

    async def list_runs(self, query: RunQuery) -> tuple[list[Run], str | None]:
        """A page of the runs list, newest first."""
        ids.check_name(query.workspace_id, "workspace_id")
        if query.configuration_id is not None:
            ids.check_name(query.configuration_id, "configuration_id")
        if not 1 <= query.limit <= 500:
            raise InvalidInput("limit must be between 1 and 500")
        return await self.repo.list_runs(query)

    async def list_workspaces(self) -> list[str]:
        """Workspaces that have runs or configurations."""
        names = set(await self.repo.list_workspaces())
        names.update(c.workspace_id for c in self.configs.list())
        return sorted(names)

    def list_configurations(self, workspaces: Collection[str] | None) -> list[Configuration]:
        """Registered configurations, filtered to ``workspaces`` (None or '*' = all)."""
        return self.configs.list(workspaces)

    # ------------------------------------------------------------------ completion
    async def complete_held(self, held: HeldRun, draft: EventDraft) -> Run:
        """End a held run with ``draft``, a run.completed the server writes (never a
        producer's: ``HeldRun.complete``, ``by_server``). Caller holds ``held.lock``."""
        held.run = await self.repo.get_run(held.run.id)  # the row may carry a newer flag
        if held.run.status.ended:
            if not held.writer.ended:
                # another process ended the run (a reaper took it over while this one
                # was paused): it is not ours to complete any more
                raise WriterFenced(f"run {held.run.id} was ended by another process")
            # only possible for a row finished by an older epoch: the log is the judge
            return await self.finish_from_log(held)
        return await held.complete(held.writer.prepare([draft]), by_server=True)

    async def complete_run(
        self,
        session: RunSession,
        *,
        status: str,
        failure: dict[str, Any] | None,
        execution: dict[str, Any] | None,
    ) -> Run:
        """Write ``run.completed`` for a run this process executes and finish the row.

        StorageError if it could not be made durable: the event stays buffered
        and :meth:`settle_session` finishes the job once the disk works again.
        """
        if status not in FINAL_STATUSES:
            raise InvalidInput(f"invalid final status {status!r}")
        payload: dict[str, Any] = {"status": status, "failure": failure}
        if execution is not None:
            payload["execution"] = execution
        async with self.held.lock(session.run.id):
            return await self.complete_held(
                session.held, EventDraft(type="run.completed", payload=payload)
            )

    async def settle_session(self, session: RunSession) -> Run:
        """Finish a completion that failed half-way (run.completed not durable, or the row)."""
        async with self.held.lock(session.run.id):
            return await session.held.settle()

    async def set_status(self, run: Run, status: RunStatus, *, at: datetime | None = None) -> Run:
        """Move a live run to ``building`` or ``running`` (InvalidTransition otherwise);
        ``at``: the instant it started running (now if None)."""
        fields: dict[str, Any] = {"status": status}
        if status is RunStatus.RUNNING and run.started_at is None:
            fields["started_at"] = at or utcnow()
        expect = {s for s, targets in _TRANSITIONS_TO.items() if status in targets}
        return await self.repo.update_run(run.id, expect=expect, **fields)

    async def cancel_run(self, workspace_id: str, configuration_id: str, run_id: str) -> Run:
        """Cancel a run: at once if nobody executes it, else signal its worker.

        A run nobody executes (queued and unclaimed, or external) is completed
        ``cancelled`` by whoever can take its log; if another process holds it,
        the flag is set and the holder completes it (``watch_held_runs``).
        """
        run = await self.get_run(workspace_id, configuration_id, run_id)
        if run.status.ended:
            raise RunEnded(f"run {run_id} has already ended ({run.status.value})")
        if self.executes(run_id):
            # this process's worker executes the run (or is taking it): signal it
            return await self._flag_cancel(run_id)
        if run.external or run.lease_owner is None:
            async with self.held.lock(run_id):
                held = self.held.get(run_id)
                if held is not None and not held.run.external:
                    # this process's worker took the run after the row above was read:
                    # its executor runs, and completing the log under it would leave
                    # the worker writing to a sealed run. Its worker completes it.
                    return await self._flag_cancel(run_id)
                if held is None:
                    current = await self.repo.get_run(run_id)
                    if current.status.ended:
                        raise RunEnded(f"run {run_id} has already ended")
                    if not current.external and current.lease_owner is not None:
                        # a worker claimed it since (here or elsewhere): the worker's
                        return await self._flag_cancel(run_id)
                    try:
                        held = await self.held.take(current, source="server", atomic=True)
                    except WriterMoving:
                        held = None
                if held is not None:
                    return await self._cancel_held(held)
        # a worker -- or, for an external run, the process holding its writer --
        # sees the flag on its next heartbeat / watch_held_runs
        return await self._flag_cancel(run_id)

    async def _cancel_held(self, held: HeldRun) -> Run:
        """Complete ``held`` as cancelled. Once its run.completed is durable the cancel
        has happened, whatever fails after it (the row: the database; the seal: the
        object store): the answer is the run as it stands (202), never a 503, which
        would promise the cancel did not take (a retry then got 409 ``run_ended``). The
        repair loop finishes the row and the seal, as for a completing batch."""
        try:
            return await self.complete_held(held, cancelled_by_request())
        except StorageError as exc:
            if not held.writer.completed_durably:
                raise
            log.warning(
                "run %s: cancelled (run.completed is durable); finishing the run failed "
                "(%s), the repair loop finishes it", held.run.id, exc,
            )  # fmt: skip
            return held.run

    async def _flag_cancel(self, run_id: str) -> Run:
        """Ask whoever executes or holds the run to cancel it (signalled at once when it is
        this process's worker).

        The signal is looked up again *after* the row is flagged: a worker here that
        read the row before the flag registered its signal before that read
        (:meth:`start_session`), so one of the two sees the cancel."""
        self._signal_local(run_id)
        try:
            return await self.repo.update_run(run_id, expect=LIVE_STATUSES, cancel_requested=True)
        finally:
            self._signal_local(run_id)

    def _signal_local(self, run_id: str) -> None:
        local = self._cancel_signals.get(run_id)
        if local is not None:
            local.set()

    # ------------------------------------------------------------------ reading events
    async def open_events(self, workspace_id: str, configuration_id: str, run_id: str) -> Run:
        """The run whose events are about to be read (LogExpired if retention removed them)."""
        run = await self.get_run(workspace_id, configuration_id, run_id)
        if run.log_state is LogState.EXPIRED:
            raise LogExpired(
                f"the events of run {run_id} were removed by the retention policy; "
                "the run and its summary remain"
            )
        return run

    def read_events(
        self, run: Run, after_sequence: int = 0, limit: int | None = None
    ) -> AsyncIterator[Chunk]:
        """What the log holds now after ``after_sequence`` (then the iterator ends)."""

        def reopen(after: int) -> AsyncIterator[Chunk]:
            left = None if limit is None else limit - (after - after_sequence)
            return self.log.read(run_ref(run), after_sequence=after, limit=left)

        return self._expired_if_missing(run, after_sequence, reopen)

    def follow_events(self, run: Run, after_sequence: int = 0) -> AsyncIterator[Chunk]:
        """Replay after ``after_sequence``, then live, until the chunk holding run.completed."""
        return self._expired_if_missing(
            run, after_sequence, lambda after: self.log.follow(run_ref(run), after_sequence=after)
        )

    async def _expired_if_missing(
        self, run: Run, after_sequence: int, reopen: Callable[[int], AsyncIterator[Chunk]]
    ) -> AsyncIterator[Chunk]:
        """A missing log is 410 only when retention removed it; a moved one is read on.

        Compaction -- on any host -- drops the plain form once the row points at
        the compressed one. A read of an object store cannot keep a deleted object
        open (a local file can), so a read that loses its form mid-way while the
        row says ``compressed`` goes on from the compressed form after the last
        whole event it yielded: the same bytes, no gap (``REFORM_TRIES`` times).

        Retention deletes the body before it marks the row, so a row that still
        says plain or compressed with no body was expired (410). A row that says
        ``live`` has a log that is being sealed or moved (a crash interrupted
        it; the repair loop finishes it): 503, retry -- never "removed by
        retention".

        A read that meets damaged bytes (LogDamaged, 503) flags the run and
        schedules its repair (``HeldRuns.damage_found``): the owner cuts the log
        before it acknowledges another batch.
        """
        position = after_sequence
        chunks = reopen(position)
        for attempt in range(REFORM_TRIES + 1):
            try:
                async for chunk in chunks:
                    position = chunk.last_sequence
                    yield chunk
                return
            except LogDamaged as exc:
                self.held.damage_found(run.id, exc.offset)
                raise
            except (LogNotFound, StorageError) as exc:
                current = await self.repo.get_run(run.id)
                if current.log_state is LogState.COMPRESSED and attempt < REFORM_TRIES:
                    chunks = reopen(position)  # the form being read was compacted away
                    continue
                missing = isinstance(exc, LogNotFound)
                if missing and current.log_state is LogState.LIVE:
                    raise StorageError(
                        f"the log of run {run.id} is being sealed or moved; retry shortly"
                    ) from exc
                # retention deleted it while it was read ("no index" halfway through
                # deleting a compressed log is a StorageError)
                if current.log_state is LogState.EXPIRED or (missing and current.status.ended):
                    raise LogExpired(
                        f"the events of run {run.id} were removed by the retention policy"
                    ) from exc
                raise

    async def search_events(
        self,
        run: Run,
        *,
        q: str | None,
        stream: str | None,
        level: str | None,
        after_sequence: int,
        limit: int,
    ) -> tuple[list[bytes], int, bool]:
        """Console lines matching ``q`` (case-insensitive), ``stream`` and ``level``.

        Scans forward from ``after_sequence`` (constant memory) and stops after
        ``limit`` matches. Returns (lines, next_after_sequence, has_more).
        """
        return await search_console(
            self.read_events(run, after_sequence),
            q=q,
            stream=stream,
            level=level,
            after_sequence=after_sequence,
            limit=limit,
        )

    async def search_runs(self, request: SearchRequest) -> AsyncIterator[bytes]:
        """Search across a workspace's runs: NDJSON hit lines, then the done line (search/).

        The first page of runs is read before this returns, so a database that is away
        raises here (503) rather than cutting an answer that has started."""
        search = WorkspaceSearch(self.repo, self.log, request)
        await search.start()
        return search.lines()


#: reverse of models.TRANSITIONS for the live moves a session may make
_TRANSITIONS_TO: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.BUILDING, RunStatus.RUNNING}),
    RunStatus.BUILDING: frozenset({RunStatus.RUNNING}),
    RunStatus.RUNNING: frozenset(),
}
