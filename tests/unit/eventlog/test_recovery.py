"""Crash recovery (contract 2.2): torn tails, incomplete write units, zeroed blocks, garbage,
checkpoints, legacy logs, stale indexes, and a real kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import errno
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

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runevents.eventlog import EventLog, RunRef
from runevents.eventlog.index import SparseIndex
from runevents.eventlog.recovery import Recovered, recover_index, recover_log, recovered_payload
from runevents.events import (
    UNIT_END,
    Event,
    EventDraft,
    decode_event,
    encode_batch,
    encode_event,
    mark_unit_end,
)
from runevents.exceptions import StorageError
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
    # The cut's bound is the sample log's length, which differs by a few bytes from one
    # session to the next (write-unit markers): examples saved by an earlier session do
    # not replay (FlakyStrategyDefinition, seen in CI), so none are saved, and the
    # examples are the same ones every run
    database=None,
    derandomize=True,
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


# -- write units, damage, checkpoints ------------------------------------------------------


def make_event(sequence: int, message: str = "", type_: str = "console.line") -> Event:
    return Event(
        type=type_,
        event_id=f"evt_{sequence}",
        created_at="2026-11-24T06:00:00.123456Z",
        sequence=sequence,
        source="producer",
        workspace_id="acme",
        configuration_id="etl",
        run_id=RUN,
        build_id=None,
        payload={"message": message or f"line {sequence} " + "x" * (sequence * 7 % 90)},
    )


def marker_log(sizes: list[int], *, completed: bool = False) -> tuple[bytes, list[int]]:
    """A log of write units of ``sizes`` lines each, as the writer makes it, and the offset
    where each unit ends (with 0 first: "no unit")."""
    out = bytearray()
    ends = [0]
    sequence = 1
    for i, size in enumerate(sizes):
        events = [make_event(s) for s in range(sequence, sequence + size)]
        if completed and i == len(sizes) - 1:
            events[-1] = make_event(events[-1].sequence, type_="run.completed")
        out += mark_unit_end(encode_batch(events))
        sequence += size
        ends.append(len(out))
    return bytes(out), ends


def legacy_log(n: int) -> bytes:
    """A log written before unit markers: every line ends with a bare newline."""
    return b"".join(encode_event(make_event(s)) for s in range(1, n + 1))


def recover_bytes(
    directory: Path, data: bytes, checkpoint: tuple[int, int] | None = None
) -> tuple[Recovered, bytes]:
    """Recover a log holding ``data``; the result and the bytes left in the log."""
    path = directory / "events.ndjson"
    for torn in directory.glob("events.ndjson.torn-*"):
        torn.unlink()
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        recovered = recover_log(fd, path, RUN, checkpoint)
    finally:
        os.close(fd)
    kept = path.read_bytes()
    assert len(kept) == recovered.end
    assert recovered.cut_bytes == len(data) - recovered.end
    # the quarantine holds exactly the cut bytes, and exists only when something was cut
    if recovered.cut_bytes:
        assert recovered.quarantined is not None
        assert recovered.quarantined.read_bytes() == data[recovered.end :]
        assert recovered.reason
    else:
        assert recovered.quarantined is None and recovered.reason == ""
    return recovered, kept


def assert_gap_free(kept: bytes) -> None:
    """The kept bytes are whole lines of this run with sequences 1, 2, 3, ..."""
    lines = kept.split(b"\n")
    assert lines.pop() == b""
    assert [decode_event(line).sequence for line in lines] == list(range(1, len(lines) + 1))
    assert all(decode_event(line).run_id == RUN for line in lines)


def offset_of_line(data: bytes, sequence: int) -> int:
    """Where the line holding ``sequence`` starts (lines are positional)."""
    offset = 0
    for _ in range(sequence - 1):
        offset = data.index(b"\n", offset) + 1
    return offset


def test_zeroed_block_mid_file_is_cut_and_quarantined(tmp_path: Path) -> None:
    """Defect 7 of issue 13: a machine crash leaves a block of zeros mid-file (it never
    reached the disk while later ones did). The log is cut at the end of the last whole
    unit before it, everything from there on is quarantined, and the next event appended
    gets the next sequence: no gap, no NUL byte served."""

    async def scenario() -> None:
        log = new_log(tmp_path, flush_events=1)
        writer = await log.open_writer(REF)
        for unit in range(60):
            await writer.append(drafts(1 + unit % 5, start=unit * 10))
        await writer.close()
        path = log.keys(REF).live
        original = path.read_bytes()
        _, ends = marker_log([1 + unit % 5 for unit in range(60)])  # same unit shape
        written_ends = [0] + [
            i + 2 for i in range(len(original)) if original[i : i + 2] == UNIT_END
        ]
        assert len(written_ends) == len(ends)
        block = (len(original) // 2) // 4096 * 4096 if len(original) > 8192 else len(original) // 3
        damaged = bytearray(original)
        damaged[block : block + 4096] = bytes(min(4096, len(original) - block))
        path.write_bytes(bytes(damaged))
        # the plain reader refuses the damaged part (it would shift every later sequence)
        with pytest.raises(StorageError, match="NUL"):
            await read_sequences(log, REF)
        writer = await log.open_writer(REF)  # recovery runs here
        keep = max(end for end in written_ends if end <= block)
        kept_sequence = original[:keep].count(b"\n")
        assert writer.last_sequence == kept_sequence
        [event] = await writer.append(drafts(1, start=999))
        await writer.close()
        assert event.sequence == kept_sequence + 1
        assert await read_sequences(log, REF) == list(range(1, kept_sequence + 2))
        assert path.read_bytes().startswith(original[:keep])
        [quarantine] = list(path.parent.glob("events.ndjson.torn-*"))
        assert quarantine.read_bytes() == bytes(damaged[keep:])

    asyncio.run(scenario())
    data, ends = marker_log([3] * 40)
    line_53 = offset_of_line(data, 53)  # the second line of unit 18
    hole = line_53 + 50
    damaged = data[:hole] + bytes(4096) + data[hole + 4096 :]
    recovered, kept = recover_bytes(tmp_path, damaged)
    assert kept == data[: ends[17]] and recovered.last_sequence == 17 * 3
    assert recovered.cut_events is None  # not just whole lines of a unit: damaged bytes
    assert recovered.reason == (
        f"damaged bytes at offset {line_53} (a zeroed block: 4096 NUL bytes); the 1 line of"
        f" an incomplete write unit before it cut with it; {len(damaged) - line_53} bytes from"
        " there on quarantined"
    )
    assert recovered_payload(recovered) == {
        "cut_bytes": len(damaged) - ends[17],
        "cut_events": None,
        "reason": recovered.reason,
    }


def test_partial_batch_is_cut_whole(tmp_path: Path) -> None:
    """Defect 14 of issue 13: a kill -9 during a 200-line batch left its first 23 lines,
    all whole, in the log. They are cut with the rest of the batch (all lines or none),
    and cut_events says how many whole lines went."""
    data, ends = marker_log([1, 200, 200, 1])
    torn = offset_of_line(data, 1 + 200 + 23 + 1)  # 23 whole lines of the third unit
    recovered, kept = recover_bytes(tmp_path, data[:torn])
    assert kept == data[: ends[2]] and recovered.last_sequence == 201
    assert recovered.cut_events == 23
    assert recovered.reason == "torn write: 23 lines of an incomplete write unit"
    assert recovered_payload(recovered) == {
        "cut_bytes": torn - ends[2],
        "cut_events": 23,
        "reason": "torn write: 23 lines of an incomplete write unit",
    }
    # 23 whole lines and a torn 24th: the same cut, the partial line is named too
    recovered, kept = recover_bytes(tmp_path, data[: torn + 57])
    assert kept == data[: ends[2]] and recovered.cut_events == 23
    assert recovered.reason == (
        "torn write: 23 lines of an incomplete write unit and a partial last line of 57 bytes"
    )

    # through the writer: the batch's retry then appends all 200 exactly once
    async def scenario() -> None:
        log = new_log(tmp_path / "w")
        writer = await log.open_writer(REF)
        await writer.append(drafts(1))
        await writer.append(drafts(200, start=1))
        await writer.close()
        path = log.keys(REF).live
        whole = path.read_bytes()
        first_batch_end = offset_of_line(whole, 2)
        cut_at = offset_of_line(whole, 2 + 23)
        path.write_bytes(whole[:cut_at])
        writer = await log.open_writer(REF)
        assert writer.last_sequence == 1
        events = await writer.append(drafts(200, start=1))
        await writer.close()
        assert [e.sequence for e in events] == list(range(2, 202))
        assert await read_sequences(log, REF) == list(range(1, 202))
        assert path.read_bytes()[:first_batch_end] == whole[:first_batch_end]

    asyncio.run(scenario())


def test_a_garbage_tail_is_cut_at_its_first_byte(tmp_path: Path) -> None:
    data, ends = marker_log([2, 3, 1])
    for garbage, problem in [
        (b"junk\n", "not an event line"),
        (b'{"type":"x"}\n', "not an event"),
        (b"\n", "not an event line"),
        (b'{"type":"console.line"' + b"\x00" * 40 + b"\n", "a zeroed block: 40 NUL"),
        (encode_event(make_event(3)), "sequence 3 where 7 was expected"),
    ]:
        recovered, kept = recover_bytes(tmp_path, data + garbage + data[: ends[1]])
        assert kept == data and recovered.last_sequence == 6
        assert recovered.cut_events is None
        assert recovered.reason.startswith(f"damaged bytes at offset {len(data)} ({problem}")


def test_a_line_of_another_run_or_after_run_completed_is_damage(tmp_path: Path) -> None:
    data, ends = marker_log([2, 1], completed=True)
    stray = encode_event(make_event(4))
    recovered, kept = recover_bytes(tmp_path, data + stray)
    assert kept == data and recovered.ended and recovered.last_sequence == 3
    assert recovered.reason.startswith(f"damaged bytes at offset {len(data)} (a line after run.")
    other = mark_unit_end(encode_event(msgspec.structs.replace(make_event(3), run_id="run_x")))
    recovered, kept = recover_bytes(tmp_path, data[: ends[1]] + other)
    assert kept == data[: ends[1]] and not recovered.ended
    assert recovered.reason.startswith(
        f"damaged bytes at offset {ends[1]} (an event of another run"
    )


def test_a_torn_last_line_is_cut(tmp_path: Path) -> None:
    data, ends = marker_log([1, 1, 1])
    recovered, kept = recover_bytes(tmp_path, data[: ends[2] + 40])
    assert kept == data[: ends[2]] and recovered.last_sequence == 2
    assert recovered.cut_events == 0
    assert recovered.reason == "torn write: a partial last line of 40 bytes"
    # a torn unit marker (the space written, not the newline) is a torn line too
    recovered, kept = recover_bytes(tmp_path, data[:-1])
    assert kept == data[: ends[2]] and recovered.cut_events == 0
    # nothing to do on a clean log
    recovered, kept = recover_bytes(tmp_path, data)
    assert kept == data and recovered.last_sequence == 3 and recovered_payload(recovered) is None


def test_a_legacy_log_without_markers_keeps_its_whole_lines(tmp_path: Path) -> None:
    """A log written before unit markers: only its lines are checked (the unit rule would
    cut everything: no line of it ends a unit)."""
    data = legacy_log(30)
    recovered, kept = recover_bytes(tmp_path, data)
    assert kept == data and recovered.last_sequence == 30
    recovered, kept = recover_bytes(tmp_path, data + b'{"type":"console.li')
    assert kept == data and recovered.cut_events == 0
    damaged = data[:500] + bytes(100) + data[600:]
    recovered, kept = recover_bytes(tmp_path, damaged)
    assert kept == data[: data.rindex(b"\n", 0, 500) + 1]
    assert_gap_free(kept)
    # a legacy log that a marking writer continued: the unit rule holds for the new part
    units, _ = marker_log([40, 5])
    tail = units[offset_of_line(units, 31) :]  # units of sequences 31..40 and 41..45
    mixed = data + tail
    recovered, kept = recover_bytes(tmp_path, mixed[: len(mixed) - 200])
    assert kept == data + tail[: offset_of_line(tail, 11)]
    assert recovered.last_sequence == 40 and recovered.cut_events == 4
    # with a checkpoint inside the legacy part, the marked lines after it still count
    at = offset_of_line(data, 20)
    recovered, kept = recover_bytes(tmp_path, mixed[: len(mixed) - 200], (19, at))
    assert recovered.scanned_from == at and recovered.last_sequence == 40


def test_a_torn_first_unit_of_several_lines_looks_like_a_legacy_log(tmp_path: Path) -> None:
    """The limit of the legacy rule, pinned: before any marker reached the disk a log
    cannot tell a torn first unit from a log written before markers, so its whole lines
    stay. The server never writes such a log: its first unit is ``run.queued`` alone."""
    data, ends = marker_log([3, 2])
    recovered, kept = recover_bytes(tmp_path, data[: offset_of_line(data, 3)])
    assert kept == data[: offset_of_line(data, 3)] and recovered.last_sequence == 2
    # once the first unit's marker is on disk, the rule holds from then on
    recovered, kept = recover_bytes(tmp_path, data[: offset_of_line(data, 5)])
    assert kept == data[: ends[1]] and recovered.cut_events == 1


def test_a_checkpoint_that_does_not_hold_falls_back_to_a_full_scan(tmp_path: Path) -> None:
    data, ends = marker_log([4, 4, 4, 4])
    damaged = data[: ends[1] + 10] + b"\x00" * 20 + data[ends[1] + 30 :]
    for checkpoint in [
        (9, ends[2]),  # wrong sequence
        (8, ends[2] + 5),  # not a line start
        (8, len(data) + 100),  # past the end of the file
        (-1, 0),
        (8, ends[2] - 1),
    ]:
        recovered, kept = recover_bytes(tmp_path, damaged, checkpoint)
        assert recovered.scanned_from == 0
        assert kept == data[: ends[1]] and recovered.last_sequence == 4
    # a checkpoint of another run's line does not hold either
    other = data.replace(RUN.encode(), b"run_01JABCDEFGHJKMNPQRSTVWXYZ9")
    recovered, kept = recover_bytes(tmp_path, other + b"x", (16, ends[4]))
    assert recovered.scanned_from == 0 and kept == b""


def test_a_checkpoint_skips_the_scan_of_the_prefix(tmp_path: Path) -> None:
    """The bytes before a verified checkpoint are known durable: they are not read again
    (proved by damage there that a full scan would cut)."""
    data, ends = marker_log([5] * 20, completed=True)
    at = offset_of_line(data, 33)
    damaged = data[:at] + b"\x00" * 10 + data[at + 10 :]  # inside line 33 (unit 7)
    checkpoint = (80, ends[16])
    recovered, kept = recover_bytes(tmp_path, damaged + data[: ends[1]][:-3], checkpoint)
    assert recovered.scanned_from == ends[16]
    assert kept == damaged and recovered.last_sequence == 100 and recovered.ended
    assert "a line after run.completed" in recovered.reason
    # the same file without the checkpoint is cut at the damage
    recovered, kept = recover_bytes(tmp_path, damaged, None)
    assert kept == data[: ends[6]] and recovered.last_sequence == 30 and not recovered.ended
    # a checkpoint at the very end: nothing to scan, and the run is known ended
    recovered, kept = recover_bytes(tmp_path, data, (100, len(data)))
    assert recovered.scanned_from == len(data) and recovered.ended and kept == data
    # ... and a line after it is damage, even though the scan starts after run.completed
    recovered, kept = recover_bytes(tmp_path, data + data[: ends[1]], (100, len(data)))
    assert recovered.scanned_from == len(data) and recovered.ended and kept == data
    assert "(a line after run.completed)" in recovered.reason
    # (0, 0) is "nothing known": a full scan
    recovered, kept = recover_bytes(tmp_path, data[:-9], (0, 0))
    assert recovered.scanned_from == 0 and kept == data[: ends[19]]


def test_every_cut_keeps_the_longest_whole_unit_prefix(tmp_path: Path) -> None:
    """A small marker log cut at every byte: the log keeps exactly the whole units before
    the cut, and the next quarantine gets the rest."""
    data, ends = marker_log([1, 3, 2, 1, 4])
    directory = Path(tempfile.mkdtemp(dir=FAST_TMP))
    for cut in range(len(data) + 1):
        recovered, kept = recover_bytes(directory, data[:cut])
        keep = max(end for end in ends if end <= cut)
        assert kept == data[:keep]
        assert recovered.last_sequence == data[:keep].count(b"\n")
        whole_lines = data[:cut].count(b"\n") - data[:keep].count(b"\n")
        assert recovered.cut_events == whole_lines


def test_quarantine_files_are_numbered_and_keep_the_cut_bytes(tmp_path: Path) -> None:
    data, _ = marker_log([2, 2])
    path = tmp_path / "events.ndjson"
    contents = []
    for garbage in (b"first junk\n", b"second \x00 junk"):
        path.write_bytes(data + garbage)
        fd = os.open(path, os.O_RDWR)
        try:
            recovered = recover_log(fd, path, RUN)
        finally:
            os.close(fd)
        assert recovered.quarantined is not None
        contents.append((recovered.quarantined.name, recovered.quarantined.read_bytes()))
    assert contents == [
        ("events.ndjson.torn-1", b"first junk\n"),
        ("events.ndjson.torn-2", b"second \x00 junk"),
    ]
    assert path.read_bytes() == data


def test_a_failed_recovery_leaves_no_empty_quarantine_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R4: each recovery attempt that failed on a full disk left an empty
    ``events.ndjson.torn-N`` beside the log; one cut must leave one quarantine file."""
    data, _ = marker_log([2, 2])
    path = tmp_path / "events.ndjson"
    damaged = data + b"torn \x00 junk"
    path.write_bytes(damaged)
    real_write = os.write

    def disk_full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)
    for _ in range(3):
        fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(StorageError, match="No space"):
                recover_log(fd, path, RUN)
        finally:
            os.close(fd)
        assert path.read_bytes() == damaged  # nothing cut without its quarantine copy
        assert list(tmp_path.glob("events.ndjson.torn-*")) == []
    monkeypatch.setattr(os, "write", real_write)
    fd = os.open(path, os.O_RDWR)
    try:
        recovered = recover_log(fd, path, RUN)
    finally:
        os.close(fd)
    assert [p.name for p in tmp_path.glob("events.ndjson.torn-*")] == ["events.ndjson.torn-1"]
    assert recovered.quarantined is not None
    assert recovered.quarantined.read_bytes() == b"torn \x00 junk"
    assert path.read_bytes() == data


DAMAGE = st.sampled_from(["truncate", "zeros", "garbage", "replay", "drop_unit", "flip"])


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=12),
    damage=DAMAGE,
    where=st.floats(0, 1),
    length=st.integers(1, 600),
    use_checkpoint=st.booleans(),
    completed=st.booleans(),
)
def test_any_damage_leaves_a_whole_unit_prefix_with_contiguous_sequences(
    sizes: list[int],
    damage: str,
    where: float,
    length: int,
    use_checkpoint: bool,
    completed: bool,
) -> None:
    """Random cuts and corruptions of a marker log: what recovery keeps is always a prefix
    of the original that ends at a unit end, with sequences 1..n, and it is the longest
    such prefix before the first damaged byte; the quarantine holds the rest.

    The first unit is one line, as in every log the server writes (``run.queued`` alone):
    a log whose first line has no marker is taken for a legacy log.
    """
    data, ends = marker_log([1, *sizes], completed=completed)
    at = int(where * len(data))
    if damage == "truncate":
        damaged = data[:at]
    elif damage == "zeros":
        damaged = data[:at] + bytes(length) + data[at + length :]
    elif damage == "garbage":
        damaged = data[:at] + random.Random(length).randbytes(length) + b"\n"
    elif damage == "replay":  # a whole, valid line of an earlier sequence
        damaged = data[:at] + data[: data.index(b"\n") + 1] + data[at:]
    elif damage == "drop_unit":
        unit = min(int(where * (len(ends) - 1)), len(ends) - 2)
        at = ends[unit]
        damaged = data[:at] + data[ends[unit + 1] :]
    else:  # one byte changed into a quote: the line is no longer JSON
        at = min(at, len(data) - 1)
        damaged = data[:at] + b'"' + data[at + 1 :]
    first_bad = next(
        (i for i, (a, b) in enumerate(zip(damaged, data, strict=False)) if a != b),
        min(len(damaged), len(data)),
    )
    expected = max(end for end in ends if end <= first_bad)
    checkpoint = None
    if use_checkpoint:
        mark = ends[int(where * 7919) % (ends.index(expected) + 1)]
        checkpoint = (data[:mark].count(b"\n"), mark)
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        recovered, kept = recover_bytes(Path(tmp), damaged, checkpoint)
    assert kept == data[:expected]
    assert_gap_free(kept)
    assert recovered.last_sequence == kept.count(b"\n")
    assert recovered.ended == (completed and expected == len(data))
    if checkpoint is not None:
        assert recovered.scanned_from == checkpoint[1]


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
            # only whole write units survive: the kept log ends with a unit's last line
            kept = log.keys(REF).live.read_bytes()
            assert kept.endswith(UNIT_END) and len(kept) == writer.bytes_written
            await writer.append(drafts(1))
            await writer.close()
            assert await read_sequences(log, REF) == list(range(1, last + 2))
            return last + 1

        previous = asyncio.run(check())
        assert previous > 1


def test_a_read_before_recovery_never_serves_the_lines_of_a_torn_unit(tmp_path: Path) -> None:
    """Found from outside: after a kill -9 left two whole lines of a unit (no end mark) and
    a partial one, reads served those two lines until the run was taken again; recovery
    then cut them and numbered other events 102 and 103 (a follower saw both, and a
    JSON page cached as immutable changed under its ETag)."""

    async def scenario() -> None:
        log = new_log(tmp_path)
        writer = await log.open_writer(REF)
        await writer.append(drafts(1))
        await writer.append(drafts(3, start=1))
        await writer.close()
        path = log.keys(REF).live
        whole = path.read_bytes()
        # a crash during the next unit: two of its lines whole, the third torn
        writer = await log.open_writer(REF)
        torn = encode_batch(writer.prepare(drafts(3, start=4)))
        await writer.close()
        path.write_bytes(whole + torn[: torn.index(b"\n", torn.index(b"\n") + 1) + 1] + b'{"ty')
        # nobody holds the run: the reads stop at the last whole unit
        assert await read_sequences(log, REF) == [1, 2, 3, 4]
        # nor does a follower (replay, then waiting for more)
        seen: list[int] = []

        async def follow() -> None:
            async for chunk in log.follow(REF, after_sequence=2):
                seen.append(chunk.last_sequence)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follow(), 0.5)
        assert seen and max(seen) == 4
        # the writer opened again: recovery cuts the torn unit; the next event is 5
        writer = await log.open_writer(REF)
        events = await writer.append(drafts(1, start=9))
        await writer.close()
        assert [e.sequence for e in events] == [5]
        assert await read_sequences(log, REF) == [1, 2, 3, 4, 5]

    asyncio.run(scenario())


def test_a_file_that_ends_at_a_unit_end_or_is_legacy_is_read_to_its_end(tmp_path: Path) -> None:
    """The torn-unit trim costs nothing on a whole file and never hides a legacy log's lines
    (no marks at all)."""
    from runevents.eventlog.locate import whole_units_end

    marked, _ = marker_log([1, 3, 2])
    legacy = marked.replace(UNIT_END, b"\n")
    torn = marked + encode_event(make_event(7)) + b'{"ty'
    cases = ((marked, len(marked)), (legacy, len(legacy)), (torn, len(marked)))
    for data, expected in cases:
        path = tmp_path / "log"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert whole_units_end(fd, len(data)) == expected
        finally:
            os.close(fd)
