"""Producer ingest: batches an external producer appends to its run (contract section 6).

Part of :class:`runevents.manager.RunManager` (it inherits this mixin), kept in
its own module because these steps share one concern -- the hot path of a
producer's batch: validate, judge its idempotency key, number, append, make
durable, keep the row roughly current.

**A 200 means durable.** A batch is committed to the run's atomic writer
under the run's lock, then made durable *outside* it (``writer.sync``), so
concurrent batches share one fsync (group commit). A write or fsync that
fails rolls the batch back -- with every batch committed after it -- and each
gets 503 + Retry-After; none of it is ever in the log.

**Idempotency-Key.** Only the process holding the run's log judges a key
(under the run's lock). The record is stored *before* the batch is
committed, with the SHA-256 of the request body and the ``event_id`` of the
batch's first event; on a retry, the same key with other bytes is 422
``idempotency_key_reused``; with the same bytes, the log is the judge: if it
holds a line with that ``event_id`` at the recorded sequence the stored answer
is replayed, otherwise (the process died before the batch was durable, or it
was rolled back) the record is replaced and the batch appended now. Batches
are atomic across crashes too (recovery cuts a unit that was not written
whole), so no crash point appends a keyed batch twice or acknowledges one
the log lacks. A retry of the batch that ended the run gets its first answer
(the log of an ended run no longer changes, so no owner is needed).
"""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from runevents.eventlog import EventLog
from runevents.events import (
    FINAL_STATUSES,
    MAX_TYPE_CHARS,
    RUN_COMPLETED,
    SERVER_ONLY_TYPES,
    EventDraft,
    decode_event,
    type_problem,
)
from runevents.exceptions import (
    Conflict,
    IdempotencyKeyReused,
    InvalidEvent,
    InvalidInput,
    LogDamaged,
    LogExpired,
    LogNotFound,
    RunEnded,
    StorageError,
    WriterFenced,
)
from runevents.held import HeldRun, run_ref
from runevents.held_runs import HeldRuns
from runevents.models import Run, RunStatus, parse_timestamp, utcnow

if TYPE_CHECKING:
    from runevents.db.repository import IdempotencyRecord, RunRepository
    from runevents.run_masks import RunMasks
    from runevents.settings import Settings

_TYPE_OF = operator.attrgetter("type")

log = logging.getLogger(__name__)

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
    held: HeldRuns
    masks: RunMasks

    if TYPE_CHECKING:
        # provided by RunManager

        async def get_run(self, workspace_id: str, configuration_id: str, run_id: str) -> Run: ...

        async def complete_held(self, held: HeldRun, draft: EventDraft) -> Run: ...

        async def fail_orphan(
            self, run: Run, *, code: str, message: str, expired_lease: bool = False
        ) -> Run | None: ...

    async def ingest(
        self,
        workspace_id: str,
        configuration_id: str,
        run_id: str,
        drafts: Sequence[EventDraft],
        *,
        idempotency_key: str | None = None,
        body_sha256: str | None = None,
        body: bytes | None = None,
    ) -> dict[str, int]:
        """Append a producer's batch atomically and durably; a final ``run.completed``
        finalizes the run. StorageError (503) if it cannot be made durable.

        ``body``: the NDJSON the drafts were decoded from, unchanged (masking
        searches it rather than encoding the drafts again)."""
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidInput(f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters")
        # a malformed batch is refused before any I/O (nothing is appended either way)
        self._validate_batch(drafts)
        async with self.held.lock(run_id):
            held = self.held.get(run_id)
            if held is not None and (
                held.run.workspace_id != workspace_id
                or held.run.configuration_id != configuration_id
            ):
                held = None  # (another path; get_run below answers 404)
            if held is not None and held.lease.lost:
                # another process took the run over: let go now, and take it again (or
                # hear that it is held elsewhere) rather than answer from a stale writer
                await held.release()
                held = None
            # Only held runs are cached: nobody else can append to or finish them,
            # so the cached row is current and the hot path needs no SELECT per batch.
            run = (
                held.run
                if held is not None
                else await self.get_run(workspace_id, configuration_id, run_id)
            )
            # secrets and ::add-mask:: values become *** before anything is stored
            # (run_masks.py)
            drafts = await self.masks.mask_batch(run, drafts, held=held is not None, raw=body)
            record = None
            if idempotency_key is not None:
                # checked before the run's state, so the retry of a batch that
                # ended the run gets its first answer rather than 409
                record = await self.repo.get_idempotency(run_id, idempotency_key)
                if record is not None:
                    if (
                        record.body_sha256 is not None
                        and body_sha256 is not None
                        and record.body_sha256 != body_sha256
                    ):
                        raise IdempotencyKeyReused(
                            f"Idempotency-Key {idempotency_key!r} was used for another batch "
                            "of this run (a different body); use a new key for a new batch"
                        )
                    if run.status.ended:
                        answer = await self._ended_answer(run, record, drafts)
                        if answer is not None:
                            return answer
            if run.status.ended:
                raise RunEnded(f"run {run_id} has already ended ({run.status.value})")
            if not run.external:
                raise Conflict(
                    f"run {run_id} is executed by a worker; only external runs accept events"
                )
            if held is None:
                held = await self.held.take(run, source="producer", atomic=True)
            if held.writer.broken is not None and not held.writer.retry_cut():
                raise StorageError(
                    f"the log of run {run_id} holds an unacknowledged write that cannot be "
                    "cut back yet; retry later"
                )
            if run_id in self.held.damaged:
                # a read (or the summary fold) found damaged bytes: cut them (quarantined,
                # log.recovered) before this batch -- never acknowledge one on a log
                # known to be damaged (StorageError, 503, if the cut fails)
                held = await self.held.repair(held)
            if record is not None and await self._held_answer(held, record, drafts):
                return _stored_answer(record)
            completing = drafts[-1].type == RUN_COMPLETED
            if completing:
                # batches committed before it and still syncing are in the log before
                # run.completed: its summary must count them (wait for their verdict)
                await held.writer.sync()
            while True:
                events = held.writer.prepare(drafts)
                answer = {
                    "first_sequence": events[0].sequence,
                    "last_sequence": events[-1].sequence,
                }
                if idempotency_key is not None:
                    # before the commit: a crash after it must find the key (module doc)
                    await self.repo.put_idempotency(
                        run_id,
                        idempotency_key,
                        answer,
                        body_sha256=body_sha256,
                        first_event_id=events[0].event_id,
                    )
                if held.writer.last_sequence == events[0].sequence - 1:
                    break
                # an earlier batch's fsync failed while the key was stored: its
                # rollback took these sequences back; number the batch again
            if completing:
                try:
                    # the row's completed_at is run.completed's own instant unless the
                    # producer supplied it (the row keeps the server's clock: contract 2)
                    await held.complete(events, server_clock=drafts[-1].created_at is None)
                except LogDamaged:
                    # damage before the checkpoint (a failing disk): cut it, then retry
                    await self.held.recover_fully(held)
                    raise
                except StorageError as exc:
                    if held.writer.durable_sequence < events[-1].sequence:
                        raise  # run.completed is not durable: nothing of the batch is in
                    # The batch is in the log, so its answer is 200 (contract 6: a 503
                    # promises that none of it is). Finishing the row or sealing failed
                    # (the database, the object store): the repair loop finishes it.
                    log.warning(
                        "run %s: run.completed is durable; finishing the run failed (%s), "
                        "the repair loop finishes it", run_id, exc,
                    )  # fmt: skip
                return answer
            ticket = held.writer.commit(events)
        # Outside the lock: batches committed meanwhile share this fsync (group commit).
        try:
            await held.writer.sync(ticket)
        except WriterFenced:
            await self._let_go_lost(held)
            raise
        if run_id in self.held.damaged:
            # damage was found while this batch synced: it lies after the damage, so the
            # cut takes it -- not acknowledged (the keyed retry appends it after the cut)
            raise LogDamaged(
                f"the log of run {run_id} was found damaged; it is being repaired, retry"
            )
        held.last_batch = asyncio.get_running_loop().time()
        # the first batch starts an external run: at its first event's instant when the
        # server stamped it, so a row rebuilt from the log (reindex) is the same row
        await self._after_batch(
            held, events[0].created_at if drafts[0].created_at is None else None
        )
        return answer

    async def _let_go_lost(self, held: HeldRun) -> None:
        """Another process took ``held`` over: drop the stale writer, so reads here go to
        the run's log (the shared tier) and the next batch finds the new owner."""
        async with self.held.lock(held.run.id):
            if self.held.get(held.run.id) is held:
                await held.release()

    async def _after_batch(self, held: HeldRun, began: str | None = None) -> None:
        """Row upkeep after a durable batch: progress, queued -> running, a relayed cancel.

        The batch is durable already: a failure here is logged and retried by the
        next batch or the watch, never turned into a 503 for a stored batch.
        """
        try:
            await self._after_batch_locked(held, began)
        except StorageError as exc:
            log.warning("run %s: row upkeep after a batch failed (%s)", held.run.id, exc)

    async def _after_batch_locked(self, held: HeldRun, began: str | None = None) -> None:
        async with self.held.lock(held.run.id):
            if self.held.get(held.run.id) is not held:
                return  # completed or let go meanwhile
            run = await held.record_progress()
            if run.cancel_requested:
                # a cancel sent to another replica (it could only set the flag;
                # this process holds the writer): this batch is in, the run ends
                # now, and the producer's next batch gets 409
                await self.complete_held(held, cancelled_by_request())
                return
            if run.status is RunStatus.QUEUED:
                # an external run is running as soon as its producer talks
                held.run = await self.repo.update_run(
                    run.id,
                    expect={RunStatus.QUEUED},
                    status=RunStatus.RUNNING,
                    started_at=parse_timestamp(began) if began else utcnow(),
                )

    async def _held_answer(
        self, held: HeldRun, record: IdempotencyRecord, drafts: Sequence[EventDraft]
    ) -> bool:
        """Whether the held log holds the batch ``record`` names (judged by its owner)."""
        writer = held.writer
        first = int(record.answer["first_sequence"])
        if writer.durable_sequence < first <= writer.last_sequence:
            # its first attempt may still be syncing: wait for the verdict
            try:
                await writer.sync()
            except StorageError:
                return False
        if first > writer.durable_sequence:
            return False
        return await self._line_is(held.run, first, record, drafts[0])

    async def _ended_answer(
        self, run: Run, record: IdempotencyRecord, drafts: Sequence[EventDraft]
    ) -> dict[str, int] | None:
        """The first answer for a retried batch of an ended run, if the log holds the batch."""
        answer = _stored_answer(record)
        try:
            if await self._line_is(run, answer["first_sequence"], record, drafts[0]):
                return answer
        except (LogExpired, LogNotFound):
            # retention removed the log of an ended run: the first answer stands
            return answer
        return None

    async def _line_is(
        self,
        run: Run,
        sequence: int,
        record: IdempotencyRecord,
        first: EventDraft | None = None,
    ) -> bool:
        """Does the log hold the batch's first event at ``sequence``?"""
        try:
            async for chunk in self.log.read(run_ref(run), after_sequence=sequence - 1, limit=1):
                return self._first_is(chunk.data, sequence, record, first)
        except LogDamaged as exc:
            self.held.damage_found(run.id, exc.offset)
            raise
        return False

    @staticmethod
    def _first_is(
        data: bytes, sequence: int, record: IdempotencyRecord, first: EventDraft | None
    ) -> bool:
        """Whether the first line of ``data`` is the batch's first event at ``sequence``."""
        line = data.split(b"\n", 1)[0]
        event = decode_event(line)
        if event.sequence != sequence:
            return False
        if record.first_event_id is not None:
            return event.event_id == record.first_event_id
        # a record stored before event ids were kept: the first event must match
        return (
            first is not None
            and (event.type, event.payload)
            == (
                first.type,
                first.payload,
            )
        ) or (first is not None and first.type == RUN_COMPLETED == event.type)

    async def watch_held_runs(self) -> list[Run]:
        """Cancels, producer timeouts and idle writers of the external runs held here.

        A cancel that reaches another replica can only set ``cancel_requested``
        (the writer is here); this re-reads the rows of the held runs and
        completes the flagged ones ``cancelled``. A held run whose row has not
        changed for ``external_idle_timeout_seconds`` is failed
        ``producer_timeout``; one without a batch for
        ``external_writer_release_seconds`` is let go (its writer closed and its
        lease given up, the run still live), so whichever replica gets the
        producer's next batch takes it. Each run is handled on its own: one
        failing never stops the others. Returns the runs it ended.
        """
        ended: list[Run] = []
        for held in list(self.held):
            if not held.run.external:
                continue
            try:
                finished = await self._watch_one(held)
            except Exception:
                log.exception("run %s: watching the held run failed; next round", held.run.id)
                continue
            if finished is not None:
                ended.append(finished)
        return ended

    async def _watch_one(self, held: HeldRun) -> Run | None:
        timeout = self.settings.external_idle_timeout_seconds
        release = self.settings.external_writer_release_seconds
        now = asyncio.get_running_loop().time()
        async with self.held.lock(held.run.id):
            if self.held.get(held.run.id) is not held:
                return None  # completed or let go meanwhile
            row = await self.repo.get_run(held.run.id)
            if row.status.ended:
                # finished by an older owner's completion: the log and row agree now
                await held.release()
                return None
            held.run = row
            if held.lease.lost:
                await held.release()
                return None
            if row.cancel_requested:
                return await self.complete_held(held, cancelled_by_request())
            if timeout and _idle_since(row) >= timeout:
                return await self.complete_held(held, producer_timeout(timeout))
            if release and now - held.last_batch >= release:
                await held.release()
        return None

    async def fail_idle_external_runs(self) -> list[Run]:
        """Fail external runs nobody holds whose producer went silent (``producer_timeout``).

        The held ones are :meth:`watch_held_runs`' job; a run another process
        holds is that process's (skipped).
        """
        timeout = self.settings.external_idle_timeout_seconds
        if not timeout:
            return []
        ended: list[Run] = []
        before = utcnow() - timedelta(seconds=timeout)
        for run in await self.repo.idle_external_runs(before):
            if self.held.get(run.id) is not None:
                continue
            try:
                failed = await self.fail_orphan(
                    run, code="producer_timeout", message=_timeout_message(timeout)
                )
            except Exception:
                log.exception("run %s: failing the idle run failed; next round", run.id)
                continue
            if failed is not None:
                ended.append(failed)
        return ended

    def _validate_batch(self, drafts: Sequence[EventDraft]) -> None:
        """Refuse a batch holding an event a producer may not send (``events.type_problem``,
        the rule a job's structured output follows too).

        A producer's console lines are stored as sent (the summary counts what it
        can read of them): checking every line's values would cost the hot path
        about a tenth of a batch's CPU, and a job's output, which is checked
        (``capture.py``), goes through a per-line path anyway.
        """
        if not drafts:
            raise InvalidEvent("the batch holds no events")
        kinds = set(map(_TYPE_OF, drafts))
        if (
            RUN_COMPLETED not in kinds
            and SERVER_ONLY_TYPES.isdisjoint(kinds)
            and max(map(len, kinds)) <= MAX_TYPE_CHARS
        ):
            return  # the common batch: a few C passes, no Python code per event
        for number, draft in enumerate(drafts, start=1):
            kind = draft.type
            problem = type_problem(kind, executed=False)
            if problem is not None:
                raise InvalidEvent(problem, line=number)
            if kind == RUN_COMPLETED:
                if number != len(drafts):
                    raise InvalidEvent("run.completed must be the last event", line=number)
                status = draft.payload.get("status")
                # (a list or an object is no status either: never hashed, so never a 500)
                if not isinstance(status, str) or status not in FINAL_STATUSES:
                    raise InvalidEvent(
                        "run.completed payload.status must be succeeded, failed or cancelled",
                        line=number,
                    )


def _stored_answer(record: IdempotencyRecord) -> dict[str, int]:
    """A keyed batch's first answer, in the first answer's key order (Postgres' jsonb
    keeps keys sorted by length: a replay's bytes differed from the first answer's)."""
    answer = record.answer
    return {
        "first_sequence": int(answer["first_sequence"]),
        "last_sequence": int(answer["last_sequence"]),
    }


def _idle_since(run: Run) -> float:
    """Seconds since the run's row last changed (a batch, progress, a status change)."""
    return (utcnow() - run.updated_at).total_seconds()
