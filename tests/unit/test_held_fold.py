"""SummaryFold (held.py): a durable unit is folded after its batch's answer, never lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

from runevents.eventlog import Chunk, EventLog, RunRef
from runevents.events import Event, encode_event
from runevents.summary import summarize_lines
from runevents.summary_fold import SummaryFold
from tests.unit.summary.builders import console, events_of, ts


def _lines(n: int, stream: str = "stdout") -> list[Event]:
    # the fold reads types and payloads, not sequences
    return events_of([console(f"m{i}", stream=stream) for i in range(n)])


def _fold() -> SummaryFold:
    # existing=0: no background read of the log, so the log is never touched
    ref = RunRef(workspace_id="ws", configuration_id="cfg", run_id="run_01M971R2QHWMGKVAH0MGJA1X7H")
    return SummaryFold(cast(EventLog, None), ref, 0)


def _total(fold: SummaryFold) -> int:
    return int(fold.builder.build()["events"]["total"])


async def test_fold_runs_after_the_answer_and_ready_sees_every_durable_unit() -> None:
    fold = _fold()
    fold.add(_lines(3))
    fold.add(_lines(2, stream="stderr"))
    # deferred: nothing folded in the same loop step (the answer goes out first)...
    assert _total(fold) == 0
    # ...but whoever reads the summary gets every durable unit, in order
    builder = await fold.ready()
    summary = builder.build()
    assert summary["events"]["total"] == 5
    assert summary["console"]["by_stream"] == {"stdout": 3, "stderr": 2}


async def test_pending_units_are_folded_by_the_next_loop_iteration() -> None:
    fold = _fold()
    fold.add(_lines(4))
    await asyncio.sleep(0)
    assert _total(fold) == 4
    fold.add(_lines(1))
    await asyncio.sleep(0)
    assert _total(fold) == 5


class _SlowLog:
    """A log whose reads wait for ``gate``; it holds the lines 1..``durable``."""

    def __init__(self, events: list[Event]) -> None:
        self.lines = [encode_event(event) for event in events]
        self.durable = 0
        self.gate = asyncio.Event()
        self.reads: list[tuple[int, int | None]] = []

    async def read(
        self, ref: RunRef, after_sequence: int = 0, limit: int | None = None
    ) -> AsyncIterator[Chunk]:
        self.reads.append((after_sequence, limit))
        end = self.durable if limit is None else min(self.durable, after_sequence + limit)
        for sequence in range(after_sequence + 1, end + 1):
            await self.gate.wait()
            yield Chunk(sequence, sequence, self.lines[sequence - 1], False)


async def test_units_made_durable_while_the_log_is_folded_are_read_back_not_kept() -> None:
    """A taken-over (or claimed) run: units made durable while the background fold reads
    the existing log are not kept in memory (every unit was, until completion, once) but
    read from the log, in order; then each unit is folded as it comes."""
    events = events_of(
        [
            console("first"),
            ("run.phase.started", ts(1), {"phase": "load"}),
            *[console(f"m{i}", stream="stderr" if i % 3 else "stdout") for i in range(8)],
            ("run.phase.started", ts(2), {"phase": "save"}),
            console("last"),
        ]
    )
    log = _SlowLog(events)
    log.durable = 3
    ref = RunRef(workspace_id="acme", configuration_id="etl", run_id=events[0].run_id)
    fold = SummaryFold(cast(EventLog, log), ref, 3)
    await asyncio.sleep(0)  # the background fold waits in its first read
    for end in (5, 8, 9):
        start, log.durable = log.durable, end
        fold.add(events[start:end])
    log.gate.set()
    builder = await fold.ready()
    assert builder.build() == summarize_lines(log.lines[:9])
    assert log.reads == [(0, 3), (3, 6)]  # the existing log, then the units after it
    log.durable = len(events)
    fold.add(events[9:])
    builder = await fold.ready()
    assert builder.build() == summarize_lines(log.lines)
    assert len(log.reads) == 2  # caught up: folded as they come, never read again
