"""Crash recovery: torn tails, garbage, stale indexes, and a real kill -9."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runevents.eventlog import EventLog, RunRef
from runevents.eventlog.index import SparseIndex
from runevents.eventlog.recovery import recover_index, recover_log
from runevents.events import EventDraft, decode_event
from runevents.logstore import open_log_store
from runevents.notify import LocalNotifier
from tests.unit.eventlog.helpers import drafts, read_sequences

RUN = "run_01JABCDEFGHJKMNPQRSTVWXYZ0"
REF = RunRef("acme", "etl", RUN)
ODD = ["", "é", "😀" * 30, "\u2028\u2029", "a\rb", "tab\t", "x" * 3000, "\x1b[31mred\x1b[0m"]


def new_log(root: Path, **options: object) -> EventLog:
    return EventLog(
        open_log_store((root / "store").as_uri()),
        spool_dir=root / "spool",
        notifier=LocalNotifier(),
        index_every_bytes=1024,
        index_every_events=8,
        **options,  # type: ignore[arg-type]
    )


async def build_log(root: Path, n: int, odd: list[str] = ODD) -> tuple[bytes, bytes]:
    """A realistic log of ``n`` events (odd characters, long lines); its bytes and index."""
    log = new_log(root, flush_events=3)
    writer = await log.open_writer(REF)
    rng = random.Random(7)
    for i in range(n):
        message = f"line {i} {rng.choice(odd)}"
        await writer.append([EventDraft(type="console.line", payload={"message": message})])
    await writer.close()
    keys = log.keys(REF)
    index = keys.live_index.read_bytes() if keys.live_index.exists() else b""
    return keys.live.read_bytes(), index


def lines_of(data: bytes) -> list[bytes]:
    return [line + b"\n" for line in data.split(b"\n")[:-1]]


@pytest.fixture(scope="module")
def sample() -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(build_log(Path(tmp), 60))


@pytest.fixture(scope="module")
def small_sample() -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(build_log(Path(tmp), 4, ["é😀\u2028", "a\rb"]))


#: fsync is a no-op on tmpfs: thousands of recoveries stay fast
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") else None


def test_recover_log_at_every_byte_position(small_sample: tuple[bytes, bytes]) -> None:
    """Cut a small log at every byte: recovery keeps exactly the complete lines."""
    data, _ = small_sample
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        path = Path(tmp) / "events.ndjson"
        for cut in range(len(data) + 1):
            for torn in Path(tmp).glob("*.torn-*"):
                torn.unlink()
            path.write_bytes(data[:cut])
            fd = os.open(path, os.O_RDWR)
            try:
                recovered = recover_log(fd, path, RUN)
            finally:
                os.close(fd)
            good = data[:cut].rfind(b"\n") + 1
            assert recovered.end == good
            assert recovered.last_sequence == data[:good].count(b"\n")
            assert path.read_bytes() == data[:good]
            if good < cut:
                assert recovered.quarantined is not None
                assert recovered.quarantined.read_bytes() == data[good:cut]
            else:
                assert recovered.quarantined is None


def run_cut_and_append(
    data: bytes, index: bytes, cut: int, garbage: bytes, index_cut: int | None
) -> None:
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        root = Path(tmp)
        log = new_log(root)
        keys = log.keys(REF)
        keys.live.parent.mkdir(parents=True)
        keys.live.write_bytes(data[:cut] + garbage)
        if index_cut is not None:
            keys.live_index.write_bytes(index[:index_cut])
        # the complete lines that are the original's (a garbage b"\n" right at a line's
        # end completes that line: it is then a real, intact event)
        survivors = []
        for line, original in zip(lines_of(data[:cut] + garbage), lines_of(data), strict=False):
            if line != original:
                break
            survivors.append(line)

        async def scenario() -> None:
            writer = await log.open_writer(REF)
            assert writer.last_sequence == len(survivors)
            await writer.append(drafts(2, start=1000))
            await writer.close()
            sequences = await read_sequences(log, REF)
            assert sequences == list(range(1, len(survivors) + 3))
            # every surviving line is intact, byte for byte
            kept = keys.live.read_bytes()
            assert kept.startswith(b"".join(survivors))
            # and a seek from any position agrees with the full read
            for after in range(0, len(survivors) + 2, 7):
                assert await read_sequences(log, REF, after) == sequences[after:]

        asyncio.run(scenario())


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_cut_anywhere_reopen_append_and_read(
    data: st.DataObject, sample: tuple[bytes, bytes]
) -> None:
    """Hypothesis-chosen cuts of a realistic log, with garbage and damaged indexes."""
    log_bytes, index_bytes = sample
    cut = data.draw(st.integers(0, len(log_bytes)), label="cut")
    garbage = data.draw(
        st.sampled_from([b"", b"\x00" * 100, b'{"type":"console.line","seq', b"junk\n", b"\n\n"]),
        label="garbage",
    )
    index_cut = data.draw(st.none() | st.integers(0, len(index_bytes)), label="index bytes kept")
    run_cut_and_append(log_bytes, index_bytes, cut, garbage, index_cut)


def test_garbage_lines_after_the_last_event_are_quarantined(sample: tuple[bytes, bytes]) -> None:
    data, index = sample
    run_cut_and_append(data, index, len(data), b"\x00" * 50 + b"\nnot json\n", len(index))


def test_a_line_of_another_run_is_not_taken_as_the_last_event(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    line = (
        b'{"type":"t","event_id":"e","created_at":"2026-01-01T00:00:00.000000Z","sequence":1,'
        b'"source":"s","workspace_id":"w","configuration_id":"c","run_id":"run_other",'
        b'"build_id":null,"payload":{}}\n'
    )
    path.write_bytes(line)
    fd = os.open(path, os.O_RDWR)
    try:
        recovered = recover_log(fd, path, RUN)
    finally:
        os.close(fd)
    assert recovered.end == 0 and recovered.quarantined is not None


def test_a_stale_index_is_rebuilt(sample: tuple[bytes, bytes], tmp_path: Path) -> None:
    data, index = sample
    log_path = tmp_path / "events.ndjson"
    log_path.write_bytes(data)
    index_path = tmp_path / "events.ndjson.idx"
    good = SparseIndex.from_bytes(index)
    assert good is not None and len(good) > 3
    # a last record that points into the middle of a line
    wrong = SparseIndex.from_bytes(index)
    assert wrong is not None
    wrong.drop_from(len(wrong) - 1)
    wrong.add(good.last[0], good.last[1] + 5)
    index_path.write_bytes(wrong.to_bytes())
    fd = os.open(log_path, os.O_RDONLY)
    try:
        rebuilt, index_fd = recover_index(fd, index_path, len(data), 1024)
        os.close(index_fd)
    finally:
        os.close(fd)
    for sequence, offset in zip(rebuilt.sequences, rebuilt.offsets, strict=True):
        assert data[offset - 1 : offset] == b"\n"
        assert decode_event(data[offset : data.index(b"\n", offset)]).sequence == sequence
    assert SparseIndex.from_bytes(index_path.read_bytes()) is not None
    # records every ~1 KiB of log (a long line may stretch one step)
    longest = max(len(line) for line in lines_of(data))
    ends = [*rebuilt.offsets, len(data)]
    assert all(b - a <= 1024 + longest for a, b in itertools.pairwise(ends))


# -- a real crash ---------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, random, sys
    from pathlib import Path
    from runevents.eventlog import EventLog, RunRef
    from runevents.events import EventDraft
    from runevents.logstore import open_log_store

    async def main():
        log = EventLog(open_log_store(sys.argv[1]), spool_dir=Path(sys.argv[2]),
                       flush_events=int(sys.argv[4]), flush_interval_ms=1,
                       index_every_bytes=4096)
        writer = await log.open_writer(RunRef("acme", "etl", sys.argv[3]))
        rng = random.Random()
        print("ready", writer.last_sequence, flush=True)
        while True:
            batch = [EventDraft(type="console.line",
                                payload={"message": "m" * rng.choice([10, 300, 70000])})
                     for _ in range(rng.randint(1, 50))]
            await writer.append(batch)
            await asyncio.sleep(0)

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_a_log_that_reopens_gap_free(tmp_path: Path) -> None:
    store_url = (tmp_path / "store").as_uri()
    rng = random.Random()
    previous = 0
    for round_ in range(2):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, store_url, str(tmp_path / "spool"), RUN, str(5 + round_)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parents[3],
        )
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        assert ready[0] == b"ready"
        assert int(ready[1]) >= previous  # the child continued from what survived
        time.sleep(rng.uniform(0.02, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()

        async def check() -> int:
            log = new_log(tmp_path)
            writer = await log.open_writer(REF)
            last = writer.last_sequence
            await writer.append(drafts(1))
            await writer.close()
            assert await read_sequences(log, REF) == list(range(1, last + 2))
            return last + 1

        previous = asyncio.run(check())
        assert previous > 1
