"""SummaryFold (held.py): a durable unit is folded after its batch's answer, never lost."""

from __future__ import annotations

import asyncio
from typing import cast

from runevents.eventlog import EventLog, RunRef
from runevents.events import Event
from runevents.held import SummaryFold


def _lines(first: int, n: int, stream: str = "stdout") -> list[Event]:
    return [
        Event(
            type="console.line",
            event_id=f"evt_x{seq}",
            created_at="2026-12-07T01:00:00.000000Z",
            sequence=seq,
            source="test",
            workspace_id="ws",
            configuration_id="cfg",
            run_id="run_01M971R2QHWMGKVAH0MGJA1X7H",
            build_id=None,
            payload={"scope": "run", "stream": stream, "level": "info", "message": f"m{seq}"},
        )
        for seq in range(first, first + n)
    ]


def _fold() -> SummaryFold:
    # existing=0: no background read of the log, so the log is never touched
    ref = RunRef(workspace_id="ws", configuration_id="cfg", run_id="run_01M971R2QHWMGKVAH0MGJA1X7H")
    return SummaryFold(cast(EventLog, None), ref, 0)


def _total(fold: SummaryFold) -> int:
    return int(fold.builder.build()["events"]["total"])


async def test_fold_runs_after_the_answer_and_ready_sees_every_durable_unit() -> None:
    fold = _fold()
    fold.add(_lines(1, 3))
    fold.add(_lines(4, 2, stream="stderr"))
    # deferred: nothing folded in the same loop step (the answer goes out first)...
    assert _total(fold) == 0
    # ...but whoever reads the summary gets every durable unit, in order
    builder = await fold.ready()
    summary = builder.build()
    assert summary["events"]["total"] == 5
    assert summary["console"]["by_stream"] == {"stdout": 3, "stderr": 2}


async def test_pending_units_are_folded_by_the_next_loop_iteration() -> None:
    fold = _fold()
    fold.add(_lines(1, 4))
    await asyncio.sleep(0)
    assert _total(fold) == 4
    fold.add(_lines(5, 1))
    await asyncio.sleep(0)
    assert _total(fold) == 5
