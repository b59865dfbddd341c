"""A full disk drops an executed run's lines (the buffered writer's full retry buffer):
the log says so where they are missing, with a console line of the server's."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest

from runevents.eventlog import EventLog, RunRef, RunWriter
from runevents.events import Event, decode_event
from runevents.logstore import LogStore
from tests.fixtures.faults import FaultyOps
from tests.unit.eventlog.conftest import MakeLog
from tests.unit.eventlog.helpers import completed, drafts, read_sequences

LOST = "runevents: {:,} lines of output were lost: the log could not be written ({})"


def lost_in(event: Event) -> int:
    """The count of a lost-lines marker (the server's console line with ``lost_lines``),
    else 0. (Read here, not with ``write_failure.lost_lines``, so the test runs on the
    code before the fix and fails on what it finds.)"""
    count = event.payload.get("lost_lines") if event.type == "console.line" else None
    return count if event.source == "server" and isinstance(count, int) else 0


@pytest.fixture
def ops() -> FaultyOps:
    return FaultyOps()


@pytest.fixture
def small_log(local_store: LogStore, make_log: MakeLog, ops: FaultyOps) -> EventLog:
    """Every append flushed at once; a retry buffer of 3,000 bytes (about 15 lines)."""
    return make_log(
        local_store, file_ops=ops, flush_events=1, max_buffer_bytes=3000, flush_interval_ms=60_000
    )


async def log_events(log: EventLog, ref: RunRef) -> list[Event]:
    return [
        decode_event(line) async for chunk in log.read(ref) for line in chunk.data.split(b"\n")[:-1]
    ]


async def fill_the_buffer(writer: RunWriter, ops: FaultyOps, n: int = 40) -> int:
    """Append ``n`` lines one by one while every write fails ENOSPC; the accepted count."""
    ops.error = errno.ENOSPC
    accepted = 0
    for i in range(n):
        accepted += len(await writer.append(drafts(1, start=100 + i, size=100)))
    assert writer.buffer_full and writer.dropped_events == n - accepted > 0
    return accepted


def assert_marker(event: Event, count: int, reason: str = "No space left on device") -> None:
    payload: dict[str, Any] = event.payload
    assert event.type == "console.line" and event.source == "server", event
    assert payload == {
        "scope": "run",
        "stream": "stderr",
        "level": "warning",
        "message": LOST.format(count, reason),
        "logger": "runevents",
        "lost_lines": count,
    }


async def test_a_full_disk_dropped_executed_output_without_a_trace(
    small_log: EventLog, ops: FaultyOps, ref: RunRef
) -> None:
    """While writes failed, an executor's lines were buffered; once the retry buffer was
    full they were dropped and only counted (``dropped_events``): a reader of the log
    saw the output jump. Now the server writes a marker where they are missing, as soon
    as writes work again -- by the retry timer, with no new line from the job."""
    writer = await small_log.open_writer(ref)  # buffered: an executor's
    await writer.append(drafts(2))
    accepted = await fill_the_buffer(writer, ops)
    dropped = writer.dropped_events
    ops.error = None
    for _ in range(200):  # the retry timer writes the buffer, then the marker
        await asyncio.sleep(0.01)
        if writer.pending_events == 0 and writer.last_sequence == 2 + accepted + 1:
            break
    events = await log_events(small_log, ref)
    assert len(events) == 2 + accepted + 1, [e.payload.get("message") for e in events]
    assert [e.payload["message"].split()[1] for e in events[:-1]] == [
        *map(str, range(2)),
        *map(str, range(100, 100 + accepted)),
    ]
    assert_marker(events[-1], dropped)
    # the job goes on: its next lines follow the marker, and no second marker is written
    await writer.append(drafts(2, start=500))
    await writer.append([completed()])
    await writer.close()
    events = await log_events(small_log, ref)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert sum(lost_in(e) for e in events) == dropped
    assert [e.payload.get("message") for e in events[-3:-1]] == ["line 500 ", "line 501 "]


async def test_a_full_disk_dropped_executed_output_without_a_trace_up_to_run_completed(
    small_log: EventLog, ops: FaultyOps, ref: RunRef
) -> None:
    """The job ends while the disk is still full: the marker goes just before
    run.completed (which is never dropped), and both are written once there is space."""
    writer = await small_log.open_writer(ref)
    accepted = await fill_the_buffer(writer, ops)
    marker, final = await writer.append([completed()])
    assert final.type == "run.completed" and final.sequence == marker.sequence + 1
    ops.error = None
    await writer.sync()
    await writer.close()
    events = await log_events(small_log, ref)
    assert [e.sequence for e in events] == list(range(1, accepted + 3))
    assert_marker(events[-2], writer.dropped_events)
    assert events[-1].type == "run.completed"


async def test_a_full_disk_dropped_executed_output_without_a_trace_while_completing(
    small_log: EventLog, ops: FaultyOps, ref: RunRef
) -> None:
    """A completion prepares run.completed and commits it after awaiting its summary; if
    writes come back in between, the marker is already in the prepared unit: the write
    must not commit a second one ahead of it (the commit would lose its sequences)."""
    writer = await small_log.open_writer(ref)
    accepted = await fill_the_buffer(writer, ops)
    events = writer.prepare([completed()])
    assert lost_in(events[0]) > 0
    ops.error = None
    await writer.flush()  # writes work again meanwhile
    await writer.sync(writer.commit(events))
    await writer.close()
    assert await read_sequences(small_log, ref) == list(range(1, accepted + 3))
    found = await log_events(small_log, ref)
    assert_marker(found[-2], writer.dropped_events)


@pytest.mark.parametrize("flush_events", [1, 5])
async def test_a_full_disk_dropped_executed_output_without_a_trace_until_the_writer_closed(
    local_store: LogStore, make_log: MakeLog, ops: FaultyOps, ref: RunRef, flush_events: int
) -> None:
    """A worker shutting down closes the writer of a run it did not finish (another
    process ends it later, with a new writer that knows nothing of the drops): the
    marker is written at the close, if the disk lets it (flushed at once by the policy,
    or left to a flush timer that the close cancels)."""
    log = make_log(
        local_store, file_ops=ops, flush_events=flush_events, max_buffer_bytes=3000,
        flush_interval_ms=60_000,
    )  # fmt: skip
    writer = await log.open_writer(ref)
    await fill_the_buffer(writer, ops)
    # (a close cancels the retry timer: the close itself must write the marker)
    ops.error = None
    await writer.close()
    events = await log_events(log, ref)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert_marker(events[-1], writer.dropped_events)


def test_only_the_servers_marker_counts_as_lost_lines() -> None:
    """A job may print a look-alike (a structured console.line with ``lost_lines``); its
    events carry the writer's source, ``worker``, never the server's."""
    from runevents.eventlog.write_failure import lost_lines

    payload = {"scope": "run", "stream": "stderr", "level": "warning", "message": "m"}
    marker = {**payload, "logger": "runevents", "lost_lines": 7}
    assert lost_lines("console.line", "server", marker) == 7
    assert lost_lines("console.line", "worker", marker) == 0
    assert lost_lines("console.line", "server", {**marker, "lost_lines": "7"}) == 0
    assert lost_lines("console.line", "server", {**payload, "lost_lines": 7}) == 0
    assert lost_lines("run.error", "server", marker) == 0
