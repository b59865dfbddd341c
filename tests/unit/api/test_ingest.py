"""Parsing of producer NDJSON batches (contract section 6), without HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runevents.api.ingest import (
    MAX_DEPTH,
    _check_completed_last,
    _fast_batch,
    check_content_type,
    checked_batch,
    json_depth,
    parse_batch,
    read_body,
)
from runevents.exceptions import InvalidEvent, InvalidInput, PayloadTooLarge, UnsupportedMediaType

RUN = "run_01JABCDEFGHJKMNPQRSTVWXYZ0"
IDS = {"workspace_id": "acme", "configuration_id": "etl", "run_id": RUN}


def parse(body: bytes, max_event_bytes: int = 1 << 20) -> list[object]:
    return list(parse_batch(body, **IDS, max_event_bytes=max_event_bytes))


def test_fields_defaults_and_ignored_keys() -> None:
    body = (
        b'{"type":"console.line","payload":{"message":"hi"},"source":"ci","sequence":99,'
        b'"event_id":"evt_x","extra":1}\n'
        b'{"type":"run.phase.started","created_at":"2026-01-02T03:04:05+02:00"}\n'
    )
    first, second = parse_batch(body, **IDS, max_event_bytes=1 << 20)
    assert first.type == "console.line" and first.payload == {"message": "hi"}
    assert first.source == "ci" and first.created_at is None
    assert second.payload == {}
    assert second.created_at == "2026-01-02T01:04:05.000000Z"


def test_matching_ids_are_fine() -> None:
    body = b'{"type":"x","workspace_id":"acme","configuration_id":"etl","run_id":"%s"}' % (
        RUN.encode()
    )
    assert len(parse(body)) == 1


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        (b"not json", "not a JSON object"),
        (b"[1,2]", "Expected `object`"),
        (b'"text"', "Expected `object`"),
        (b'{"payload":{}}', "missing required field `type`"),
        (b'{"type":""}', "non-empty"),
        (b'{"type":5}', "Expected `str`"),
        (b'{"type":"x","payload":[1]}', "Expected `object`"),
        (b'{"type":"x","payload":null}', "Expected `object`"),
        (b'{"type":"x","created_at":"yesterday"}', "RFC 3339"),
        (b'{"type":"x","created_at":"2026-01-02T03:04:05"}', "RFC 3339"),
        (b'{"type":"x","workspace_id":"other"}', "workspace_id"),
        (b'{"type":"x","configuration_id":"other"}', "configuration_id"),
        (b'{"type":"x","run_id":"run_other"}', "run_id"),
        (b'{"type":"x","payload":{"m":"\xff\xfe"}}', "UTF-8"),
        (b'{"type":"x","payload":{"m":"\\ud800"}}', "surrogate"),
        (b'{"type":"x"}\x00', "not a JSON object"),
        (b'{"type":"x","source":7}', "Expected `str | null`"),
    ],
)
def test_bad_line_is_named(bad_line: bytes, reason: str) -> None:
    body = b'{"type":"ok"}\n{"type":"ok"}\n' + bad_line + b'\n{"type":"ok"}\n'
    with pytest.raises(InvalidEvent) as info:
        parse(body)
    assert info.value.line == 3
    assert info.value.message.startswith("line 3: ")
    assert reason in info.value.message


def test_blank_lines_are_skipped_but_counted() -> None:
    body = b'\n{"type":"a"}\n\n   \r\n{"type":"b"}\n\n'
    assert [d.type for d in parse(body)] == ["a", "b"]  # type: ignore[attr-defined]
    with pytest.raises(InvalidEvent) as info:
        parse(b'\n\n{"type":"a"}\n\nbad\n')
    assert info.value.line == 5


def test_crlf_line_endings() -> None:
    assert len(parse(b'{"type":"a"}\r\n{"type":"b"}\r\n')) == 2


@pytest.mark.parametrize("body", [b"", b"\n", b"\n \n\r\n"])
def test_empty_batch(body: bytes) -> None:
    with pytest.raises(InvalidEvent, match="no events"):
        parse(body)


def test_run_completed_must_be_last_with_its_physical_line() -> None:
    body = (
        b'{"type":"a"}\n\n{"type":"run.completed","payload":{"status":"succeeded"}}\n{"type":"b"}\n'
    )
    with pytest.raises(InvalidEvent) as info:
        parse(body)
    assert info.value.line == 3
    # last is fine
    assert len(parse(b'{"type":"a"}\n{"type":"run.completed","payload":{"status":"failed"}}')) == 2


def test_event_over_the_limit_is_413_naming_the_line() -> None:
    big = b'{"type":"x","payload":{"m":"' + b"a" * 2000 + b'"}}'
    with pytest.raises(PayloadTooLarge) as info:
        parse(b'{"type":"x"}\n' + big + b"\n", max_event_bytes=1024)
    assert info.value.details["line"] == 2
    assert "line 2" in info.value.message


def test_nesting_bound() -> None:
    def nested(levels: int) -> bytes:  # a line of depth levels + 1
        return b'{"type":"x","payload":' + b'{"a":' * levels + b"1" + b"}" * levels + b"}"

    assert len(parse(nested(MAX_DEPTH - 1))) == 1  # exactly MAX_DEPTH deep: allowed
    with pytest.raises(InvalidEvent, match="nested deeper"):
        parse(nested(MAX_DEPTH))
    deep = b'{"type":"x","payload":{"a":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}}"
    with pytest.raises(InvalidEvent, match="nested deeper"):
        parse(deep)
    # far deeper than the interpreter's recursion limit: still a clean 422
    hostile = b'{"type":"x","payload":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    with pytest.raises(InvalidEvent) as info:
        parse(b'{"type":"x"}\n' + hostile, max_event_bytes=1 << 20)
    assert info.value.line == 2


def test_many_brackets_but_shallow_is_fine() -> None:
    wide = b'{"type":"x","payload":{"l":[' + b",".join([b"[1]"] * 500) + b"]}}"
    assert len(parse(wide)) == 1


def test_json_depth() -> None:
    assert json_depth(1) == 0
    assert json_depth({}) == 1
    assert json_depth({"a": [1, {"b": []}]}) == 4


@pytest.mark.parametrize(
    "content_type",
    ["application/x-ndjson", "application/x-ndjson; charset=utf-8", "Application/X-NDJSON"],
)
def test_content_type_ok(content_type: str) -> None:
    check_content_type(content_type)


@pytest.mark.parametrize("content_type", [None, "", "application/json", "text/plain"])
def test_content_type_415(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        check_content_type(content_type)


async def parts(*chunks: bytes) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


async def test_read_body_counts_as_it_reads() -> None:
    assert await read_body(parts(b"ab", b"cd"), None, 4) == b"abcd"
    with pytest.raises(PayloadTooLarge):
        await read_body(parts(b"ab", b"cde"), None, 4)


async def test_read_body_refuses_by_content_length_before_reading() -> None:
    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("the body must not be read")
        yield b""  # pragma: no cover

    with pytest.raises(PayloadTooLarge, match="limit is 4"):
        await read_body(never(), "5", 4)
    with pytest.raises(InvalidInput, match="Content-Length"):
        await read_body(never(), "five", 4)


# ------------------------------------------------------------------ fast path == checked path

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
_lines = st.one_of(
    st.builds(
        lambda t, p, extra: json.dumps({"type": t, "payload": p, **extra}).encode(),
        st.sampled_from(["console.line", "run.error", "", "run.completed", "x.y"]),
        st.dictionaries(st.text(max_size=5), _json_values, max_size=3),
        st.fixed_dictionaries(
            {},
            optional={
                "created_at": st.sampled_from(
                    [
                        "2026-01-02T03:04:05Z",
                        "2026-01-02T03:04:05.5+05:30",
                        "nope",
                        "2026-02-30T00:00:00Z",
                    ]
                ),
                "source": st.sampled_from(["ci", None, 5]),
                "sequence": st.integers(),
                "workspace_id": st.sampled_from(["acme", "beta"]),
                "run_id": st.just(RUN),
            },
        ),
    ),
    st.sampled_from(
        [b"", b"  ", b"not json", b"[]", b'{"type":"a"},{"type":"b"}', b'{"type":"a"', b"\xff"]
    ),
)


def _outcome(fn: Any) -> tuple[Any, ...]:
    try:
        return ("ok", [msgspec.to_builtins(d) for d in fn()])
    except (InvalidEvent, PayloadTooLarge) as exc:
        return (type(exc), exc.message)


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(_lines, min_size=1, max_size=6), trailing=st.booleans())
def test_fast_path_agrees_with_the_checked_path(lines: list[bytes], trailing: bool) -> None:
    body = b"\n".join(lines) + (b"\n" if trailing else b"")

    def reference() -> list[Any]:
        drafts = checked_batch(body, **IDS, max_event_bytes=1 << 20)
        _check_completed_last(body, drafts)
        return drafts

    assert _outcome(lambda: parse(body)) == _outcome(reference)


def test_fast_path_is_taken_for_plain_batches() -> None:
    body = (
        b'{"type":"a","payload":{"m":1}}\n{"type":"b","created_at":"2026-01-02T03:04:05+01:00"}\n'
    )
    drafts = _fast_batch(body, 1 << 20)
    assert drafts is not None and [d.type for d in drafts] == ["a", "b"]
    assert drafts[1].created_at == "2026-01-02T02:04:05.000000Z"
    # any doubt goes the checked way
    assert _fast_batch(b'{"type":"a","workspace_id":"acme"}', 1 << 20) is None
    assert _fast_batch(b'{"type":"a"}\n\n{"type":"b"}', 1 << 20) is None
    assert _fast_batch(b'{"type":"a"},{"type":"b"}', 1 << 20) is None
