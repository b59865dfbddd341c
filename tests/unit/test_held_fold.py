"""SummaryFold (held.py): a durable unit is folded after its batch's answer, never lost."""

from __future__ import annotations

import asyncio
from typing import cast

from runevents.eventlog import EventLog, RunRef
from runevents.events import Event
from runevents.summary_fold import SummaryFold
from tests.unit.summary.builders import console, events_of


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
