"""Line splitting and line -> event translation (runevents.capture)."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runevents.capture import (
    RESERVED_TYPES,
    ConsoleTranslator,
    CutLine,
    Line,
    LineSplitter,
    format_size,
    utf8_prefix_length,
)


def split_all(chunks: list[bytes], max_line_bytes: int = 64) -> list[Line]:
    splitter = LineSplitter(max_line_bytes)
    out: list[Line] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
        assert splitter.pending <= max_line_bytes
    out.extend(splitter.finish())
    return out


def reference(data: bytes, max_line_bytes: int) -> list[tuple[bytes, int]]:
    """The obvious (unbounded-memory) definition of the splitter's output."""
    lines = data.split(b"\n")
    last = lines.pop()
    out = []
    for line in lines:
        out.append(line[:-1] if line.endswith(b"\r") else line)
    if last:
        out.append(last)  # a last line without newline keeps a trailing \r
    result = []
    for line in out:
        if len(line) <= max_line_bytes:
            result.append((line, 0))
        else:
            keep = utf8_prefix_length(line[:max_line_bytes])
            result.append((line[:keep], len(line) - keep))
    return result


def as_pairs(lines: list[Line]) -> list[tuple[bytes, int]]:
    return [(x.head, x.dropped) if isinstance(x, CutLine) else (x, 0) for x in lines]


# -- LineSplitter ------------------------------------------------------------------


def test_lines_split_across_chunk_boundaries() -> None:
    assert split_all([b"hel", b"lo\nwor", b"ld\n", b"\n", b"x\ny"]) == [
        b"hello",
        b"world",
        b"",
        b"x",
        b"y",
    ]


def test_crlf_is_a_line_end_even_split_between_chunks() -> None:
    assert split_all([b"a\r\nb\r", b"\nc\r\n"]) == [b"a", b"b", b"c"]


def test_lone_cr_inside_a_line_stays() -> None:
    assert split_all([b"progress 10%\rprogress 20%\r\n"]) == [b"progress 10%\rprogress 20%"]


def test_last_line_without_newline_is_a_line() -> None:
    assert split_all([b"one\ntwo"]) == [b"one", b"two"]
    assert split_all([b"one\n"]) == [b"one"]
    assert split_all([]) == []


def test_line_over_the_cap_is_cut_and_the_rest_counted() -> None:
    assert split_all([b"x" * 100 + b"\nok\n"], max_line_bytes=10) == [
        CutLine(b"x" * 10, 90),
        b"ok",
    ]


def test_long_line_fed_in_small_chunks_keeps_memory_bounded() -> None:
    splitter = LineSplitter(1000)
    out: list[Line] = []
    for _ in range(10_000):  # a 10 MB line in 1 KiB pieces
        out.extend(splitter.feed(b"y" * 1024))
        assert splitter.pending <= 1000
    out.extend(splitter.feed(b"\r\nnext\n"))
    assert out == [CutLine(b"y" * 1000, 10_000 * 1024 - 1000), b"next"]


def test_crlf_right_after_the_cap_is_not_counted_as_dropped() -> None:
    # exactly max bytes of content: the \r of \r\n is not content, so nothing was cut
    assert split_all([b"abcd\r", b"\n"], max_line_bytes=4) == [b"abcd"]
    assert split_all([b"abcd\r\n"], max_line_bytes=4) == [b"abcd"]
    assert split_all([b"abcde\r", b"\n"], max_line_bytes=4) == [CutLine(b"abcd", 1)]


def test_cut_never_splits_a_utf8_character() -> None:
    line = "é".encode() * 10  # 20 bytes, 2 per character
    [cut] = split_all([line + b"\n"], max_line_bytes=5)
    assert isinstance(cut, CutLine)
    assert cut.head == "é".encode() * 2
    assert cut.dropped == 16


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\xc3\xa9", b"\xff", b"{", b" "]))
    .map(b"".join)
    .filter(lambda d: len(d) < 400),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    max_line_bytes=st.integers(min_value=1, max_value=20),
)
def test_splitting_is_independent_of_chunking(
    data: bytes, cuts: list[int], max_line_bytes: int
) -> None:
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    assert as_pairs(split_all(chunks, max_line_bytes)) == reference(data, max_line_bytes)


def test_utf8_prefix_length() -> None:
    euro = "€".encode()  # 3 bytes
    assert utf8_prefix_length(b"ab" + euro) == 5
    assert utf8_prefix_length(b"ab" + euro[:2]) == 2
    assert utf8_prefix_length(b"ab" + euro[:1]) == 2
    assert utf8_prefix_length(b"\xff\xfe") == 2  # garbage is left for the decoder
    assert utf8_prefix_length(b"") == 0


def test_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(10 * 1024 * 1024 - 64 * 1024) == "9.9 MiB"
    assert format_size(1536) == "1.5 KiB"


# -- ConsoleTranslator -------------------------------------------------------------


def test_console_line_payload_and_levels() -> None:
    tr = ConsoleTranslator(scope="run")
    [out] = tr.translate("stdout", [b"\x1b[32mok\x1b[0m"])
    assert out.type == "console.line"
    assert out.payload == {
        "scope": "run",
        "stream": "stdout",
        "level": "info",
        "message": "\x1b[32mok\x1b[0m",
    }
    [err] = tr.translate("stderr", [b"careful"])
    assert err.payload["level"] == "warning"
    assert err.payload["stream"] == "stderr"


def test_binary_garbage_is_decoded_with_replacement() -> None:
    [out] = ConsoleTranslator(scope="run").translate("stdout", [b"ok \xff\xfe\x00 end"])
    assert out.payload["message"] == "ok \ufffd\ufffd\x00 end"


def test_cut_line_has_marker_and_flag() -> None:
    tr = ConsoleTranslator(scope="build", phase="deps")
    [out] = tr.translate("stdout", [CutLine(b"abc", 10 * 1024 * 1024)])
    assert out.payload["message"] == "abc …[truncated 10.0 MiB]"
    assert out.payload["truncated"] is True
    assert out.payload["truncated_bytes"] == 10 * 1024 * 1024
    assert out.payload["phase"] == "deps"
    assert tr.truncated == 1


def test_json_object_with_string_type_is_a_structured_event() -> None:
    line = orjson.dumps(
        {"type": "run.table.summary", "payload": {"table_id": "t1", "row_count": 3}}
    )
    [out] = ConsoleTranslator(scope="run").translate("stdout", [line])
    assert out.type == "run.table.summary"
    assert out.payload == {"table_id": "t1", "row_count": 3}
    assert out.created_at is None


def test_structured_created_at_is_normalized_or_the_line_stays_text() -> None:
    # contract 2: a created_at that is not RFC 3339 makes the line invalid (a
    # producer gets 422): the job's line is kept as a plain console line
    tr = ConsoleTranslator(scope="run")
    good = b'{"type": "x.y", "created_at": "2026-01-02T03:04:05+02:00"}'
    bad = b'{"type": "x.y", "created_at": "yesterday"}'
    [a, b] = tr.translate("stdout", [good, bad])
    assert a.created_at == "2026-01-02T01:04:05.000000Z"
    assert a.payload == {}
    assert b.type == "console.line" and b.payload["message"] == bad.decode()


def test_structured_payload_that_is_not_an_object_stays_text() -> None:
    line = b'{"type": "x", "payload": [1]}'
    [out] = ConsoleTranslator(scope="run").translate("stdout", [line])
    assert out.type == "console.line" and out.payload["message"] == line.decode()


@pytest.mark.parametrize(
    "line",
    [
        b'{"type": 3}',
        b'{"kind": "x"}',
        b'{"type": ""}',
        b'["type", "x"]',
        b'{"type": "x"',
        b"{not json}",
        b'{"type": "x"} trailing',
    ],
)
def test_lines_that_are_not_structured_events_are_console_lines(line: bytes) -> None:
    [out] = ConsoleTranslator(scope="run").translate("stdout", [line])
    assert out.type == "console.line"
    assert out.payload["message"] == line.decode()


@pytest.mark.parametrize("kind", sorted(RESERVED_TYPES))
def test_child_cannot_emit_server_lifecycle_events(kind: str) -> None:
    line = orjson.dumps({"type": kind, "payload": {"status": "succeeded"}})
    [out] = ConsoleTranslator(scope="run").translate("stdout", [line])
    assert out.type == "console.line"
    assert out.payload["message"] == line.decode()


def test_indented_json_is_structured() -> None:
    [out] = ConsoleTranslator(scope="run").translate("stdout", [b'   {"type": "a.b"}'])
    assert out.type == "a.b"


def test_structured_events_disabled_gives_console_lines() -> None:
    tr = ConsoleTranslator(scope="run", structured=False)
    [out] = tr.translate("stdout", [b'{"type": "a.b"}'])
    assert out.type == "console.line"


def test_console_lines_carry_the_producers_current_phase() -> None:
    tr = ConsoleTranslator(scope="run")
    out = tr.translate(
        "stdout",
        [
            b"before",
            b'{"type": "run.phase.started", "payload": {"phase": "extracting"}}',
            b"during",
            b'{"type": "run.phase.completed", "payload": {"phase": "extracting"}}',
            b"after",
        ],
    )
    phases = [e.payload.get("phase") for e in out if e.type == "console.line"]
    assert phases == [None, "extracting", None]
    # the fast path (braces=False) still stamps the phase set by an earlier batch
    tr.translate("stdout", [b'{"type": "run.phase.started", "payload": {"phase": "w"}}'])
    out = tr.translate("stderr", [b"x", b"y"], braces=False)
    assert [e.payload["phase"] for e in out] == ["w", "w"]


def test_fast_path_still_checks_the_first_line() -> None:
    # the first line may have started (with its "{") in an earlier read
    tr = ConsoleTranslator(scope="run")
    out = tr.translate("stdout", [b'{"type": "a.b"}', b"plain", CutLine(b"c", 5)], braces=False)
    assert [e.type for e in out] == ["a.b", "console.line", "console.line"]
    assert out[2].payload["truncated"] is True


def test_run_error_is_remembered_only_when_well_formed() -> None:
    tr = ConsoleTranslator(scope="run")
    tr.translate("stdout", [b'{"type": "run.error", "payload": {"code": "x"}}'])
    assert tr.run_error is None
    tr.translate(
        "stdout",
        [b'{"type": "run.error", "payload": {"stage": "run", "code": "bad", "message": "m"}}'],
    )
    assert tr.run_error == {"stage": "run", "code": "bad", "message": "m"}


def test_build_scope_stamps_build_id_and_phase() -> None:
    tr = ConsoleTranslator(scope="build", phase="pip install", build_id="build_1")
    [line, event] = tr.translate("stdout", [b"x", b'{"type": "run.phase.started"}'])
    assert line.build_id == event.build_id == "build_1"
    assert line.payload["scope"] == "build"
    assert tr.phase == "pip install"  # a build command cannot move the build phase


def test_notice_is_marked_as_coming_from_runevents() -> None:
    out = ConsoleTranslator(scope="run").notice("stopping", level="error")
    assert out.payload == {
        "scope": "run",
        "stream": "stderr",
        "level": "error",
        "message": "runevents: stopping",
        "logger": "runevents",
    }


@pytest.mark.parametrize(
    "kind", ["log.recovered", "build.phase.started", "build.phase.completed", "run.queued"]
)
def test_a_job_could_emit_log_recovered(kind: str) -> None:
    # Defect: log.recovered (the server's) and build.phase.* were stored as real
    # events from a job's stdout, while build.* / run.started were refused
    line = orjson.dumps({"type": kind, "payload": {"phase": "x", "cut_bytes": 1}})
    [out] = ConsoleTranslator(scope="run").translate("stdout", [line])
    assert out.type == "console.line" and out.payload["message"] == line.decode()


@pytest.mark.parametrize(
    "event",
    [
        {"type": "console.line", "payload": {"stream": "bogus", "message": "m"}},
        {"type": "console.line", "payload": {"level": "fatal", "message": "m"}},
        {"type": "console.line", "payload": {"scope": "job", "message": "m"}},
        {"type": "console.line", "payload": {"level": ["info"], "message": "m"}},
        {"type": "console.line", "payload": {"message": 12345}},
        {"type": "console.line", "payload": {}},
        {"type": "console.line", "payload": "not an object"},
        {"type": "x.y", "payload": None},
        {"type": "console.line", "created_at": "not-a-date", "payload": {"message": "m"}},
        {"type": "x.y", "created_at": 5},
        {"type": "x.y", "source": 5},
        {"type": "x" * 129},
    ],
)
def test_a_job_could_emit_an_invalid_console_line(event: dict[str, object]) -> None:
    # Defect: these were stored as malformed events (a payload string became {}, its
    # text lost); a producer gets 422 for each: the job's line stays its raw text
    line = orjson.dumps(event)
    [out] = ConsoleTranslator(scope="run").translate("stderr", [line])
    assert out.type == "console.line"
    assert out.payload == {
        "scope": "run",
        "stream": "stderr",
        "level": "warning",
        "message": line.decode(),
    }


def test_a_structured_console_line_gets_the_fields_it_left_out() -> None:
    tr = ConsoleTranslator(scope="build")
    [out] = tr.translate("stderr", [b'{"type": "console.line", "payload": {"message": "m"}}'])
    assert out.payload == {"scope": "build", "stream": "stderr", "level": "warning", "message": "m"}
    given = b'{"type":"console.line","payload":{"stream":"stdout","level":"debug","message":"m"}}'
    [out] = tr.translate("stderr", [given])
    assert out.payload == {"scope": "build", "stream": "stdout", "level": "debug", "message": "m"}
