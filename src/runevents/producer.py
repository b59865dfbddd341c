"""Producer ingest: batches an external producer appends to its run (contract section 6).

Part of :class:`runevents.manager.RunManager` (it inherits this mixin), kept in
its own module because these steps share one concern -- the hot path of a
producer's batch: validate, number, append, flush, keep the row roughly
current, and answer a retried batch exactly once.

Idempotency (``Idempotency-Key``): the answer is stored *before* the batch is
appended, and the log decides whether it holds. A retry whose stored answer
names events the log really holds (same types and payloads at those
sequences) gets that answer back; a stored answer the log does not bear out
-- the process died between storing it and appending, or the append was
refused -- is dropped and the batch is appended now. So a crash anywhere in
between never appends a batch twice and never acknowledges one that is not
in the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from runevents.eventlog import EventLog, RunWriter
from runevents.events import RUN_COMPLETED, EventDraft, decode_event
from runevents.exceptions import (
    Conflict,
    InvalidEvent,
    InvalidInput,
    LogExpired,
    LogNotFound,
    RunEnded,
    StorageError,
)
from runevents.models import Run, RunStatus, utcnow
from runevents.upkeep import LIVE_STATUSES, run_ref

if TYPE_CHECKING:
    from runevents.db.repository import RunRepository
    from runevents.events import Event
    from runevents.run_masks import RunMasks
    from runevents.settings import Settings

#: event types only the server writes; producers may not send them
SERVER_ONLY_TYPES = frozenset({"run.queued"})
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
#: a live run's event_count is written to its row at most this often (seconds)
PROGRESS_SECONDS = 1.0
#: ``Idempotency-Key`` longer than this is rejected (characters)
MAX_IDEMPOTENCY_KEY = 200


def producer_timeout(seconds: float) -> EventDraft:
    """The ``run.completed`` of an external run whose producer went silent."""
    return EventDraft(
        type=RUN_COMPLETED,
        payload={
            "status": "failed",
            "failure": {
                "stage": "run",
                "code": "producer_timeout",
                "message": _timeout_message(seconds),
            },
        },
    )


def _timeout_message(seconds: float) -> str:
    return f"no events from the producer for {seconds:g} s"


def cancelled_by_request() -> EventDraft:
    """The ``run.completed`` of a run cancelled by a user's request."""
    return EventDraft(
        type=RUN_COMPLETED,
        payload={
            "status": "cancelled",
            "failure": {"stage": "run", "code": "cancelled", "message": "cancelled by request"},
        },
    )


class ProducerIngest:
    """The ingest steps of ``RunManager`` (mixed into it)."""

    settings: Settings
    repo: RunRepository
    log: EventLog
    _writers: dict[str, RunWriter]
    _held: dict[str, Run]
    _progress_at: dict[str, float]
    _last_batch: dict[str, float]
    masks: RunMasks

    if TYPE_CHECKING:
        # provided by RunManager

        def _lock(self, run_id: str) -> asyncio.Lock: ...

        def _forget(self, run_id: str) -> None: ...

        async def get_run(self, workspace_id: str, configuration_id: str, run_id: str) -> Run: ...

        async def _complete_with(self, run: Run, writer: RunWriter, events: list[Event]) -> Run: ...

        async def fail_orphan(self, run: Run, *, code: str, message: str) -> Run | None: ...

    async def ingest(
        self,
        workspace_id: str,
        configuration_id: str,
        run_id: str,
        drafts: Sequence[EventDraft],
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, int]:
        """Append a producer's batch atomically; a final ``run.completed`` finalizes the run."""
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidInput(f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters")
        # a malformed batch is refused before any I/O (nothing is appended either way)
        self._validate_batch(drafts)
        async with self._lock(run_id):
            run = self._held.get(run_id)
            if (
                run is None
                or run.workspace_id != workspace_id
                or run.configuration_id != configuration_id
            ):
                # Only runs whose writer this process holds are cached: nobody
                # else can append to or finish them, so the cached row is current
                # and the hot path needs no SELECT per batch.
                run = await self.get_run(workspace_id, configuration_id, run_id)
            # secrets and ::add-mask:: values become *** before anything is stored (run_masks.py)
            drafts = await self.masks.mask_batch(run, drafts, held=run_id in self._held)
            if idempotency_key is not None:
                # checked before the run's state, so the retry of a batch that
                # ended the run gets its first answer rather than 409
                answer = await self._replayed_answer(run, idempotency_key, drafts)
                if answer is not None:
                    return answer
            if run.status.ended:
                raise RunEnded(f"run {run_id} has already ended ({run.status.value})")
            if not run.external:
                raise Conflict(
                    f"run {run_id} is executed by a worker; only external runs accept events"
                )
            writer = await self._writer_for(run)
            if writer.buffer_full:
                # the disk is failing and the retry buffer is full: a batch is
                # all-or-nothing, so refuse it whole (503) rather than drop part
                raise StorageError(
                    "the log storage is failing and its retry buffer is full; retry later"
                )
            events = writer.prepare(drafts)
            answer = {"first_sequence": events[0].sequence, "last_sequence": events[-1].sequence}
            if idempotency_key is not None:
                # before the append: a crash after it must find the key (see the module doc)
                await self.repo.put_idempotency(run_id, idempotency_key, answer)
            if events[-1].type == RUN_COMPLETED:
                await self._complete_with(run, writer, events)
            else:
                await writer.commit(events)
                # read-your-writes: an acknowledged batch is readable at once
                await writer.flush()
                if writer.degraded and not run.logging_degraded:
                    run = await self.repo.update_run(run_id, logging_degraded=True)
                run = await self._record_progress(run, writer)
                if run.cancel_requested:
                    # a cancel sent to another replica (it could only set the
                    # flag; this process holds the writer): this batch is in,
                    # the run ends now, and the producer's next batch gets 409
                    await self._complete_with(run, writer, writer.prepare([cancelled_by_request()]))
                    return answer
                if run.status is RunStatus.QUEUED:
                    # an external run is running as soon as its producer talks
                    run = await self.repo.update_run(
                        run_id,
                        expect={RunStatus.QUEUED},
                        status=RunStatus.RUNNING,
                        started_at=utcnow(),
                    )
                self._held[run_id] = run
                self._last_batch[run_id] = asyncio.get_running_loop().time()
            return answer

    async def watch_held_runs(self) -> list[Run]:
        """Cancels and producer timeouts of the external runs whose writer this process holds.

        A cancel that reaches another replica can only set ``cancel_requested``
        (the writer is here); this re-reads the rows of the held runs and
        completes the flagged ones ``cancelled`` -- for a producer that is idle
        as much as for a busy one (whose next progress update also sees the
        flag). A held run whose row has not changed for
        ``external_idle_timeout_seconds`` is failed ``producer_timeout``; one
        without a batch for ``external_writer_release_seconds`` is let go (the
        writer closed, the run still live), so whichever replica gets the
        producer's next batch can take it. The app calls this periodically.
        Returns the runs it ended.
        """
        ended: list[Run] = []
        timeout = self.settings.external_idle_timeout_seconds
        release = self.settings.external_writer_release_seconds
        now = asyncio.get_running_loop().time()
        for run_id in list(self._held):
            async with self._lock(run_id):
                writer = self._writers.get(run_id)
                if run_id not in self._held or writer is None:
                    continue  # completed meanwhile
                row = await self.repo.get_run(run_id)
                if row.status.ended:
                    # only the writer's holder can end it; release rather than guess
                    await writer.close()
                    self._forget(run_id)
                elif row.cancel_requested:
                    events = writer.prepare([cancelled_by_request()])
                    ended.append(await self._complete_with(row, writer, events))
                elif timeout and _idle_since(row) >= timeout:
                    events = writer.prepare([producer_timeout(timeout)])
                    ended.append(await self._complete_with(row, writer, events))
                elif (
                    release
                    and not writer.degraded  # its retry buffer must not be dropped
                    and now - self._last_batch.setdefault(run_id, now) >= release
                ):
                    await self._record_progress(row, writer, force=True)
                    await self._release(run_id, writer)
                else:
                    self._held[run_id] = row
        return ended

    async def _release(self, run_id: str, writer: RunWriter) -> None:
        """Close a live external run's writer (flushed; the run stays live). Caller holds the lock.

        The run's lock stays in place: a batch already waiting on it must
        serialize with whoever comes next, and it reopens the writer itself.
        """
        await writer.close()
        self._writers.pop(run_id, None)
        self._held.pop(run_id, None)
        self._last_batch.pop(run_id, None)
        self._progress_at.pop(run_id, None)

    async def fail_idle_external_runs(self) -> list[Run]:
        """Fail external runs nobody holds whose producer went silent (``producer_timeout``).

        The held ones are :meth:`watch_held_runs`' job; a run whose writer
        another live process holds is that process's (WriterBusy: skipped).
        """
        timeout = self.settings.external_idle_timeout_seconds
        if not timeout:
            return []
        ended: list[Run] = []
        before = utcnow() - timedelta(seconds=timeout)
        for run in await self.repo.idle_external_runs(before):
            if run.id in self._held:
                continue
            # the lease reaper's step: None when a live writer still holds the run
            failed = await self.fail_orphan(
                run, code="producer_timeout", message=_timeout_message(timeout)
            )
            if failed is not None:
                ended.append(failed)
        return ended

    async def _replayed_answer(
        self, run: Run, key: str, drafts: Sequence[EventDraft]
    ) -> dict[str, int] | None:
        """The stored answer for ``key`` if the log holds that batch; else None (and forget it)."""
        stored = await self.repo.get_idempotency(run.id, key)
        if stored is None:
            return None
        answer = {k: int(v) for k, v in stored.items()}
        first, last = answer["first_sequence"], answer["last_sequence"]
        if last - first + 1 == len(drafts):
            try:
                if await self._log_holds(run, first, drafts):
                    return answer
            except (LogExpired, LogNotFound):
                # retention removed the log of an ended run: nothing to compare
                # with, and nothing can be appended either; the first answer stands
                if run.status.ended:
                    return answer
                raise
        # the key was stored but its batch never reached the log
        await self.repo.delete_idempotency(run.id, key)
        return None

    async def _log_holds(self, run: Run, first: int, drafts: Sequence[EventDraft]) -> bool:
        """Does the log hold ``drafts`` from sequence ``first`` on (same types and payloads)?"""
        if run.id in self._writers:
            await self._writers[run.id].flush()
        expected = iter(drafts)
        count = 0
        async for chunk in self.log.read(run_ref(run), after_sequence=first - 1, limit=len(drafts)):
            for line in chunk.data.split(b"\n")[:-1]:
                event = decode_event(line)
                draft = next(expected, None)
                if draft is None or event.sequence != first + count or event.type != draft.type:
                    return False
                # run.completed gets its summary and artifacts added by the server
                if event.type != RUN_COMPLETED and event.payload != draft.payload:
                    return False
                count += 1
        return count == len(drafts)

    def _validate_batch(self, drafts: Sequence[EventDraft]) -> None:
        if not drafts:
            raise InvalidEvent("the batch holds no events")
        for number, draft in enumerate(drafts, start=1):
            if draft.type in SERVER_ONLY_TYPES:
                raise InvalidEvent(f"{draft.type} is written by the server only", line=number)
            if draft.type == RUN_COMPLETED:
                if number != len(drafts):
                    raise InvalidEvent("run.completed must be the last event", line=number)
                status = draft.payload.get("status")
                if status not in FINAL_STATUSES:
                    raise InvalidEvent(
                        "run.completed payload.status must be succeeded, failed or cancelled",
                        line=number,
                    )

    async def _writer_for(self, run: Run) -> RunWriter:
        writer = self._writers.get(run.id)
        if writer is None:
            writer = await self.log.open_writer(run_ref(run), source="producer")
            self._writers[run.id] = writer
        return writer

    async def _record_progress(self, run: Run, writer: RunWriter, *, force: bool = False) -> Run:
        """Keep ``event_count``/``events_bytes`` of a live run roughly current.

        At most one UPDATE per run per ``PROGRESS_SECONDS`` (the row must not
        turn into a per-event write path), so lists and UIs can show progress
        and start a live view near the end of a long run.
        """
        now = asyncio.get_running_loop().time()
        if not force and now - self._progress_at.get(run.id, 0.0) < PROGRESS_SECONDS:
            return run
        self._progress_at[run.id] = now
        if writer.last_sequence == run.event_count:
            return run
        return await self.repo.update_run(
            run.id,
            expect=LIVE_STATUSES,
            event_count=writer.last_sequence,
            events_bytes=writer.bytes_written,
        )


def _idle_since(run: Run) -> float:
    """Seconds since the run's row last changed (a batch, progress, a status change)."""
    return (utcnow() - run.updated_at).total_seconds()
