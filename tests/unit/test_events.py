"""The envelope and the byte-exact NDJSON codec (runevents.events)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runevents.eventlog.index import line_sequence
from runevents.eventlog.types import ends_with_completed
from runevents.events import (
    RUN_COMPLETED_PREFIX,
    UNIT_END,
    Event,
    EventDraft,
    decode_event,
    encode_batch,
    encode_event,
    mark_unit_end,
    parse_draft,
)
from runevents.exceptions import InvalidEvent, InvalidInput
from runevents.timestamps import normalize_created_at, utc_timestamp

RUN = "run_01JABCDEFGHJKMNPQRSTVWXYZ0"


def make_event(**changes: Any) -> Event:
    fields: dict[str, Any] = {
        "type": "console.line",
        "event_id": "evt_1",
        "created_at": "2026-11-24T06:00:00.123456Z",
        "sequence": 17,
        "source": "worker",
        "workspace_id": "acme",
        "configuration_id": "etl",
        "run_id": RUN,
        "build_id": None,
        "payload": {"scope": "run", "stream": "stdout", "level": "info", "message": "row 12 ok"},
    }
    fields.update(changes)
    return Event(**fields)


def test_encoding_follows_the_contract_field_order_and_ends_with_one_newline() -> None:
    line = encode_event(make_event())
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert list(json.loads(line)) == [
        "type",
        "event_id",
        "created_at",
        "sequence",
        "source",
        "workspace_id",
        "configuration_id",
        "run_id",
        "build_id",
        "payload",
    ]
    assert b'"build_id":null' in line


def test_run_completed_lines_start_with_the_prefix_readers_look_for() -> None:
    assert encode_event(make_event(type="run.completed")).startswith(RUN_COMPLETED_PREFIX)


@pytest.mark.parametrize(
    "message",
    [
        "line\u2028separator\u2029paragraph",
        "carriage\rreturn alone",
        "crlf\r\nand lf\ninside",
        "emoji 😀 and 🧑‍🔬 and flags 🇫🇷",
        "nul \x00 and escape \x1b[31mred\x1b[0m",
        "",
    ],
)
def test_special_characters_survive_a_round_trip_on_one_line(message: str) -> None:
    event = make_event(payload={"message": message, message: "as a key"})
    line = encode_event(event)
    assert line.count(b"\n") == 1  # split on \n only: nothing else may end a line
    assert b"\r" not in line
    assert decode_event(line) == event


def test_lone_surrogates_from_python_strings_are_replaced_not_lost() -> None:
    event = make_event(payload={"message": "bad \udcff byte", "\ud800key": ["\udfff"]})
    decoded = decode_event(encode_event(event))
    assert decoded.payload == {"message": "bad \ufffd byte", "\ufffdkey": ["\ufffd"]}


def test_an_escaped_surrogate_pair_in_a_python_string_becomes_its_character() -> None:
    event = make_event(payload={"message": "\ud83d\ude00"})
    assert decode_event(encode_event(event)).payload == {"message": "😀"}


def test_a_payload_json_cannot_hold_is_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="cannot be encoded"):
        encode_event(make_event(payload={"value": object()}))


@pytest.mark.parametrize(
    "line",
    [b"", b"not json", b"{}", b'{"type":"x"}', b"\xff\xfe", b'{"type":1,"event_id":"e"}'],
)
def test_decoding_garbage_raises_invalid_event(line: bytes) -> None:
    with pytest.raises(InvalidEvent):
        decode_event(line)


# -- producer input -----------------------------------------------------------------


def parse(line: bytes, **ids: str) -> EventDraft:
    base = {"workspace_id": "acme", "configuration_id": "etl", "run_id": RUN}
    base.update(ids)
    return parse_draft(line, line_no=3, **base)


def test_parse_draft_keeps_type_payload_and_normalizes_created_at() -> None:
    draft = parse(
        b'{"type":"run.error","payload":{"code":"x"},"created_at":"2026-01-01T01:00:00+01:00",'
        b'"source":"etl","unknown":1}'
    )
    assert draft == EventDraft(
        type="run.error",
        payload={"code": "x"},
        created_at="2026-01-01T00:00:00.000000Z",
        source="etl",
    )


def test_parse_draft_accepts_matching_ids_and_a_missing_payload() -> None:
    line = f'{{"type":"t","workspace_id":"acme","run_id":"{RUN}"}}'.encode()
    assert parse(line).payload == {}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"nope", "not a JSON object"),
        (b'{"payload":{}}', "type"),
        (b'{"type":""}', "non-empty"),
        (b'{"type":"t","payload":[1]}', "payload"),
        (b'{"type":"t","created_at":"yesterday"}', "RFC 3339"),
        (b'{"type":"t","workspace_id":"other"}', "contradicts"),
        (b'{"type":"t","run_id":"run_x"}', "contradicts"),
        (b'{"type":"t","payload":{"m":"\\ud800"}}', "surrogate"),
        (b'{"type":"t","payload":{"m":"\xed\xa0\x80"}}', "UTF-8"),
    ],
)
def test_parse_draft_rejects_bad_lines_naming_the_line(line: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason) as info:
        parse(line)
    assert info.value.line == 3
    assert info.value.message.startswith("line 3:")


def test_parse_draft_accepts_an_escaped_surrogate_pair() -> None:
    assert parse(b'{"type":"t","payload":{"m":"\\ud83d\\ude00"}}').payload == {"m": "😀"}


# -- timestamps -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        ("2026-11-24T06:00:00.123456Z", "2026-11-24T06:00:00.123456Z"),
        ("2026-11-24T06:00:00Z", "2026-11-24T06:00:00.000000Z"),
        ("2026-11-24t06:00:00.5z", "2026-11-24T06:00:00.500000Z"),
        ("2026-11-24T06:00:00.123456789Z", "2026-11-24T06:00:00.123456Z"),
        ("2026-11-24T08:30:00+02:30", "2026-11-24T06:00:00.000000Z"),
        ("2026-11-24T01:00:00-05:00", "2026-11-24T06:00:00.000000Z"),
        ("2026-01-01T00:30:00+01:00", "2025-12-31T23:30:00.000000Z"),
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59.999999Z"),
        ("0999-01-01T00:00:00Z", "0999-01-01T00:00:00.000000Z"),
        ("0001-01-01T00:30:00-01:00", "0001-01-01T01:30:00.000000Z"),
        ("9999-12-31T23:59:59+01:00", "9999-12-31T22:59:59.000000Z"),
    ],
)
def test_normalize_created_at(given_value: str, expected: str) -> None:
    assert normalize_created_at(given_value) == expected


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        ("0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00.000000Z"),
        ("0001-01-01T00:59:59.5+23:59", "0001-01-01T00:00:00.000000Z"),
        ("9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59.999999Z"),
        ("9999-12-31T23:30:00-00:45", "9999-12-31T23:59:59.999999Z"),
        ("2024-02-29T23:00:00-02:00", "2024-03-01T01:00:00.000000Z"),
    ],
)
def test_regression_offset_across_the_first_or_last_day_is_clamped_not_refused(
    given_value: str, expected: str
) -> None:
    # schemathesis (issue 20): RFC 3339 date-times that a schema's format
    # accepts, refused with 422 (and a 500 as a runs-list filter) because the
    # UTC instant left datetime's range. A filter bound is clamped (nothing
    # stored lies beyond the edge, so the answer is the same); an event's
    # created_at is refused instead (D6, below).
    assert normalize_created_at(given_value, clamp=True) == expected


@pytest.mark.parametrize(
    "given_value",
    [
        "9999-12-31T23:59:59.999999-23:59",
        "9999-12-31T23:59:59-01:00",
        "9999-12-31T23:30:00-00:45",
        "0001-01-01T00:00:00+01:00",
        "0001-01-01T00:59:59.5+23:59",
    ],
)
def test_a_created_at_whose_utc_instant_is_past_year_9999_is_refused(given_value: str) -> None:
    # regression (D6): clamped to the edge, the stored instant was up to 24 h off
    with pytest.raises(InvalidInput, match="UTC") as info:
        normalize_created_at(given_value)
    assert given_value in info.value.message


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z"),
        ("9999-12-31T23:59:59.999999+23:59", "9999-12-31T00:00:59.999999Z"),
        ("9999-12-31T22:59:59-01:00", "9999-12-31T23:59:59.000000Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
        ("0001-01-01T23:59:00+23:59", "0001-01-01T00:00:00.000000Z"),
    ],
)
def test_a_created_at_at_the_edge_of_time_is_exact(given_value: str, expected: str) -> None:
    assert normalize_created_at(given_value) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "2026-11-24",
        "2026-11-24T06:00:00",  # no offset
        "2026-02-30T00:00:00Z",  # no such day
        "2026-11-24T25:00:00Z",
        "2026-11-24T06:00:00+24:00",
        "2026-11-24 06:00:00Z",
        "0000-01-01T00:00:00Z",
        " 2026-11-24T06:00:00Z",
        "tomorrow",
        "\u0662\u0660\u0662\u0666-01-01T00:00:00Z",  # Arabic-Indic digits: \d, not [0-9]
    ],
)
def test_normalize_created_at_rejects_what_is_not_rfc3339(bad: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_created_at(bad)


def test_utc_timestamp_is_canonical_and_moves_forward() -> None:
    first = utc_timestamp()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first)
    assert normalize_created_at(first) == first
    assert utc_timestamp() >= first


# -- property: any JSON payload is one line and round-trips --------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(payload=st.dictionaries(st.text(max_size=10), json_values, max_size=5), kind=st.text())
def test_any_payload_encodes_to_exactly_one_line_and_round_trips(
    payload: dict[str, Any], kind: str
) -> None:
    event = make_event(type=kind, payload=payload)
    line = encode_event(event)
    assert line.index(b"\n") == len(line) - 1
    decoded = decode_event(line)
    # lone surrogates (if hypothesis drew any) were replaced; nothing else changed
    assert encode_event(decoded) == line


def test_mark_unit_end_marks_only_the_last_line_of_a_unit() -> None:
    events = [make_event(sequence=1), make_event(sequence=2, type="run.completed")]
    plain = encode_batch(events)
    marked = mark_unit_end(plain)
    assert marked == plain[:-1] + b" \n" and UNIT_END == b" \n"
    first, second = marked.split(b"\n")[:-1]
    assert not first.endswith(b" ") and second.endswith(b" ")
    with pytest.raises(ValueError, match="newline"):
        mark_unit_end(plain[:-1])


def test_every_line_reader_takes_a_marked_line_as_it_is() -> None:
    """The unit marker is JSON whitespace: the codec, the sequence scan, the run.completed
    test and a plain JSON parser read a marked line exactly like an unmarked one."""
    event = make_event(type="run.completed", sequence=42)
    line = mark_unit_end(encode_event(event))
    assert decode_event(line) == event
    assert decode_event(line[:-1]) == event
    assert line_sequence(line) == 42
    assert line.startswith(RUN_COMPLETED_PREFIX)
    assert ends_with_completed(b"".join([encode_event(make_event()), line]))
    assert json.loads(line)["sequence"] == 42
