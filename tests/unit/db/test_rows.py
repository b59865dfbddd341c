"""Pure converters of db.rows: Run <-> row, the list cursor, storable text."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runevents.db.rows import (
    cap_snippet,
    decode_cursor,
    encode_cursor,
    field_to_column_value,
    from_row,
    scrub,
    to_row,
)
from runevents.db.tables import SNIPPET_MAX_BYTES, runs
from runevents.exceptions import InvalidInput
from runevents.ids import new_run_id
from runevents.models import LogState, Run, RunStatus


def _full_run() -> Run:
    now = datetime(2026, 11, 24, 6, 0, 0, 123456, tzinfo=UTC)
    return Run(
        id=new_run_id(),
        workspace_id="acme",
        configuration_id="etl",
        status=RunStatus.FAILED,
        external=True,
        mode="execute",
        options={"a": [1, 2]},
        exit_code=3,
        created_at=now,
        started_at=now + timedelta(seconds=1),
        completed_at=now + timedelta(seconds=2),
        updated_at=now + timedelta(seconds=2),
        events_path="workspaces/acme/runs/x/logs/events.ndjson",
        output_paths=["out.xlsx"],
        summary={"schema": "runevents.run_summary/v1"},
        failure={"stage": "run", "code": "x", "message": "y"},
        input_file_count=1,
        table_count=2,
        row_count=3,
        max_validation_severity="error",
        last_console_snippet="tail",
        logging_degraded=True,
        event_count=10,
        events_bytes=1000,
        log_state=LogState.PLAIN,
        cancel_requested=True,
        lease_owner="w1",
        lease_expires_at=now + timedelta(seconds=30),
    )


def test_to_row_has_exactly_the_columns_of_the_runs_table() -> None:
    # the writer lease columns are ownership's (not part of a Run): never written by to_row
    writer_lease = {"writer_owner", "writer_epoch", "writer_expires_at"}
    assert set(to_row(_full_run())) == {c.name for c in runs.c} - writer_lease


def test_from_row_inverts_to_row() -> None:
    run = _full_run()
    assert from_row(to_row(run)) == run


def test_to_row_rejects_a_naive_timestamp() -> None:
    run = _full_run().evolve(created_at=datetime(2026, 1, 1))
    with pytest.raises(InvalidInput, match="created_at must be a timezone-aware"):
        to_row(run)


def test_field_to_column_value_converts_other_offsets_to_utc() -> None:
    plus_two = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    value = field_to_column_value("started_at", plus_two)
    assert value.tzinfo is UTC
    assert value.hour == 10


@pytest.mark.parametrize(("field", "value"), [("status", "paused"), ("log_state", "gone")])
def test_field_to_column_value_rejects_unknown_enum_values(field: str, value: str) -> None:
    with pytest.raises(InvalidInput, match=value):
        field_to_column_value(field, value)


def test_cap_snippet_keeps_short_text() -> None:
    assert cap_snippet("hello\n") == "hello\n"
    assert cap_snippet(None) is None


def test_cap_snippet_keeps_the_last_4_kib() -> None:
    text = "".join(f"line {i}\n" for i in range(5000))
    capped = cap_snippet(text)
    assert capped is not None
    assert len(capped.encode()) == SNIPPET_MAX_BYTES
    assert text.endswith(capped)


def test_cap_snippet_never_splits_a_multibyte_character() -> None:
    text = "é" * 3000  # 6000 bytes, 2 per character
    capped = cap_snippet("x" + text)
    assert capped is not None
    assert set(capped) == {"é"}
    assert len(capped.encode()) == SNIPPET_MAX_BYTES


@given(st.text(max_size=6000))
def test_cap_snippet_is_a_bounded_valid_tail(text: str) -> None:
    capped = cap_snippet(text)
    assert capped is not None
    data = capped.encode("utf-8")  # strict: always encodable
    assert len(data) <= SNIPPET_MAX_BYTES
    assert "\x00" not in capped


def test_scrub_replaces_nul_and_lone_surrogates_everywhere() -> None:
    value = {"k\x00": ["a\x00b", {"c": "\udcff"}], "n": 1, "none": None}
    assert scrub(value) == {"k\ufffd": ["a\ufffdb", {"c": "?"}], "n": 1, "none": None}


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(9999, 1, 1),
        timezones=st.just(UTC),
    )
)
def test_cursor_round_trips(created_at: datetime) -> None:
    run_id = new_run_id()
    cursor = encode_cursor(created_at, run_id)
    assert cursor.isascii()
    assert all(c.isalnum() or c in "-_" for c in cursor)
    assert decode_cursor(cursor) == (created_at, run_id)


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "garbage",
        "!!!!",
        "a" * 1000,
        base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|run_x").decode(),
    ],
)
def test_decode_cursor_rejects_garbage(cursor: str) -> None:
    with pytest.raises(InvalidInput, match="invalid cursor"):
        decode_cursor(cursor)


def test_decode_cursor_rejects_a_tampered_cursor() -> None:
    cursor = encode_cursor(datetime(2026, 1, 1, tzinfo=UTC), new_run_id())
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[3] ^= 0x01  # change one bit of the timestamp
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(InvalidInput):
        decode_cursor(tampered)
    with pytest.raises(InvalidInput):
        decode_cursor(cursor[:-2])
