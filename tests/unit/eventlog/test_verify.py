"""The forward scan of a log (eventlog/verify.py): the fast (whole block) and the slow
(line by line) checks agree, lines across block boundaries, unit markers, and reasons."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runevents.eventlog import verify
from runevents.eventlog.verify import Scan, describe_line, scan_forward
from runevents.events import Event, encode_batch, encode_event, mark_unit_end

RUN = "run_01JABCDEFGHJKMNPQRSTVWXYZ0"


def event(sequence: int, size: int = 0, type_: str = "console.line") -> Event:
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
        payload={"message": "é" * size, "nested": {"type": "run.completed", "run_id": "x"}},
    )


def units(sizes: list[int], line_size: int = 0) -> bytes:
    out = bytearray()
    sequence = 1
    for size in sizes:
        events = [event(s, line_size) for s in range(sequence, sequence + size)]
        out += mark_unit_end(encode_batch(events))
        sequence += size
    return bytes(out)


def scan_bytes(tmp_path: Path, data: bytes, block: int, start: int = 0, sequence: int = 0) -> Scan:
    path = tmp_path / "log"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return scan_forward(fd, start, sequence, RUN, len(data), block=block)
    finally:
        os.close(fd)


def fields(scan: Scan) -> tuple[object, ...]:
    return (
        scan.valid_end,
        scan.valid_sequence,
        scan.unit_end,
        scan.unit_sequence,
        scan.completed_end,
        scan.problem,
        scan.partial,
    )


def test_a_clean_log_is_valid_to_its_end_at_any_block_size(tmp_path: Path) -> None:
    data = units([1, 5, 3, 40, 2], line_size=300)
    results = {fields(scan_bytes(tmp_path, data, block)) for block in (7, 100, 4096, 1 << 20)}
    [result] = results
    assert result == (len(data), 51, len(data), 51, None, None, False)


def test_a_clean_block_is_checked_whole_without_the_line_by_line_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The speed of recovery rests on this: clean blocks never take the slow path."""

    def slow(*_: object) -> bool:
        raise AssertionError("the line-by-line check ran on a clean block")

    monkeypatch.setattr(verify._Scanner, "_slow", slow)
    data = units([1, 200, 3, 7], line_size=100)
    scan = scan_bytes(tmp_path, data, 8192)
    assert (scan.valid_end, scan.valid_sequence, scan.problem) == (len(data), 211, None)


def test_lines_longer_than_a_block_are_carried_whole(tmp_path: Path) -> None:
    data = units([2, 1], line_size=50_000)
    scan = scan_bytes(tmp_path, data, 4096)
    assert (scan.valid_end, scan.valid_sequence, scan.problem) == (len(data), 3, None)


def test_a_line_longer_than_any_event_is_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "MAX_LINE_BYTES", 10_000)
    data = units([1])
    scan = scan_bytes(tmp_path, data + b"x" * 20_000, 4096)
    assert scan.valid_end == len(data) and scan.problem == "a line longer than 10000 bytes"


def test_a_scan_from_a_checkpoint_expects_the_next_sequence(tmp_path: Path) -> None:
    data = units([3, 3])
    middle = data.index(b" \n") + 2
    scan = scan_bytes(tmp_path, data, 1 << 20, start=middle, sequence=3)
    assert (scan.valid_sequence, scan.unit_sequence, scan.problem) == (6, 6, None)
    scan = scan_bytes(tmp_path, data, 1 << 20, start=middle, sequence=4)
    assert scan.valid_end == middle and scan.problem == "sequence 4 where 5 was expected"


def test_describe_line_names_each_kind_of_damage() -> None:
    good = encode_event(event(7))
    assert describe_line(good, 7, RUN, after_completed=False) is None
    assert describe_line(mark_unit_end(good), 7, RUN, after_completed=False) is None
    assert describe_line(good, 8, RUN, False) == "sequence 7 where 8 was expected"
    assert describe_line(good, 7, "run_other", False) == f"an event of another run ({RUN!r})"
    assert describe_line(good, 7, RUN, True) == "a line after run.completed"
    assert describe_line(b"\x00" * 4095 + b"\n", 7, RUN, False) == (
        "a zeroed block: 4095 NUL bytes"
    )
    assert describe_line(b'{"type":"x"}\n', 7, RUN, False).startswith("not an event: ")  # type: ignore[union-attr]
    assert describe_line(b'{"type":"x",\n', 7, RUN, False).startswith("not a JSON line")  # type: ignore[union-attr]
    assert describe_line(b"[1]\n", 7, RUN, False) == "not an event line"


LINE_DAMAGE = st.sampled_from(
    [
        b"",
        b"\n",
        b"{}\n",
        b'{"type":"console.line"}\n',
        b"\x00" * 64,
        b'{"type":"a","sequence":1,"run_id":"' + RUN.encode() + b'"} {"type":"b"}\n',
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=8),
    at=st.floats(0, 1),
    damage=LINE_DAMAGE,
    block=st.sampled_from([16, 333, 4096, 1 << 20]),
)
def test_fast_and_slow_checks_agree(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    at: float,
    damage: bytes,
    block: int,
) -> None:
    """Whatever the block size (so whatever mix of whole-block and line-by-line checks),
    the scan stops at the same line for the same reason."""
    data = units(sizes, line_size=20)
    cut = int(at * len(data))
    damaged = data[:cut] + damage + data[cut:]
    tmp = tmp_path_factory.mktemp("scan")
    results = {fields(scan_bytes(tmp, damaged, size)) for size in (block, 10**9)}
    assert len(results) == 1
    # and against a line-by-line reference
    [(valid_end, valid_sequence, *_)] = results
    expected_end = 0
    *lines, _partial = damaged.split(b"\n")
    for sequence, line in enumerate(lines, start=1):
        if describe_line(line + b"\n", sequence, RUN, False) is not None:
            break
        expected_end += len(line) + 1
    assert valid_end == expected_end
    assert valid_sequence == damaged[:expected_end].count(b"\n")
