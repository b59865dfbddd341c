"""The single writer: sequences, envelopes, its index, the lock (flushing: test_group_commit)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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
    WriterBusy,
)
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


# -- the lock ----------------------------------------------------------------------------


async def test_a_second_writer_in_this_process_is_refused(log: EventLog, ref: RunRef) -> None:
    writer = await log.open_writer(ref)
    with pytest.raises(WriterBusy):
        await log.open_writer(ref)
    await writer.close()
    again = await log.open_writer(ref)
    await again.close()


async def test_two_event_logs_on_the_same_files_exclude_each_other(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    writer = await make_log(local_store).open_writer(ref)
    with pytest.raises(WriterBusy, match=f"pid {os.getpid()}"):
        await make_log(local_store).open_writer(ref)
    await writer.close()


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from runevents.eventlog import EventLog, RunRef
    from runevents.logstore import open_log_store

    async def main():
        log = EventLog(open_log_store(sys.argv[1]), spool_dir=Path(sys.argv[2]))
        writer = await log.open_writer(RunRef("acme", "etl", sys.argv[3]))
        await writer.append([])
        print("ready", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_a_writer_in_another_process_is_refused_until_it_dies(
    tmp_path: Path, local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    child = subprocess.Popen(  # noqa: ASYNC220  (the child must hold the lock while we try)
        [sys.executable, "-c", HOLDER, local_store.url, str(tmp_path / "spool"), ref.run_id],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[3],
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        with pytest.raises(WriterBusy, match=f"pid {child.pid}"):
            await make_log(local_store).open_writer(ref)
    finally:
        child.kill()
        child.wait()
    # the kernel dropped the dead process's lock
    writer = await make_log(local_store).open_writer(ref)
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


async def test_a_writer_on_a_sealed_or_compacted_log_writes_nothing(
    log: EventLog, ref: RunRef
) -> None:
    writer = await log.open_writer(ref)
    await writer.append([*drafts(4), completed()])
    await writer.close()
    await log.seal(ref)
    await log.compact(ref)
    await log.drop_plain(ref)  # now only the compressed form is stored
    late = await log.open_writer(ref)  # e.g. the manager finishing an orphan
    assert late.ended and late.last_sequence == 5
    with pytest.raises(RunEnded):
        late.prepare(drafts(1))
    await late.close()
    assert not log.keys(ref).live.exists()  # no new, empty plain log next to it
    assert (await log.stats(ref)).form == "compressed"


async def test_new_log_files_and_directories_are_synced_before_the_first_ack(
    local_store: LogStore, make_log: MakeLog, ref: RunRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durability issue, defect 10: a new log's directory was not fsynced until seal, so
    a power loss could lose the whole file of acknowledged batches; and the unlink of a
    dropped plain log was not synced either."""
    import runevents.eventlog as eventlog_module
    import runevents.logstore.local as local_module

    synced: list[Path] = []
    real = local_module.fsync_dir

    def recording(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(eventlog_module, "fsync_dir", recording)
    monkeypatch.setattr(local_module, "fsync_dir", recording)
    log = make_log(local_store)
    writer = await log.open_writer(ref)
    live = log.keys(ref).live
    # every new directory's entry (from the workspace down) and the file's own
    assert live.parent in synced and live.parent.parent in synced
    assert any(p == live.parent.parent.parent for p in synced)
    await writer.append(drafts(1))
    await writer.close()
    synced.clear()
    await local_store.delete(log.keys(ref).log)
    assert synced  # the unlink's directory
