"""SummaryFold: a held run's summary, folded as its events become durable (held.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import msgspec

from runevents.eventlog import EventLog, RunRef
from runevents.events import Event
from runevents.exceptions import LogDamaged
from runevents.summary import RunSummaryBuilder

#: a chunk of the log at least this big is folded in a thread (off the event loop)
BIG_CHUNK = 16 * 1024


class _Boundary(msgspec.Struct):
    """The two envelope fields a checkpoint's boundary line is checked by."""

    event_id: str
    sequence: int


_BOUNDARY = msgspec.json.Decoder(_Boundary)


@dataclasses.dataclass(slots=True)
class FoldCheckpoint:
    """The fold of a run this process let go: its builder holds the events
    ``1..sequence``, and the last of them has ``event_id``."""

    builder: RunSummaryBuilder
    sequence: int
    event_id: str


class SummaryFold:
    """The run summary of a held run, folded as its events become durable.

    A run held from its creation folds every event as it is appended. A run
    taken over mid-way (a worker's claimed run too: its log holds run.queued)
    folds its existing log in the background (yielding between chunks). Units
    that become durable meanwhile are not kept: only the sequence of the last
    one is (``_behind``), and the background fold reads on in the log up to it;
    once it has caught up it hands over, in the same loop step, to folding each
    unit as it becomes durable. So memory stays bounded however many events a
    run appends (once, every unit of a claimed run was kept in a list nobody
    emptied before completion). Completion waits for the fold, so it never
    re-reads the log on the event loop.

    A durable unit is folded just after the batch's answer is on its way, not
    before (``call_soon``): the fold (about 0.5 ms per 1,000 console lines)
    then runs while the producer reads the answer and sends its next batch,
    instead of adding to every batch's round trip. Whoever reads the builder
    goes through :meth:`ready`, which folds what is still pending first.

    A run this process let go keeps its fold (:class:`FoldCheckpoint`: the
    builder and the sequence and event id of the last event in it; kept by
    ``HeldRuns.keep_fold``, for a bounded number of runs). Taking the run again
    folds only the log after that event, once the log's line of that sequence
    is found to be that very event (any doubt: the whole log, as without a
    checkpoint). Once, every take of a released run re-read its whole log: a
    producer pausing past ``external_writer_release_seconds`` cost a 300 MB
    run 3-10 s of CPU per batch. The background fold hands each chunk of a big
    log to a thread (``BIG_CHUNK``), so the event loop is never held by it.

    A fold of a taken-over log that meets damaged bytes (LogDamaged, a block
    before the checkpoint) stops and says so through ``on_damaged``: the
    damage is then known, and no batch is acknowledged before the owner cut it.
    """

    def __init__(
        self,
        event_log: EventLog,
        ref: RunRef,
        existing: int,
        on_damaged: Callable[[LogDamaged], None] | None = None,
        checkpoint: FoldCheckpoint | None = None,
    ) -> None:
        self.builder = RunSummaryBuilder()
        #: (sequence, event_id) of the last event folded or handed over (None: unknown)
        self.last: tuple[int, str] | None = None
        #: a checkpoint whose boundary the background fold checks before it goes on from it
        self._checkpoint = checkpoint if checkpoint is not None and existing else None
        #: the background fold of the log (None once it has caught up)
        self._task: asyncio.Task[None] | None = None
        #: the sequence of the last unit made durable while the background fold runs
        #: (it reads the log up to there before it hands over)
        self._behind = existing
        #: durable units not folded yet (folded by the next loop iteration, or by ready())
        self._pending: list[list[Event]] = []
        #: the damage the background fold met (ready() raises it)
        self.damaged: LogDamaged | None = None
        self._on_damaged = on_damaged
        if existing:
            self._task = asyncio.create_task(self._fold_log(event_log, ref))

    async def _resume(self, event_log: EventLog, ref: RunRef) -> int:
        """The sequence the kept checkpoint lets the fold go on from (its builder taken),
        or 0: no checkpoint, or the log's line of its sequence is not its event."""
        checkpoint, self._checkpoint = self._checkpoint, None
        if checkpoint is None or not 0 < checkpoint.sequence <= self._behind:
            return 0
        found: _Boundary | None = None
        async for chunk in event_log.read(ref, after_sequence=checkpoint.sequence - 1, limit=1):
            try:
                found = _BOUNDARY.decode(chunk.data)
            except msgspec.DecodeError:
                found = None
            break
        if found is None or (found.sequence, found.event_id) != (
            checkpoint.sequence,
            checkpoint.event_id,
        ):
            return 0  # the log is not the one the checkpoint was folded from: all of it
        self.builder = checkpoint.builder
        self.last = (checkpoint.sequence, checkpoint.event_id)
        return checkpoint.sequence

    async def _fold_log(self, event_log: EventLog, ref: RunRef) -> None:
        try:
            folded = await self._resume(event_log, ref)  # the events 1..folded are folded
            while folded < self._behind:
                before = folded
                async for chunk in event_log.read(
                    ref, after_sequence=folded, limit=self._behind - folded
                ):
                    if len(chunk.data) >= BIG_CHUNK:
                        # off the event loop: nobody touches the builder while this task runs
                        await asyncio.to_thread(self.builder.add_chunk, chunk.data)
                    else:
                        self.builder.add_chunk(chunk.data)
                        await asyncio.sleep(0)  # one chunk at a time
                    folded = chunk.last_sequence
                if folded == before:
                    break  # (the log holds no more: never spin)
        except LogDamaged as exc:
            self.damaged = exc
            if self._on_damaged is not None:
                self._on_damaged(exc)
            return
        # caught up: from now on each unit is folded as it becomes durable (no await
        # between the last read and this, so no unit falls in between)
        self._task = None

    def add(self, events: list[Event]) -> None:
        """Fold one durable commit unit (called by the writer, in log order)."""
        last = events[-1]
        self.last = (last.sequence, last.event_id)
        if self._task is not None:
            # the background fold reads it from the log (it is durable, so readable)
            self._behind = events[-1].sequence
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._fold_pending)
        self._pending.append(events)

    def _fold_pending(self) -> None:
        pending, self._pending = self._pending, []
        for events in pending:
            self.builder.add_events(events)

    async def ready(self) -> RunSummaryBuilder:
        """The builder, with everything durable so far folded in."""
        task = self._task
        if task is not None:
            await task
        if self.damaged is not None:
            raise self.damaged
        self._fold_pending()
        return self.builder

    def checkpoint(self) -> FoldCheckpoint | None:
        """The fold as it is, to go on from when the run is taken again (the run is being
        let go: its writer closed, every unit durable); None if it has not caught up with
        the log, met damage, or does not know its last event."""
        if self._task is not None or self.damaged is not None or self.last is None:
            return None
        self._fold_pending()
        sequence, event_id = self.last
        return FoldCheckpoint(self.builder, sequence, event_id)

    def cancel(self) -> None:
        """Stop a background fold (the run is let go)."""
        if self._task is not None:
            self._task.cancel()
