"""The single writer: sequences, envelopes, its index, the lock (flushing: test_group_commit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runevents.eventlog import EventLog, RunRef
from runevents.eventlog.index import HEADER, RECORD, line_sequence
from runevents.events import EventDraft, encode_event, mark_unit_end
from runevents.exceptions import (
    InvalidEvent,
    InvalidInput,
    PayloadTooLarge,
    RunEnded,
    StorageError,
)
from runevents.ids import new_run_id
from runevents.logstore import LogStore
from tests.unit.eventlog.conftest import MakeLog
from tests.unit.eventlog.helpers import completed, drafts, read_sequences


async def test_append_numbers_events_and_fills_the_envelope(log: EventLog, ref: RunRef) -> None:
    writer = await log.open_writer(ref, source="producer")
    first = await writer.append(drafts(3))
    second = await writer.append(
        [EventDraft(type="run.error", payload={}, source="etl", build_id="b1")]
    )
    await writer.close()
    events = first + second
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert len({e.event_id for e in events}) == 4
    assert all(e.event_id.startswith("evt_") for e in events)
    assert {(e.workspace_id, e.configuration_id, e.run_id) for e in events} == {
        (ref.workspace_id, ref.configuration_id, ref.run_id)
    }
    assert [e.source for e in events] == ["producer"] * 3 + ["etl"]
    assert events[3].build_id == "b1"
    # one batch shares one server timestamp
    assert len({e.created_at for e in first}) == 1
    assert writer.last_sequence == 4


async def test_the_log_holds_exactly_the_encoded_events(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(local_store)
    writer = await log.open_writer(ref)
    events = await writer.append(drafts(5))
    events += await writer.append([completed()])
    await writer.close()
    path = Path(log.events_path(ref))
    # each commit unit's last line ends with UNIT_END (recovery cuts incomplete units)
    units = [events[:5], events[5:]]
    assert path.read_bytes() == b"".join(
        mark_unit_end(b"".join(encode_event(e) for e in unit)) for unit in units
    )
    assert writer.bytes_written == path.stat().st_size


async def test_a_producer_timestamp_is_normalized_and_a_bad_one_names_its_line(
    log: EventLog, ref: RunRef
) -> None:
    writer = await log.open_writer(ref)
    [event] = writer.prepare([EventDraft(type="t", created_at="2026-01-01T01:00:00+01:00")])
    assert event.created_at == "2026-01-01T00:00:00.000000Z"
    with pytest.raises(InvalidEvent, match="line 2"):
        writer.prepare([EventDraft(type="t"), EventDraft(type="t", created_at="noon")])
    await writer.close()


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        ([EventDraft(type="")], "type"),
        ([EventDraft(type="t", payload=[1])], "payload"),  # type: ignore[arg-type]
        ([completed(), EventDraft(type="t")], "must be the last"),
    ],
)
async def test_bad_drafts_are_refused_before_anything_is_numbered(
    log: EventLog, ref: RunRef, batch: list[EventDraft], reason: str
) -> None:
    writer = await log.open_writer(ref)
    with pytest.raises(InvalidEvent, match=reason):
        writer.prepare(batch)
    assert (await writer.append(drafts(1)))[0].sequence == 1
    await writer.close()


async def test_prepare_writes_nothing_and_commit_takes_only_the_last_prepared(
    log: EventLog, ref: RunRef
) -> None:
    writer = await log.open_writer(ref)
    prepared = writer.prepare(drafts(2))
    again = writer.prepare(drafts(2))
    assert [e.sequence for e in again] == [1, 2]  # nothing was consumed
    assert writer.last_sequence == 0
    with pytest.raises(InvalidInput):
        writer.commit(prepared[1:])
    # the manager may edit a prepared event (the summary of run.completed) before committing
    prepared[0].payload["edited"] = True
    writer.commit(prepared)
    with pytest.raises(InvalidInput):
        writer.commit(prepared)  # already committed
    await writer.close()
    assert await read_sequences(log, ref) == [1, 2]


async def test_an_event_over_the_size_limit_is_refused_whole(
    store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(store, max_event_bytes=1024)
    writer = await log.open_writer(ref)
    events = writer.prepare(drafts(1) + drafts(1, size=2000))
    with pytest.raises(PayloadTooLarge):
        writer.commit(events)
    assert writer.last_sequence == 0
    assert (await writer.append(drafts(1)))[0].sequence == 1
    await writer.close()
    assert await read_sequences(log, ref) == [1]


async def test_the_size_limit_counts_a_stored_line_with_its_end(
    store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    # A line counts with its newline; the last line of a commit unit with its end mark
    # too (one byte more), which the writer adds in its buffer, not in the encoded batch.
    probe = await make_log(store).open_writer(RunRef("acme", "etl", new_run_id()))
    line = len(encode_event(probe.prepare(drafts(1, size=300))[0]))
    await probe.close()
    log = make_log(store, max_event_bytes=line)
    writer = await log.open_writer(ref)
    with pytest.raises(PayloadTooLarge, match=f"an event is {line + 1} bytes"):
        writer.commit(writer.prepare(drafts(2, size=300)))
    assert writer.last_sequence == 0
    # the same line passes where it is not the last one of its unit
    writer.commit(writer.prepare([*drafts(1, size=300), *drafts(1)]))
    await writer.sync()
    await writer.close()
    assert await read_sequences(log, ref) == [1, 2]


async def test_after_run_completed_nothing_more_is_appended(log: EventLog, ref: RunRef) -> None:
    writer = await log.open_writer(ref)
    await writer.append([*drafts(2), completed()])
    assert writer.ended
    with pytest.raises(RunEnded):
        writer.prepare(drafts(1))
    await writer.close()
    reopened = await log.open_writer(ref)
    assert reopened.ended and reopened.last_sequence == 3
    with pytest.raises(RunEnded):
        reopened.prepare(drafts(1))
    await reopened.close()


async def test_a_closed_writer_refuses_work_and_close_is_idempotent(
    log: EventLog, ref: RunRef
) -> None:
    writer = await log.open_writer(ref)
    await writer.close()
    await writer.close()
    with pytest.raises(StorageError, match="closed"):
        writer.prepare(drafts(1))


async def test_reopening_continues_the_sequence_with_new_event_ids(
    log: EventLog, ref: RunRef
) -> None:
    writer = await log.open_writer(ref)
    first = await writer.append(drafts(3))
    await writer.close()
    writer = await log.open_writer(ref)
    second = await writer.append(drafts(2))
    await writer.close()
    assert [e.sequence for e in second] == [4, 5]
    assert not {e.event_id for e in first} & {e.event_id for e in second}
    assert await read_sequences(log, ref) == [1, 2, 3, 4, 5]


# -- the index the writer maintains ----------------------------------------------------


async def test_the_writer_keeps_the_index_sidecar_current(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(local_store, index_every_bytes=1000, index_every_events=1000)
    writer = await log.open_writer(ref)
    for _ in range(10):
        await writer.append(drafts(10, size=50))
        await writer.flush()
    keys = log.keys(ref)
    index = keys.live_index.read_bytes()
    assert index.startswith(HEADER)
    records = list(RECORD.iter_unpack(index[len(HEADER) :]))
    assert len(records) >= 10
    data = keys.live.read_bytes()
    for sequence, offset in records:
        assert data[offset - 1 : offset] == b"\n"
        assert line_sequence(data[offset : data.index(b"\n", offset) + 1]) == sequence
    await writer.close()


async def test_a_short_log_gets_no_index_file_and_seal_leaves_only_the_log(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(local_store)
    writer = await log.open_writer(ref)
    await writer.append([*drafts(2), completed()])
    await writer.close()
    keys = log.keys(ref)
    assert not keys.live_index.exists()
    assert keys.lock.exists()  # kept between writers: creating files is what costs
    await log.seal(ref)
    assert sorted(p.name for p in keys.live.parent.iterdir()) == ["events.ndjson"]


async def test_the_index_file_appears_with_its_first_record(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(local_store, index_every_bytes=1000, index_every_events=1000)
    writer = await log.open_writer(ref)
    await writer.append(drafts(2))
    await writer.flush()
    keys = log.keys(ref)
    assert not keys.live_index.exists()
    await writer.append(drafts(10, size=200))
    await writer.flush()
    assert keys.live_index.read_bytes().startswith(HEADER)
    await writer.close()
    assert await read_sequences(log, ref, 5) == list(range(6, 13))
