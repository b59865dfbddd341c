"""The sparse sequence -> offset index (format, lookup, building by scan)."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from runevents.eventlog.index import (
    HEADER,
    RECORD,
    SparseIndex,
    batch_records,
    build_index,
    line_sequence,
)
from runevents.eventlog.locate import read_index_file
from runevents.events import Event, encode_batch, encode_event, mark_unit_end


def make_line(sequence: int, message: str = "m") -> bytes:
    return encode_event(
        Event(
            type="console.line",
            event_id=f"evt_{sequence}",
            created_at="2026-01-01T00:00:00.000000Z",
            sequence=sequence,
            source="worker",
            workspace_id="w",
            configuration_id="c",
            run_id="run_x",
            build_id=None,
            payload={"message": message},
        )
    )


def test_records_round_trip_and_lookup_finds_the_last_record_at_or_before() -> None:
    index = SparseIndex()
    for sequence, offset in [(10, 1000), (20, 2100), (30, 3300)]:
        assert index.add(sequence, offset)
    parsed = SparseIndex.from_bytes(index.to_bytes())
    assert parsed is not None
    assert list(parsed.sequences) == [10, 20, 30]
    assert parsed.lookup(1) == (1, 0)  # implied first record
    assert parsed.lookup(9) == (1, 0)
    assert parsed.lookup(10) == (10, 1000)
    assert parsed.lookup(29) == (20, 2100)
    assert parsed.lookup(10**9) == (30, 3300)


def test_records_must_increase() -> None:
    index = SparseIndex()
    assert index.add(5, 100)
    assert not index.add(5, 200)
    assert not index.add(6, 100)
    assert len(index) == 1


def test_a_trailing_partial_record_is_ignored_and_bad_files_are_refused() -> None:
    index = SparseIndex()
    index.add(5, 100)
    index.add(9, 300)
    data = index.to_bytes()
    parsed = SparseIndex.from_bytes(data[:-3])
    assert parsed is not None and list(parsed.sequences) == [5]
    assert SparseIndex.from_bytes(b"") is None
    assert SparseIndex.from_bytes(b"garbage" * 5) is None
    out_of_order = HEADER + RECORD.pack(9, 300) + RECORD.pack(5, 100)
    assert SparseIndex.from_bytes(out_of_order) is None


def test_truncate_drops_records_at_or_past_the_end() -> None:
    index = SparseIndex()
    for sequence, offset in [(2, 10), (3, 20), (4, 30)]:
        index.add(sequence, offset)
    assert index.truncate(30) == 2
    assert index.last == (3, 20)
    assert index.truncate(0) == 0
    assert index.last == (1, 0)


def test_line_sequence_reads_the_envelope_field_not_a_lookalike_in_a_string() -> None:
    line = make_line(42, message=',"sequence":7,')
    assert line_sequence(line) == 42
    tricky = encode_event(
        Event(
            type='x,"sequence":7,',
            event_id="e",
            created_at="2026-01-01T00:00:00.000000Z",
            sequence=8,
            source="s",
            workspace_id="w",
            configuration_id="c",
            run_id="r",
            build_id=None,
            payload={},
        )
    )
    assert line_sequence(tricky) == 8
    assert line_sequence(b"not an event") is None


@given(
    sizes=st.lists(st.integers(0, 300), min_size=0, max_size=60),
    block=st.integers(1, 700),
    every=st.integers(50, 2000),
    partial=st.binary(max_size=30).filter(lambda b: b"\n" not in b),
)
def test_build_index_records_point_at_their_lines(
    sizes: list[int], block: int, every: int, partial: bytes
) -> None:
    lines = [make_line(i + 1, "x" * size) for i, size in enumerate(sizes)]
    data = b"".join(lines) + partial
    blocks = [data[i : i + block] for i in range(0, len(data), block)]
    index, end = build_index(blocks, every)
    assert end == len(data) - len(partial)
    starts = {}
    position = 0
    for i, line in enumerate(lines):
        starts[position] = i + 1
        position += len(line)
    previous = 0
    for sequence, offset in zip(index.sequences, index.offsets, strict=True):
        assert starts.get(offset) == sequence  # a real line start, with its sequence
        assert offset < end
        assert offset - previous >= every or previous == 0
        previous = offset
    # no gap much larger than the step (plus one line)
    ends = [0, *index.offsets, end]
    longest = max((len(line) for line in lines), default=0)
    assert all(b - a <= every + longest for a, b in itertools.pairwise(ends))


def test_lookup_ignores_records_past_the_end_the_reader_sees() -> None:
    index = SparseIndex()
    for sequence, offset in [(10, 1000), (20, 2000), (30, 3000)]:
        index.add(sequence, offset)
    assert index.lookup(25, end=2000) == (10, 1000)
    assert index.lookup(25, end=2001) == (20, 2000)
    assert index.lookup(25, end=500) == (1, 0)
    assert len(index) == 3  # never mutated


def test_parsed_sidecars_are_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson.idx"
    index = SparseIndex()
    index.add(5, 100)
    path.write_bytes(index.to_bytes())
    first = read_index_file(path)
    assert first is not None and read_index_file(path) is first
    index.add(9, 300)
    path.write_bytes(index.to_bytes())  # grows: a new key
    second = read_index_file(path)
    assert second is not None and second is not first and list(second.sequences) == [5, 9]
    assert read_index_file(tmp_path / "missing") is None


@given(
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=80),
    cuts=st.lists(st.integers(1, 20), min_size=1, max_size=20),
    every_bytes=st.integers(50, 3000),
    every_events=st.integers(1, 40),
)
def test_batch_records_follow_the_per_line_rule(
    sizes: list[int], cuts: list[int], every_bytes: int, every_events: int
) -> None:
    """The writer's per-batch records equal checking the rule at every line."""
    lines = [b"x" * (size - 1) + b"\n" for size in sizes]
    expected, previous, offset = [], (1, 0), 0
    for sequence, line in enumerate(lines, start=1):
        if offset - previous[1] >= every_bytes or sequence - previous[0] >= every_events:
            previous = (sequence, offset)
            expected.append(previous)
        offset += len(line)
    got: list[tuple[int, int]] = []
    previous, position, sequence, i = (1, 0), 0, 1, 0
    for cut in cuts * len(lines):
        if i >= len(lines):
            break
        batch = b"".join(lines[i : i + cut])
        records = batch_records(batch, position, sequence, previous, every_bytes, every_events)
        got += records
        previous = records[-1] if records else previous
        position += len(batch)
        sequence += min(cut, len(lines) - i)
        i += cut
    assert got == expected


def _envelopes(first: int, messages: list[str]) -> bytes:
    events = [
        Event(
            type='odd,"sequence":7,type',  # the envelope's own field is the first unescaped one
            event_id=f"evt_{first + i}",
            created_at="2026-01-02T03:04:05.000000Z",
            sequence=first + i,
            source="producer",
            workspace_id="acme",
            configuration_id="etl",
            run_id="run_x",
            build_id=None,
            payload={"message": message, "sequence": 5},
        )
        for i, message in enumerate(messages)
    ]
    return mark_unit_end(encode_batch(events))


@given(
    sizes=st.lists(st.integers(0, 400), min_size=1, max_size=80),
    cuts=st.lists(st.integers(1, 20), min_size=1, max_size=20),
    every_bytes=st.integers(50, 3000),
    every_events=st.integers(1, 40),
)
def test_batch_records_of_envelope_lines_follow_the_per_line_rule(
    sizes: list[int], cuts: list[int], every_bytes: int, every_events: int
) -> None:
    """Read from the lines' own sequence fields, the records are the per-line rule's."""
    messages = ['x,"sequence":9,' * (size // 15) for size in sizes]
    batches, i = [], 0
    for cut in itertools.cycle(cuts):
        if i >= len(messages):
            break
        batches.append((i + 1, _envelopes(i + 1, messages[i : i + cut])))
        i += cut
    lines = b"".join(batch for _, batch in batches).splitlines(keepends=True)
    expected, previous, offset = [], (1, 0), 0
    for sequence, line in enumerate(lines, start=1):
        if offset - previous[1] >= every_bytes or sequence - previous[0] >= every_events:
            previous = (sequence, offset)
            expected.append(previous)
        offset += len(line)
    got: list[tuple[int, int]] = []
    previous, position = (1, 0), 0
    for first, batch in batches:
        records = batch_records(batch, position, first, previous, every_bytes, every_events)
        got += records
        previous = records[-1] if records else previous
        position += len(batch)
    assert got == expected
