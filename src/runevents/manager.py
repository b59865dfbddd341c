"""RunManager: every run operation, in one place.

Routes, the worker and the CLI call only this class; it is the one owner of the
rules that span the run row and the run's log:

* a run's log is written by exactly one :class:`~runevents.eventlog.RunWriter`
  (a file lock, so also across processes); within this process one
  ``asyncio.Lock`` per run serializes prepare/commit so sequences stay gap-free;
* ``run.completed`` is written exactly once and last: the summary is built from
  the log plus the completing event, stored in the event's ``payload.summary``,
  and the row is finished with a conditional UPDATE that only one caller wins;
* the database never holds events -- only the row, the summary and pointers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any

from runevents import ids
from runevents.configs import ConfigRegistry, Configuration
from runevents.db.repository import RunRepository
from runevents.eventlog import Chunk, EventLog, RunWriter
from runevents.events import Event, EventDraft
from runevents.exceptions import (
    InvalidInput,
    LogExpired,
    LogNotFound,
    RunEnded,
    RunNotFound,
    WriterBusy,
)
from runevents.models import LogState, Run, RunQuery, RunStatus, utcnow
from runevents.producer import FINAL_STATUSES, ProducerIngest, cancelled_by_request
from runevents.search import SearchRequest, WorkspaceSearch, search_console
from runevents.session import RunSession
from runevents.settings import Settings
from runevents.summary import RunSummaryBuilder, run_fields
from runevents.upkeep import LIVE_STATUSES, RunUpkeep, run_ref

log = logging.getLogger(__name__)


class RunManager(ProducerIngest, RunUpkeep):
    """Owns every run operation: create, append, start, complete, cancel, read, list."""

    def __init__(
        self,
        *,
        settings: Settings,
        repo: RunRepository,
        log: EventLog,
        configs: ConfigRegistry,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.log = log
        self.configs = configs
        # one lock per run: prepare/commit of one run never interleave in this process
        self._locks: dict[str, asyncio.Lock] = {}
        # writers this process holds for external runs (ingest), kept open between batches
        self._writers: dict[str, RunWriter] = {}
        # the rows of those runs: current, since only the writer's holder changes them
        self._held: dict[str, Run] = {}
        # cancel signals of runs executed by this process's worker (immediate local cancel)
        self._cancel_signals: dict[str, asyncio.Event] = {}
        # when each live run's progress counters were last written (loop time)
        self._progress_at: dict[str, float] = {}
        # when each held external run last took a batch (loop time): idle writers are let go
        self._last_batch: dict[str, float] = {}
        #: called after a run is queued, so an embedded worker claims it at once
        self.on_queued: Callable[[], None] | None = None

    # ------------------------------------------------------------------ helpers
    def _lock(self, run_id: str) -> asyncio.Lock:
        lock = self._locks.get(run_id)
        if lock is None:
            lock = self._locks[run_id] = asyncio.Lock()
        return lock

    def _forget(self, run_id: str) -> None:
        self._locks.pop(run_id, None)
        self._writers.pop(run_id, None)
        self._held.pop(run_id, None)
        self._last_batch.pop(run_id, None)

    async def close(self) -> None:
        """Flush and release every writer this process holds (server shutdown)."""
        for run_id, writer in list(self._writers.items()):
            with contextlib.suppress(Exception):
                await writer.close()
            self._writers.pop(run_id, None)
            self._held.pop(run_id, None)

    # ------------------------------------------------------------------ create / read rows
    async def create_run(
        self,
        workspace_id: str,
        configuration_id: str,
        *,
        mode: str = "execute",
        options: dict[str, Any] | None = None,
        external: bool = False,
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
        ref = run_ref(run)
        run = run.evolve(events_path=self.log.events_path(ref))
        # The log is written before the row: a row always has a log, and a log
        # without a row (crash in between) is picked up by `reindex`.
        writer = await self.log.open_writer(ref, source="server")
        try:
            await writer.append(
                [
                    EventDraft(
                        type="run.queued",
                        payload={
                            "status": "queued",
                            "mode": mode,
                            "options": options,
                            "external": external,
                        },
                    )
                ]
            )
            await writer.flush()
            await self.repo.insert_run(run.evolve(event_count=1))
        except BaseException:
            await writer.close()
            raise
        if external:
            # the producer's batches will come to this process: keep the writer
            self._writers[run.id] = writer
            self._held[run.id] = run.evolve(event_count=1)
        else:
            await writer.close()
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
    async def _summarize(self, run: Run, pending: Sequence[Event]) -> RunSummaryBuilder:
        """Fold the stored log plus not-yet-committed ``pending`` events into a builder."""
        builder = RunSummaryBuilder()
        async for chunk in self.log.read(run_ref(run)):
            for line in chunk.data.split(b"\n")[:-1]:
                builder.add_line(line)
        for event in pending:
            builder.add(event.type, event.created_at, event.payload)
        return builder

    async def _complete_with(self, run: Run, writer: RunWriter, events: list[Event]) -> Run:
        """Commit ``events`` (the last is run.completed) and finish the run row.

        Caller holds the run lock and the writer; ``events`` come from ``writer.prepare``.
        """
        completed = events[-1]
        payload = completed.payload
        payload.setdefault("failure", None)
        artifacts = payload.get("artifacts")
        if not isinstance(artifacts, dict):
            artifacts = {}
        artifacts.setdefault("output_paths", list(run.output_paths))
        artifacts["events_path"] = run.events_path
        payload["artifacts"] = artifacts
        await writer.flush()
        builder = await self._summarize(run, events)
        summary = builder.build()
        payload["summary"] = summary
        await writer.commit(events)
        await writer.close()
        self._writers.pop(run.id, None)
        self._held.pop(run.id, None)
        seal = await self.log.seal(run_ref(run))
        execution = summary.get("execution") or {}
        exit_code = execution.get("exit_code")
        fields: dict[str, Any] = {
            "status": RunStatus(payload["status"]),
            "exit_code": exit_code if isinstance(exit_code, int) else None,
            "completed_at": utcnow(),
            "summary": summary,
            "failure": summary.get("failure"),
            "last_console_snippet": builder.console_snippet or None,
            "logging_degraded": run.logging_degraded or writer.degraded,
            "event_count": seal.event_count,
            "events_bytes": seal.bytes,
            "events_path": seal.events_path,
            "log_state": LogState.PLAIN,
            "lease_owner": None,
            "lease_expires_at": None,
            **run_fields(summary),
        }
        if run.started_at is None:
            fields["started_at"] = fields["completed_at"]
        finished = await self.repo.update_run(run.id, expect=LIVE_STATUSES, **fields)
        self._locks.pop(run.id, None)
        self._progress_at.pop(run.id, None)
        return finished

    async def complete_run(
        self,
        run: Run,
        writer: RunWriter,
        *,
        status: str,
        failure: dict[str, Any] | None,
        execution: dict[str, Any] | None,
    ) -> Run:
        """Write ``run.completed`` for a run this process executes and finish the row."""
        if status not in FINAL_STATUSES:
            raise InvalidInput(f"invalid final status {status!r}")
        payload: dict[str, Any] = {"status": status, "failure": failure}
        if execution is not None:
            payload["execution"] = execution
        async with self._lock(run.id):
            current = await self.repo.get_run(run.id)
            events = writer.prepare([EventDraft(type="run.completed", payload=payload)])
            return await self._complete_with(current, writer, events)

    # ------------------------------------------------------------------ executed runs
    async def claim_next(self, worker_id: str) -> Run | None:
        """Claim the oldest queued run for ``worker_id`` with a lease (None if none)."""
        return await self.repo.claim_queued(worker_id, self.settings.lease_seconds)

    async def heartbeat(self, session: RunSession, worker_id: str) -> None:
        """Renew the lease of a run this worker executes; relay a remote cancel request."""
        run = await self.repo.renew_lease(session.run.id, worker_id, self.settings.lease_seconds)
        if run.cancel_requested:
            session.cancel.set()
        await self._record_progress(run, session.writer, force=True)

    async def release(self, run: Run, worker_id: str) -> None:
        """Give a claimed run back to the queue (we could not start it)."""
        await self.repo.release_lease(run.id, worker_id)

    async def start_session(self, run: Run, worker_id: str) -> RunSession | None:
        """Open the writer of a run this worker claimed; None if it is not ours to run.

        Returns None when another process holds the writer or the run already ended.
        """
        try:
            writer = await self.log.open_writer(run_ref(run), source="worker")
        except WriterBusy:
            return None
        current = await self.repo.get_run(run.id)
        if current.status.ended or current.lease_owner != worker_id:
            await writer.close()
            return None
        cancel = asyncio.Event()
        if current.cancel_requested:
            cancel.set()
        self._cancel_signals[run.id] = cancel
        return RunSession(self, current, writer, cancel)

    def end_session(self, run_id: str) -> None:
        """The worker is done with a run (completed or abandoned)."""
        self._cancel_signals.pop(run_id, None)

    async def append_executed(
        self, run: Run, writer: RunWriter, drafts: Sequence[EventDraft]
    ) -> Run:
        """Append an executor's events to a run this process executes."""
        async with self._lock(run.id):
            await writer.append(drafts)
        if writer.degraded and not run.logging_degraded:
            run = await self.repo.update_run(run.id, logging_degraded=True)
        return run

    async def set_status(self, run: Run, status: RunStatus) -> Run:
        """Move a live run to ``building`` or ``running`` (InvalidTransition otherwise)."""
        fields: dict[str, Any] = {"status": status}
        if status is RunStatus.RUNNING and run.started_at is None:
            fields["started_at"] = utcnow()
        expect = {s for s, targets in _TRANSITIONS_TO.items() if status in targets}
        return await self.repo.update_run(run.id, expect=expect, **fields)

    async def cancel_run(self, workspace_id: str, configuration_id: str, run_id: str) -> Run:
        """Cancel a run: immediately if nobody executes it, else signal its worker."""
        run = await self.get_run(workspace_id, configuration_id, run_id)
        if run.status.ended:
            raise RunEnded(f"run {run_id} has already ended ({run.status.value})")
        local = self._cancel_signals.get(run_id)
        if local is not None:
            local.set()
            return await self.repo.update_run(run_id, expect=LIVE_STATUSES, cancel_requested=True)
        if run.external or run.lease_owner is None:
            async with self._lock(run_id):
                writer = self._writers.get(run_id)
                if writer is None:
                    try:
                        writer = await self.log.open_writer(run_ref(run), source="server")
                    except WriterBusy:
                        writer = None
                if writer is not None:
                    current = await self.repo.get_run(run_id)
                    if current.status.ended:
                        await writer.close()
                        self._forget(run_id)
                        raise RunEnded(f"run {run_id} has already ended")
                    events = writer.prepare([cancelled_by_request()])
                    return await self._complete_with(current, writer, events)
        # a worker -- or, for an external run, the process holding its writer --
        # sees the flag on its next heartbeat / watch_held_runs
        return await self.repo.update_run(run_id, expect=LIVE_STATUSES, cancel_requested=True)

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
        return _expired_if_missing(
            run, self.log.read(run_ref(run), after_sequence=after_sequence, limit=limit)
        )

    def follow_events(self, run: Run, after_sequence: int = 0) -> AsyncIterator[Chunk]:
        """Replay after ``after_sequence``, then live, until the chunk holding run.completed."""
        return _expired_if_missing(
            run, self.log.follow(run_ref(run), after_sequence=after_sequence)
        )

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

    def search_runs(self, request: SearchRequest) -> AsyncIterator[bytes]:
        """Search across a workspace's runs: NDJSON hit lines, then the done line (search/)."""
        return WorkspaceSearch(self.repo, self.log, request).lines()


async def _expired_if_missing(run: Run, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """An ended run whose log is gone was expired by retention, even if its row lags.

    Retention deletes the body before it marks the row; a crash in between
    leaves ``log_state`` stale, and readers must still answer 410, not 404.
    """
    try:
        async for chunk in chunks:
            yield chunk
    except LogNotFound as exc:
        if run.status.ended:
            raise LogExpired(
                f"the events of run {run.id} were removed by the retention policy"
            ) from exc
        raise


#: reverse of models.TRANSITIONS for the live moves a session may make
_TRANSITIONS_TO: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.BUILDING, RunStatus.RUNNING}),
    RunStatus.BUILDING: frozenset({RunStatus.RUNNING}),
    RunStatus.RUNNING: frozenset(),
}
