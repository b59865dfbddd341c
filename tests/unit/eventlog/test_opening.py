"""Opening a run's writer (eventlog/opening.py): the lock, directories made durable, ended logs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runevents.eventlog import EventLog, RunRef, opening
from runevents.exceptions import RunEnded, WriterBusy
from runevents.logstore import LogStore
from tests.unit.eventlog.conftest import MakeLog
from tests.unit.eventlog.helpers import completed, drafts


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
    import runevents.eventlog.opening as opening_module
    import runevents.logstore.local as local_module

    synced: list[Path] = []
    real = local_module.fsync_dir

    def recording(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(opening_module, "fsync_dir", recording)
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


async def test_new_runs_stalled_the_event_loop_under_ingest_load(
    local_store: LogStore, make_log: MakeLog, ref: RunRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new run's log makes new directory entries durable (a directory fsync each),
    and such an fsync waits for the file system's journal commit: under ingest load it
    took tens of milliseconds, and run creations stalled the event loop for up to
    384 ms (measured on the bench's server). Here a directory fsync takes 150 ms (the
    OS-call seam); the loop must keep running meanwhile."""
    real = opening.fsync_dir

    def slow_fsync_dir(path: Path) -> None:
        time.sleep(0.15)  # a journal commit behind other runs' data
        real(path)

    monkeypatch.setattr(opening, "fsync_dir", slow_fsync_dir)
    loop = asyncio.get_running_loop()
    worst = 0.0
    stop = asyncio.Event()

    async def sleeper() -> None:
        nonlocal worst
        while not stop.is_set():
            started = loop.time()
            await asyncio.sleep(0.005)
            worst = max(worst, loop.time() - started - 0.005)

    probe = asyncio.create_task(sleeper())
    await asyncio.sleep(0.02)
    writer = await make_log(local_store).open_writer(ref)  # a brand-new run: new dirs
    stop.set()
    await probe
    await writer.close()
    assert worst < 0.1, f"the loop stalled {worst * 1000:.0f} ms while a new run's log opened"
