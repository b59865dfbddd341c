"""Run upkeep: the per-run steps of recovery and maintenance.

Part of :class:`runevents.manager.RunManager` (it inherits this mixin), kept
in its own module because these steps share one concern -- bringing a run's
row and its log back in line after time or failure: finishing runs whose
worker died, compacting and expiring logs, and rebuilding rows from logs
(``reindex``). The policies that choose *which* runs live in
``maintenance.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from runevents import metrics
from runevents.eventlog import EventLog, RunRef, RunWriter
from runevents.events import Event, EventDraft, decode_event
from runevents.exceptions import LogNotFound, RunEnded, StorageError, WriterBusy
from runevents.models import ENDED_STATUSES, LogState, Run, RunStatus, utcnow
from runevents.summary import RunSummaryBuilder, run_fields

if TYPE_CHECKING:
    from runevents.db.repository import RunRepository
    from runevents.settings import Settings

#: statuses a run can be finished from (the conditional UPDATE's expectation)
LIVE_STATUSES = frozenset(RunStatus) - ENDED_STATUSES


class _Head(msgspec.Struct):
    type: str


_decode_head = msgspec.json.Decoder(_Head).decode


def parse_timestamp(value: str) -> datetime:
    """An envelope timestamp (RFC 3339) as an aware UTC datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def run_ref(run: Run) -> RunRef:
    """The log address of a run."""
    return RunRef(
        workspace_id=run.workspace_id, configuration_id=run.configuration_id, run_id=run.id
    )


class RunUpkeep:
    """Recovery and maintenance steps for one run (mixed into ``RunManager``)."""

    settings: Settings
    repo: RunRepository
    log: EventLog
    _writers: dict[str, RunWriter]

    if TYPE_CHECKING:
        # provided by RunManager

        def _lock(self, run_id: str) -> asyncio.Lock: ...

        async def _summarize(self, run: Run, pending: Sequence[Event]) -> RunSummaryBuilder: ...

        async def _complete_with(self, run: Run, writer: RunWriter, events: list[Event]) -> Run: ...

    async def reap_expired_leases(self, reaper_id: str = "reaper") -> list[Run]:
        """Finish runs whose worker stopped heart-beating as failed, with the reason.

        Each expired run is first claimed (``claim_expired``) so that of several
        reapers -- on several machines -- only one acts on it; then the writer
        lock decides whether its old owner is really gone.
        """
        reaped: list[Run] = []
        for run in await self.repo.expired_leases():
            expired = run.lease_expires_at.isoformat() if run.lease_expires_at else "unknown"
            owner = run.lease_owner
            if (
                await self.repo.claim_expired(run.id, reaper_id, self.settings.lease_seconds)
                is None
            ):
                continue
            finished = await self.fail_orphan(
                run,
                code="worker_lost",
                message=(f"worker {owner} stopped heart-beating; its lease expired at {expired}"),
            )
            if finished is not None:
                reaped.append(finished)
                metrics.run_reaped()  # metrics hook
        return reaped

    async def fail_orphan(self, run: Run, *, code: str, message: str) -> Run | None:
        """Finish a run whose executor is gone (lease expired, or orphaned log) as failed.

        Returns None if a live writer still holds the run (it is not orphaned).
        """
        async with self._lock(run.id):
            try:
                writer = self._writers.get(run.id) or await self.log.open_writer(
                    run_ref(run), source="server"
                )
            except WriterBusy:
                return None
            current = await self.repo.get_run(run.id)
            if current.status.ended:
                await writer.close()
                return None
            try:
                events = writer.prepare(
                    [
                        EventDraft(
                            type="run.completed",
                            payload={
                                "status": "failed",
                                "failure": {"stage": "run", "code": code, "message": message},
                            },
                        )
                    ]
                )
            except RunEnded:
                # the log already ends with run.completed: only the row lagged behind
                await writer.close()
                return await self._finish_row_from_log(current)
            return await self._complete_with(current, writer, events)

    async def _finish_row_from_log(self, run: Run) -> Run:
        builder = await self._summarize(run, ())
        summary = builder.build()
        stats = await self.log.stats(run_ref(run))
        fields: dict[str, Any] = {
            "status": RunStatus(summary.get("status") or "failed"),
            "completed_at": utcnow(),
            "summary": summary,
            "failure": summary.get("failure"),
            "last_console_snippet": builder.console_snippet or None,
            "event_count": stats.event_count,
            "events_bytes": stats.bytes,
            "log_state": LogState.PLAIN,
            "lease_owner": None,
            "lease_expires_at": None,
            **run_fields(summary),
        }
        return await self.repo.update_run(run.id, expect=LIVE_STATUSES, **fields)

    # ------------------------------------------------------------------ maintenance (per run)
    async def compact_run(self, run: Run) -> tuple[int, int] | None:
        """Compress an ended run's plain log; returns (bytes before, bytes after) or None.

        Crash-safe order: the compressed form is written and verified beside the
        plain log (``EventLog.compact``); a journal entry names the run; the row
        points at the compressed form; the plain log is deleted; the entry goes.
        A kill -9 at any step leaves a readable log (readers take the plain form
        while it exists) and a row that matches a form in storage; the next
        pass finishes from the journal what was left half done. None when the
        run is live or its log is no longer plain (another pass got there first).
        """
        from runevents.maintenance import CompactionJournal  # the policy owns the journal

        # the caller's row may be a page old: act on the current one
        run = await self.repo.get_run(run.id)
        if not run.status.ended or run.log_state is not LogState.PLAIN:
            return None
        ref = run_ref(run)
        info = await self.log.compact(ref)
        journal = CompactionJournal(self.log)
        await asyncio.to_thread(journal.add, run.id)
        await self.repo.update_run(
            run.id,
            log_state=LogState.COMPRESSED,
            events_path=info.events_path,
            events_bytes=info.bytes,
        )
        try:
            await self.log.drop_plain(ref)
        except StorageError:
            if (await self.log.stats(ref)).form is not None:
                raise
            # Retention (another process) deleted every form after we compacted
            # and before our row update, which then undid its ``expired``: only
            # delete removes both forms, so the row must say expired again.
            await self.repo.update_run(run.id, log_state=LogState.EXPIRED)
            journal.remove(run.id)
            return None
        journal.remove(run.id)
        return info.source_bytes, info.bytes

    async def expire_run(self, run: Run) -> int | None:
        """Delete an ended run's log body (retention); the row and summary stay.

        Delete first, then mark: a crash in between leaves a row that still says
        plain/compressed with no body, and the next retention pass (the run still
        qualifies) deletes nothing more and marks it. The other order could leave
        an ``expired`` row whose body no pass would ever look at again.
        Returns the bytes freed, or None if the run is live or already expired.
        An ended run never becomes live again, so ``run`` may be a page old.
        """
        if not run.status.ended or run.log_state is LogState.EXPIRED:
            return None
        await self.log.delete(run_ref(run))
        await self.repo.update_run(run.id, log_state=LogState.EXPIRED)
        return run.events_bytes

    async def reindex_log(self, workspace_id: str, run_id: str) -> Run:
        """Rebuild one run row (status, summary, derived fields) from its log alone.

        A log without ``run.completed`` whose writer is gone is an orphan: it is
        completed here as failed, with the reason, so no run stays live forever.
        """
        probe = RunRef(workspace_id=workspace_id, configuration_id="_", run_id=run_id)
        builder = RunSummaryBuilder()
        first: Event | None = None
        last_type = ""
        started_at: str | None = None
        async for chunk in self.log.read(probe):
            for line in chunk.data.split(b"\n")[:-1]:
                if first is None:
                    first = decode_event(line)
                builder.add_line(line)
                head = _decode_head(line)
                last_type = head.type
                if head.type == "run.started" and started_at is None:
                    started_at = decode_event(line).created_at
        if first is None:
            raise LogNotFound(f"the log of {run_id} is empty")
        queued = first.payload if first.type == "run.queued" else {}
        stats = await self.log.stats(probe)
        state = LogState.COMPRESSED if stats.form == "compressed" else LogState.PLAIN
        created = parse_timestamp(first.created_at)
        base = Run(
            id=run_id,
            workspace_id=workspace_id,
            configuration_id=first.configuration_id,
            status=RunStatus.QUEUED,
            external=bool(queued.get("external", False)),
            mode=str(queued.get("mode", "execute")),
            options=dict(queued["options"]) if isinstance(queued.get("options"), dict) else {},
            created_at=created,
            updated_at=utcnow(),
            started_at=parse_timestamp(started_at) if started_at else None,
            events_path=self.log.events_path(RunRef(workspace_id, first.configuration_id, run_id)),
            event_count=stats.event_count,
            events_bytes=stats.bytes,
            log_state=LogState.LIVE,
        )
        if last_type != "run.completed":
            ref = run_ref(base)
            try:
                writer = await self.log.open_writer(ref, source="server")
            except WriterBusy:
                # a live writer holds it: the run is genuinely running
                status = RunStatus.RUNNING if started_at else RunStatus.QUEUED
                run = base.evolve(status=status)
                await self.repo.upsert_run(run)
                return run
            await self.repo.upsert_run(base.evolve(status=RunStatus.RUNNING))
            events = writer.prepare(
                [
                    EventDraft(
                        type="run.completed",
                        payload={
                            "status": "failed",
                            "failure": {
                                "stage": "run",
                                "code": "orphaned",
                                "message": "the log ended without run.completed and no "
                                "writer holds it (found by reindex)",
                            },
                        },
                    )
                ]
            )
            return await self._complete_with(base.evolve(status=RunStatus.RUNNING), writer, events)
        summary = builder.build()
        execution = summary.get("execution") or {}
        exit_code = execution.get("exit_code")
        completed_at = execution.get("completed_at")
        run = base.evolve(
            status=RunStatus(summary["status"]),
            exit_code=exit_code if isinstance(exit_code, int) else None,
            completed_at=parse_timestamp(completed_at)
            if isinstance(completed_at, str)
            else utcnow(),
            summary=summary,
            failure=summary.get("failure"),
            last_console_snippet=builder.console_snippet or None,
            log_state=state,
            **run_fields(summary),
        )
        if state is LogState.COMPRESSED:
            # the row points at the form that exists (as compact_run leaves it)
            from runevents.eventlog import object_url

            keys = self.log.keys(run_ref(run))
            local = self.log.store.local_path(keys.compressed)
            run = run.evolve(
                events_path=str(local)
                if local is not None
                else object_url(self.log.store, keys.compressed)
            )
        if run.started_at is None:
            run = run.evolve(started_at=run.completed_at)
        await self.repo.upsert_run(run)
        return run
