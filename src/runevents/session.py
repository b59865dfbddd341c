"""RunSession: the executor's handle on a run this process executes.

The worker gets one from ``RunManager.start_session`` after claiming a run;
it wraps the run's :class:`~runevents.held.HeldRun` (writer, lease, summary)
for the whole execution and implements the executor's ``EventSink``. Every
state change still goes through the manager.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runevents.eventlog import RunWriter
from runevents.events import EventDraft
from runevents.models import Run, RunStatus

if TYPE_CHECKING:
    from runevents.held import HeldRun
    from runevents.manager import RunManager


class RunSession:
    """The executor's handle on a run it executes (implements ``executor.EventSink``)."""

    def __init__(self, manager: RunManager, held: HeldRun, cancel: asyncio.Event) -> None:
        self.manager = manager
        self.held = held
        #: set when the run is cancelled (locally at once, remotely via the heartbeat)
        self.cancel = cancel
        #: the outcome of the last complete() call, for settle() after a failure
        self._outcome: dict[str, Any] | None = None

    @property
    def run(self) -> Run:
        """The run's row as this process last saw it."""
        return self.held.run

    @property
    def writer(self) -> RunWriter:
        """The run's writer (buffered: an executor's lines were promised to nobody)."""
        return self.held.writer

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        """Append the executor's events (sequence assigned by the writer)."""
        if drafts:
            await self.manager.append_executed(self, list(drafts))

    async def set_status(self, status: RunStatus, *, at: datetime | None = None) -> None:
        """Move the run to building/running (``at``: when it started running)."""
        self.held.run = await self.manager.set_status(self.held.run, status, at=at)

    async def complete(
        self,
        *,
        status: str,
        failure: dict[str, Any] | None,
        execution: dict[str, Any] | None,
    ) -> Run:
        """Write run.completed and finish the row (StorageError: retry with :meth:`settle`)."""
        self._outcome = {"status": status, "failure": failure, "execution": execution}
        return await self.manager.complete_run(
            self, status=status, failure=failure, execution=execution
        )

    async def settle(self) -> Run:
        """Finish a completion that failed half-way: write run.completed again if it never
        made it into the log, else finish the row and seal."""
        if not self.writer.ended and self._outcome is not None:
            return await self.complete(**self._outcome)
        return await self.manager.settle_session(self)

    async def check_owned(self) -> None:
        """WriterFenced if this process lost the run (its writer lease moved on: taken
        over while it was paused); StorageError if the database cannot say."""
        await self.held.lease.ensure()

    async def abandon(self) -> None:
        """Let go without completing (worker shutdown; the lease reaper finishes it)."""
        await self.manager.abandon(self)
