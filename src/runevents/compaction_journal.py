"""The compaction journal: runs caught between their row saying ``compressed`` and the
drop of their plain log.

Compaction (``RunManager.compact_run``) writes the compressed form, updates the row,
then drops the plain log. An entry here, made durable before the row update and
removed after the drop, is what lets a kill -9 in between be finished by the next
maintenance pass (``maintenance._finish_interrupted``) or the repair loop, instead of
leaving a plain log nobody reads.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from runevents.eventlog import EventLog


class CompactionJournal:
    """Runs whose row may already say ``compressed`` while their plain log still exists.

    One empty file per run, named by the run id, under the spool directory
    (local to the process host, also for remote stores). ``compact_run``
    creates it before the row update and removes it after the plain log is
    dropped; a kill -9 in between leaves it for the next pass to finish. Run
    ids are unique across workspaces, so the name alone finds the row.
    """

    def __init__(self, log: EventLog) -> None:
        self.directory = log.spool_dir / "maintenance" / "compacting"

    def _path(self, run_id: str) -> Path:
        return self.directory / run_id

    def add(self, run_id: str) -> None:
        """Record that ``run_id`` is between the row update and the plain drop (durably)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(run_id), os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
        # the entry must survive a power loss too, or the plain log could leak
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def remove(self, run_id: str) -> None:
        """Forget ``run_id`` (missing is fine: another pass finished it)."""
        with contextlib.suppress(FileNotFoundError):
            self._path(run_id).unlink()

    def pending(self) -> list[str]:
        """Run ids left by interrupted passes (usually none)."""
        try:
            return sorted(entry.name for entry in os.scandir(self.directory) if entry.is_file())
        except FileNotFoundError:
            return []
