"""RunSession: the executor's handle on a run this process executes.

The worker gets one from ``RunManager.start_session`` after claiming a run;
it holds the run's writer for the whole execution and implements the
executor's ``EventSink``. Every state change still goes through the manager.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from runevents.eventlog import RunWriter
from runevents.events import EventDraft
from runevents.models import Run, RunStatus

if TYPE_CHECKING:
    from runevents.manager import RunManager


class RunSession:
    """The executor's handle on a run it executes (implements ``executor.EventSink``)."""

    def __init__(
        self, manager: RunManager, run: Run, writer: RunWriter, cancel: asyncio.Event
    ) -> None:
        self.manager = manager
        self.run = run
        self.writer = writer
        #: set when the run is cancelled (locally at once, remotely via the heartbeat)
        self.cancel = cancel

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        """Append the executor's events (sequence assigned by the writer)."""
        if not drafts:
            return
        self.run = await self.manager.append_executed(self.run, self.writer, drafts)

    async def set_status(self, status: RunStatus) -> None:
        """Move the run to building/running."""
        self.run = await self.manager.set_status(self.run, status)

    async def complete(
        self,
        *,
        status: str,
        failure: dict[str, Any] | None,
        execution: dict[str, Any] | None,
    ) -> Run:
        """Write run.completed and finish the row; ends the session."""
        try:
            self.run = await self.manager.complete_run(
                self.run, self.writer, status=status, failure=failure, execution=execution
            )
            return self.run
        finally:
            self.manager.end_session(self.run.id)

    async def abandon(self) -> None:
        """Release the writer without completing (worker shutdown; the lease reaper finishes it)."""
        self.manager.end_session(self.run.id)
        await self.writer.close()
