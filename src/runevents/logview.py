"""Where a run's log ends now, as readers see it: the input of caching and long-poll.

A reader that wants to label an answer (``ETag``, ``Cache-Control``, a Durable
Streams offset) must know, before it reads, the last sequence of the log and
whether the run has ended. For an ended run the row says so and its
``event_count`` is final (set when the log was sealed), so no log I/O is needed:
that keeps a ``304 Not Modified`` to one row read. For a live run the row's
counters lag (they are written every few seconds), so the log's last visible
line is asked instead (:meth:`EventLog.stats` reads only the end of the file).

This sits beside :class:`~runevents.manager.RunManager` rather than in it: it
only combines the manager's public row with its log's public ``stats``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from runevents.eventlog import RunRef
from runevents.manager import RunManager
from runevents.models import LogState, Run

#: the stored form of a log as it matters to a cache: uncompressed NDJSON (live or
#: sealed: the same bytes) or zstd frames
Form = Literal["ndjson", "zstd"]


@dataclass(frozen=True, slots=True)
class LogEnd:
    """The end of a run's log at one instant."""

    #: sequence of the last event readers may be served (0: none yet)
    last_sequence: int
    #: the run has ended: the log will never grow again
    ended: bool
    form: Form


async def log_end(manager: RunManager, run: Run) -> LogEnd:
    """The end of ``run``'s log now (``run`` as returned by ``manager.open_events``)."""
    if run.status.ended:
        form: Form = "zstd" if run.log_state is LogState.COMPRESSED else "ndjson"
        return LogEnd(run.event_count, True, form)
    stats = await manager.log.stats(RunRef(run.workspace_id, run.configuration_id, run.id))
    return LogEnd(stats.event_count, False, "zstd" if stats.form == "compressed" else "ndjson")
