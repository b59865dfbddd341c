"""Event sinks and process checks shared by the executor tests."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psutil

from runevents.events import EventDraft
from runevents.models import RunStatus


class ListSink:
    """Keeps every draft and status move, in order; counts emit calls."""

    def __init__(self) -> None:
        self.events: list[EventDraft] = []
        self.statuses: list[RunStatus] = []
        self.calls = 0
        #: set at each emit, so a test can wait for output to arrive
        self.changed = asyncio.Event()

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        self.calls += 1
        self.events.extend(drafts)
        self.changed.set()

    async def set_status(self, status: RunStatus, *, at: datetime | None = None) -> None:
        self.statuses.append(status)

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def of(self, kind: str) -> list[EventDraft]:
        return [e for e in self.events if e.type == kind]

    def console(self, stream: str | None = None, scope: str | None = None) -> list[dict[str, Any]]:
        return [
            e.payload
            for e in self.events
            if e.type == "console.line"
            and (stream is None or e.payload["stream"] == stream)
            and (scope is None or e.payload["scope"] == scope)
        ]

    def messages(self, stream: str | None = None, scope: str | None = None) -> list[str]:
        return [p["message"] for p in self.console(stream, scope)]

    async def wait_for(self, text: str, timeout: float = 10.0) -> None:
        """Wait until a console line containing ``text`` arrived."""
        async with asyncio.timeout(timeout):
            while not any(text in m for m in self.messages()):
                self.changed.clear()
                await self.changed.wait()


class NullSink:
    """Counts drafts and discards them."""

    def __init__(self) -> None:
        self.count = 0
        self.calls = 0

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        self.calls += 1
        self.count += len(drafts)

    async def set_status(self, status: RunStatus, *, at: datetime | None = None) -> None:
        pass


class FailingSink(ListSink):
    """Fails the n-th emit call, like a log store that breaks mid-run."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        if self.calls + 1 >= self.fail_at:
            self.calls += 1
            raise OSError("disk full")
        await super().emit(drafts)


def live_pids(pids: Sequence[int]) -> list[int]:
    """The pids that still run (zombies waiting for init to reap them do not count)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def session_pids(sid: int) -> list[int]:
    """Running processes of session ``sid`` (the executor's child is its session leader)."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(proc.pid) == sid:
                found.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            pass
    return found
