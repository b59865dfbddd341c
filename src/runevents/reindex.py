"""Reindex: rebuild a run's row from its log alone (``runevents reindex``).

Part of :class:`runevents.manager.RunManager` through ``upkeep.RunUpkeep``
(this mixin is its base), kept in its own module because it is one question
-- what the log says the row is -- asked for a database that was lost or
damaged: everything the row holds must be read back from the log, so that
the rebuilt row is the same row (contract 2). The policy that walks every
log is ``maintenance.reindex``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import msgspec

from runevents.eventlog import EventLog, RunRef
from runevents.eventlog.write_failure import LOST_LINES_KEY, lost_lines
from runevents.events import CONSOLE_LINE, Event, EventDraft, decode_event
from runevents.exceptions import LogNotFound, RunNotFound, WriterMoving
from runevents.held import SERVER_ONLY_EVENTS, HeldRun, final_status, run_ref
from runevents.held_runs import HeldRuns
from runevents.models import LogState, Run, RunStatus, parse_timestamp, utcnow
from runevents.summary import RunSummaryBuilder, row_exit_code, run_fields

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from runevents.db.repository import RunRepository


class _Head(msgspec.Struct):
    type: str


_decode_head = msgspec.json.Decoder(_Head).decode
#: a lost-lines marker's line holds its count's key (a message's quotes are escaped)
_LOST_LINES_JSON = f'"{LOST_LINES_KEY}"'.encode()


def failed_completion(code: str, message: str) -> EventDraft:
    """The server's run.completed of a run nobody is left to finish."""
    return EventDraft(
        type="run.completed",
        payload={"status": "failed", "failure": {"stage": "run", "code": code, "message": message}},
    )


class RunReindex:
    """Rebuild one run's row from its log (the base of ``upkeep.RunUpkeep``)."""

    repo: RunRepository
    log: EventLog
    held: HeldRuns

    if TYPE_CHECKING:
        # provided by RunManager and RunUpkeep

        async def complete_held(self, held: HeldRun, draft: EventDraft) -> Run: ...

        def maintaining(self, run_id: str) -> AbstractAsyncContextManager[None]: ...

    async def reindex_run(self, workspace_id: str, run_id: str) -> Run:
        """``reindex_log``, then the search index of a compressed log (issue 16), under
        the run's maintenance lock (MaintenanceBusy if another process holds it)."""
        async with self.maintaining(run_id):
            if await self.repo.log_deletion_queued(run_id):
                # expired, its body waiting out the delay: the row stays expired (a
                # rebuild from the body would bring back what retention removed)
                return await self.repo.get_run(run_id)
            run = await self.reindex_log(workspace_id, run_id)
            if run.log_state is LogState.COMPRESSED:
                await self.log.index_for_search(run_ref(run))
            return run

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
        began_at: str | None = None  # the first event after run.queued not the server's
        completed_at: str | None = None  # run.completed's
        lost = 0  # lines the server's lost-lines markers say were dropped
        async for chunk in self.log.read(probe):
            for line in chunk.data.split(b"\n")[:-1]:
                head = _decode_head(line)
                if head.type == CONSOLE_LINE and _LOST_LINES_JSON in line:
                    marker = decode_event(line)
                    lost += lost_lines(marker.type, marker.source, marker.payload)
                if first is None:
                    first = decode_event(line)
                elif began_at is None and head.type not in SERVER_ONLY_EVENTS:
                    began_at = decode_event(line).created_at
                builder.add_line(line)
                last_type = head.type
                if head.type == "run.started" and started_at is None:
                    started_at = decode_event(line).created_at
                elif head.type == "run.completed":
                    completed_at = decode_event(line).created_at
        if first is None:
            raise LogNotFound(f"the log of {run_id} is empty")
        queued = first.payload if first.type == "run.queued" else {}
        stats = await self.log.stats(probe)
        state = LogState.COMPRESSED if stats.form == "compressed" else LogState.PLAIN
        created = parse_timestamp(first.created_at)
        external = bool(queued.get("external", False))
        base = Run(
            id=run_id,
            workspace_id=workspace_id,
            configuration_id=first.configuration_id,
            status=RunStatus.QUEUED,
            external=external,
            mode=str(queued.get("mode", "execute")),
            options=dict(queued["options"]) if isinstance(queued.get("options"), dict) else {},
            created_at=created,
            updated_at=utcnow(),
            started_at=parse_timestamp(started_at) if started_at else None,
            events_path=self.log.events_path(RunRef(workspace_id, first.configuration_id, run_id)),
            event_count=stats.event_count,
            events_bytes=stats.bytes,
            log_state=LogState.LIVE,
            # the flag the live row got when the run's lines were dropped (only an
            # executed run's writer drops: in an external run's log a look-alike is a
            # producer's own line)
            logging_degraded=bool(lost) and not external,
        )
        if last_type != "run.completed":
            # A live run. On a live server its row is current (a running job's lease,
            # a producer's progress, started_at): reindex leaves it alone. A missing
            # row (a lost database) is rebuilt as live: queued until anything ran.
            with contextlib.suppress(RunNotFound):
                existing = await self.repo.get_run(run_id)
                if not existing.status.ended:
                    return existing
            if base.external and began_at is not None:
                # an external run runs from its producer's first batch
                started_at = started_at or began_at
            status = RunStatus.RUNNING if started_at else RunStatus.QUEUED
            started = parse_timestamp(started_at) if started_at else None
            live = base.evolve(status=status, started_at=started)
            await self.repo.upsert_run(live)
            current = await self.repo.get_run(run_id)
            if current.external or current.lease_owner is not None or not started_at:
                # a queued run waits for a worker; an external one for its producer
                return current
            async with self.held.lock(run_id):
                if self.held.get(run_id) is not None:
                    return current
                try:
                    held = await self.held.take(current, source="server", atomic=True)
                except WriterMoving:
                    return current  # a live writer holds it: genuinely running
                return await self.complete_held(
                    held,
                    failed_completion(
                        "orphaned",
                        "the log ended without run.completed and no writer holds it "
                        "(found by reindex)",
                    ),
                )
        summary = builder.build()
        if base.external and started_at is None and began_at is not None:
            # an external run runs from its producer's first batch (as the live row says;
            # one that never sent one never started: HeldRun.settle)
            base = base.evolve(started_at=parse_timestamp(began_at))
        # the live row's completed_at is run.completed's own instant (when the server
        # stamped it: HeldRun.complete), so the rebuilt row is the same row
        assert completed_at is not None  # last_type is run.completed
        run = base.evolve(
            status=final_status(summary),  # as HeldRun.settle finished the live row
            exit_code=row_exit_code(summary),
            completed_at=parse_timestamp(completed_at),
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
        await self.repo.upsert_run(run)
        return run
