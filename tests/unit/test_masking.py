"""The masker (contract section 11): forms, strings, drafts, ``::add-mask::``, counts."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runevents.api.ingest import parse_batch
from runevents.events import FAILURE_KEYS, EventDraft
from runevents.masking import (
    MASK,
    MIN_ADD_MASK_CHARS,
    Masker,
    add_mask_value,
    nothing_to_mask,
)
from runevents.masking_forms import encoded_forms

SECRET = "s3cr3t-Passw0rd/+="


def line(message: str, **extra: object) -> EventDraft:
    payload: dict[str, object] = {
        "scope": "run",
        "stream": "stdout",
        "level": "info",
        "message": message,
    }
    payload.update(extra)
    return EventDraft(type="console.line", payload=payload)


def test_forms_cover_the_value_base64_and_percent_encoding() -> None:
    forms = encoded_forms(SECRET)
    assert SECRET in forms
    assert base64.b64encode(SECRET.encode()).decode() in forms
    # every byte but A-Za-z0-9-._~ encoded, upper and lower case hex
    percent = quote(SECRET, safe="")
    assert percent == "s3cr3t-Passw0rd%2F%2B%3D"
    assert (
        percent in forms
        and percent.replace("%2F", "%2f").replace("%2B", "%2b").replace("%3D", "%3d") in forms
    )


@pytest.mark.parametrize("prefix", [b"", b"u", b"us", b"user:", b"ab:cd"])
@pytest.mark.parametrize("suffix", [b"", b"@", b"@h", b"@host"])
def test_base64_inside_a_larger_blob_is_masked_at_every_alignment(
    prefix: bytes, suffix: bytes
) -> None:
    # Authorization: Basic base64("user:" + password + ...): the secret sits at any offset
    blob = base64.b64encode(prefix + SECRET.encode() + suffix).decode()
    masked, count = Masker([SECRET]).mask_text(f"Authorization: Basic {blob}")
    assert count == 1 and MASK in masked
    # what is left of the blob cannot give the secret back
    left = masked.split("Basic ", 1)[1].replace(MASK, "")
    assert len(left) <= len(base64.b64encode(prefix + suffix)) + 4


def test_mask_text_replaces_every_occurrence_and_counts() -> None:
    masker = Masker([SECRET, "another-secret-value"])
    text = f"a {SECRET} b {SECRET}{SECRET} c another-secret-value"
    masked, count = masker.mask_text(text)
    assert masked == "a *** b ****** c ***"
    assert count == 4


def test_an_empty_masker_changes_nothing() -> None:
    masker = Masker()
    assert not masker
    assert masker.mask_text(SECRET) == (SECRET, 0)


def test_a_multi_line_secret_is_masked_line_by_line() -> None:
    key = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf\n-----END KEY-----"
    masker = Masker([key])
    masked, count = masker.mask_text("MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf")
    assert masked == MASK and count == 1


def test_mask_value_walks_keys_values_and_lists() -> None:
    masker = Masker([SECRET])
    value = {"a": [1, f"x{SECRET}", {SECRET: True}], "b": None, "c": 2.5}
    masked, count = masker.mask_value(value)
    assert masked == {"a": [1, "x***", {MASK: True}], "b": None, "c": 2.5}
    assert count == 2
    assert value["a"][1] == f"x{SECRET}"  # the input is not changed in place


def test_add_mask_value_parsing() -> None:
    assert add_mask_value("::add-mask::hunter2-long") == "hunter2-long"
    assert add_mask_value("  ::add-mask::  spaced value \r") == "spaced value"
    assert add_mask_value("::add-mask::") is None
    assert add_mask_value("echo ::add-mask::x") is None  # only at the start of a line
    assert add_mask_value("plain line") is None


def test_add_mask_masks_its_own_line_and_every_later_event() -> None:
    masker = Masker()
    # an earlier batch is written already: the value was not known yet
    (earlier,) = masker.mask_drafts([line("before tok-abc-123")])
    drafts = [
        line("::add-mask::tok-abc-123"),
        line("after tok-abc-123"),
        EventDraft(
            type="run.error", payload={"stage": "run", "code": "x", "message": "tok-abc-123"}
        ),
    ]
    out = masker.mask_drafts(drafts)
    assert earlier.payload["message"] == "before tok-abc-123"
    assert [d.payload["message"] for d in out] == ["::add-mask::***", "after ***", "***"]
    assert [d.payload.get("masked") for d in out] == [1, 1, 1]
    later = masker.mask_drafts([line(base64.b64encode(b"tok-abc-123").decode())])
    assert later[0].payload["message"] == MASK


def test_plain_lines_without_secrets_are_left_alone() -> None:
    masker = Masker([SECRET])
    drafts = [line(f"row {i} ok") for i in range(100)]
    payloads = [dict(d.payload) for d in drafts]
    assert [d.payload for d in masker.mask_drafts(drafts)] == payloads


def test_only_the_lines_holding_a_secret_are_rewritten() -> None:
    masker = Masker([SECRET])
    drafts = [line(f"row {i}") for i in range(50)]
    drafts[17] = line(f"password={SECRET}")
    drafts[40] = line(f"again {SECRET}", phase="load")
    out = masker.mask_drafts(drafts)
    assert out[17].payload == {
        "scope": "run",
        "stream": "stdout",
        "level": "info",
        "message": "password=***",
        "masked": 1,
    }
    assert out[40].payload["message"] == "again ***" and out[40].payload["phase"] == "load"
    assert all("masked" not in d.payload for i, d in enumerate(out) if i not in {17, 40})


def test_a_secret_in_any_field_of_a_console_line_is_masked() -> None:
    # a producer shapes its own console lines: every key and value is looked at
    masker = Masker([SECRET])
    out = masker.mask_drafts(
        [
            line("ok", phase=f"phase-{SECRET}"),
            line("ok", logger=SECRET),
            EventDraft(
                type="console.line", payload={"message": "ok", SECRET: 1}, source=f"p-{SECRET}"
            ),
        ]
    )
    assert out[0].payload["phase"] == "phase-***"
    assert out[1].payload["logger"] == MASK
    assert out[2].payload == {"message": "ok", MASK: 1, "masked": 2}
    assert out[2].source == "p-***"


def test_a_producers_own_masked_count_is_dropped() -> None:
    # the summary sums payload.masked: a producer must not be able to claim replacements
    masker = Masker()
    out = masker.mask_drafts(
        [
            line("hello", masked=99),
            EventDraft(type="run.error", payload={"message": "x", "masked": 5}),
        ]
    )
    assert "masked" not in out[0].payload and "masked" not in out[1].payload


def test_structured_events_are_masked_recursively() -> None:
    masker = Masker([SECRET])
    draft = EventDraft(
        type="run.table.summary",
        payload={
            "table_id": "t1",
            "source_file": f"/data/{SECRET}.xlsx",
            "validation": {"issues_by_code": {SECRET: 2}},
        },
    )
    (out,) = masker.mask_drafts([draft])
    assert out.payload == {
        "table_id": "t1",
        "source_file": "/data/***.xlsx",
        "validation": {"issues_by_code": {MASK: 2}},
        "masked": 2,
    }


def test_many_secrets_are_all_found_past_one_automaton_group() -> None:
    # more than Masker.GROUP forms: the bytes check runs several automatons
    values = [f"secret-number-{i:03d}-xyz" for i in range(40)]
    masker = Masker(values)
    assert len(encoded_forms(values[0])) * len(values) > Masker.GROUP
    for value in values:
        data = f"a line with {value} inside".encode()
        assert not masker.clean_bytes(data)
        assert masker.byte_matches(data)
        assert masker.mask_text(data.decode()) == ("a line with *** inside", 1)
    assert masker.clean_bytes(b"a line with nothing")


def test_a_secret_with_json_special_characters_is_found_in_encoded_events() -> None:
    # drafts are checked as encoded JSON, where " and \\ and control characters are escaped
    tricky = 'pa"ss\\word\t-1234'
    masker = Masker([tricky])
    out = masker.mask_drafts(
        [
            EventDraft(type="run.error", payload={"message": f"bad {tricky}!", "n": 1}),
            line(f"plain {tricky}"),
            line("nothing here"),
        ]
    )
    assert out[0].payload == {"message": "bad ***!", "n": 1, "masked": 1}
    assert out[1].payload["message"] == "plain ***" and out[1].payload["masked"] == 1
    assert "masked" not in out[2].payload


def test_a_payload_json_cannot_encode_is_still_masked() -> None:
    # orjson refuses ints past 64 bits: the masker walks the strings instead
    masker = Masker([SECRET])
    (out,) = masker.mask_drafts(
        [EventDraft(type="x.y", payload={"big": 2**70, "note": f"{SECRET}", "masked": 3})]
    )
    assert out.payload == {"big": 2**70, "note": MASK, "masked": 1}


# ------------------------------------------------------------------ the body as the encoding

#: a secret a producer may send \u-escaped (json.dumps' ensure_ascii)
UMLAUTS = "p\u00e4ssw\u00f6rd-\u00e9"

_texts = st.lists(
    st.sampled_from(["a", "/", '"', "\\", "\x1b", "\n", "\u00e9", "\u2028", ":"])
    | st.sampled_from([SECRET, "::add-mask::tok-abc-123", "tok-abc-123", "masked", UMLAUTS]),
    max_size=6,
).map("".join)
_payloads = st.dictionaries(
    st.sampled_from(["message", "masked", "k/\u00e9", SECRET]),
    _texts | st.integers(-3, 3) | st.lists(_texts, max_size=2),
    max_size=4,
)


def _encode_line(payload: dict[str, object], style: str) -> bytes:
    line = {"type": "console.line", "payload": payload}
    if style == "orjson":
        return orjson.dumps(line)
    text = json.dumps(line, ensure_ascii=style == "ascii")
    return (text.replace("/", "\\/") if style == "slash" else text).encode()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_payloads, st.sampled_from(["orjson", "ascii", "plain", "slash"]))),
    st.sampled_from([[], [SECRET], [UMLAUTS]]),
)
def test_masking_by_the_body_equals_masking_by_encoding_the_drafts(
    lines: list[tuple[dict[str, object], str]], declared: list[str]
) -> None:
    # The ingest path hands the masker the producer's body: with nothing to mask yet,
    # a body that cannot hold ::add-mask:: or a masked key is skipped; the drafts,
    # counts and masks must be the very same as masking by the drafts.
    body = b"".join(_encode_line(payload, style) + b"\n" for payload, style in lines)
    if not lines:
        return
    ids = {"workspace_id": "acme", "configuration_id": "etl", "run_id": "run_x"}
    by_body = parse_batch(body, **ids, max_event_bytes=1 << 20)
    by_drafts = parse_batch(body, **ids, max_event_bytes=1 << 20)
    masker_body, masker_drafts = Masker(declared), Masker(declared)
    out_body = masker_body.mask_drafts(by_body, body)
    out_drafts = masker_drafts.mask_drafts(by_drafts)
    assert [msgspec.to_builtins(d) for d in out_body] == [
        msgspec.to_builtins(d) for d in out_drafts
    ]
    assert masker_body.values == masker_drafts.values


@pytest.mark.parametrize(
    ("body", "declared"),
    [
        # a producer's own escapes the drafts' encoding would not have: never a leak
        (b'{"type":"console.line","payload":{"m":"x p\\u00e4ssw\\u00f6rd-\\u00e9"}}\n', [UMLAUTS]),
        (b'{"type":"console.line","payload":{"m":"s3cr3t-Passw0rd\\/+="}}\n', [SECRET]),
        (b'{"type":"console.line","payload":{"message":"\\u003a:add-mask::tok-abc-123"}}\n'
         b'{"type":"console.line","payload":{"message":"tok-abc-123"}}\n', []),
        (b'{"type":"console.line","payload":{"message":"hi","\\u006dasked":7}}\n', []),
    ],
)  # fmt: skip
def test_masking_by_the_body_with_other_escapes(body: bytes, declared: list[str]) -> None:
    ids = {"workspace_id": "acme", "configuration_id": "etl", "run_id": "run_x"}
    drafts = parse_batch(body, **ids, max_event_bytes=1 << 20)
    masker = Masker(declared)
    out = masker.mask_drafts(drafts, body)
    reference = Masker(declared).mask_drafts(parse_batch(body, **ids, max_event_bytes=1 << 20))
    assert [d.payload for d in out] == [d.payload for d in reference]
    assert "tok-abc-123" not in str([d.payload for d in out])
    assert all(MASK in str(d.payload) for d in out if declared)
    assert all("masked" not in d.payload or MASK in str(d.payload) for d in out)


def test_nothing_to_mask() -> None:
    assert nothing_to_mask(orjson.dumps({"m": "\x1b[33m \u00e9 / mask added: ask"}))
    assert not nothing_to_mask(b'{"m":"::add-mask::x"}')
    assert not nothing_to_mask(b'{"masked":1}')
    # an escape of any of their characters counts as holding them
    assert not nothing_to_mask(b'{"m":"\\u003a:add-mask::x"}')
    assert not nothing_to_mask(b'{"\\u006Dasked":1}')
    assert not nothing_to_mask(b'{"m":"\\u002d"}')


def test_a_producers_build_id_is_masked() -> None:
    # Defect: masking covered type, source and payload; build_id kept the secret
    secret = "hunter2hunter2"
    encoded = base64.b64encode(secret.encode()).decode()
    for raw in (None, orjson.dumps({"type": "x", "build_id": "b-hunter2hunter2"})):
        (draft,) = Masker([secret]).mask_drafts(
            [EventDraft(type="x", payload={}, build_id=f"b-{secret}")], raw
        )
        assert draft.build_id == "b-***"
        assert draft.payload == {"masked": 1}
    # the walking path (a batch with ::add-mask::) and an encoded form too
    masker = Masker([secret])
    out = masker.mask_drafts(
        [line("::add-mask::other-value-1"), EventDraft(type="x", build_id=f"{encoded}/1")]
    )
    assert out[1].build_id == "***/1" and out[1].payload == {"masked": 1}


OVERLAP_A, OVERLAP_B = "abcdefgh12", "gh12ijklmnop"


def test_overlapping_secrets_leave_no_part_visible() -> None:
    # Defect: leftmost-longest matching skipped the second, overlapping secret:
    # "token=abcdefgh12ijklmnop" became "token=***ijklmnop"
    text = "token=abcdefgh12ijklmnop end"
    masker = Masker([OVERLAP_A, OVERLAP_B])
    assert masker.mask_text(text) == ("token=*** end", 1)
    assert masker.mask_value({text: [text]}) == ({"token=*** end": ["token=*** end"]}, 2)
    # the second secret first in the list, and found first in the text
    assert Masker([OVERLAP_B, OVERLAP_A]).mask_text("gh12ijklmnop-abcdefgh12ijklmnop") == (
        "***-***",
        2,
    )
    # the encoded-batch path (replacement in the drafts' JSON) ...
    (draft,) = Masker([OVERLAP_A, OVERLAP_B]).mask_drafts([line(text)])
    assert draft.payload["message"] == "token=*** end" and draft.payload["masked"] == 1
    # ... and the string-walking path (a batch with ::add-mask::)
    out = Masker([OVERLAP_A, OVERLAP_B]).mask_drafts([line("::add-mask::zzzzzzzz"), line(text)])
    assert out[1].payload["message"] == "token=*** end"


def test_an_add_mask_value_cannot_corrupt_run_completed() -> None:
    # Defect: ::add-mask::failed / completed / status rewrote run.completed's type,
    # its status key or value, so the run could never end (or ended wrong)
    for value, status in (("failed", "failed"), ("completed", "succeeded"), ("status", "failed")):
        masker = Masker()
        masker.mask_drafts([line(f"::add-mask::{value}")])
        completed = EventDraft(
            type="run.completed",
            payload={
                "status": status,
                "failure": {"stage": "run", "code": "x", "message": f"{value} here"},
            },
        )
        (out,) = masker.mask_drafts([completed])
        assert out.type == "run.completed", value
        assert next(iter(out.payload)) == "status" and out.payload["status"] == status, value
        # everything else stays masked
        assert out.payload["failure"]["message"] == "*** here", value
        assert out.payload["masked"] == 1, value
    # a type that is not one of the contract's stays masked; so does a non-final status
    masker = Masker(["my.custom.event"])
    (custom,) = masker.mask_drafts([EventDraft(type="my.custom.event", payload={})])
    assert custom.type == "***"
    (console,) = Masker(["console.line"]).mask_drafts([line("a console.line")])
    assert console.type == "console.line" and console.payload["message"] == "a ***"


def test_an_add_mask_value_earlier_in_the_same_batch_is_masked() -> None:
    # Defect: a batch's line before its ::add-mask:: was stored in clear (the
    # batch is not written yet, so nothing forces that)
    masker = Masker()
    out = masker.mask_drafts(
        [
            line("value sameBatch12345 first"),
            EventDraft(type="run.error", payload={"message": "sameBatch12345"}),
            line("::add-mask::sameBatch12345"),
            line("then sameBatch12345"),
        ]
    )
    assert [d.payload["message"] for d in out] == [
        "value *** first",
        "***",
        "::add-mask::***",
        "then ***",
    ]
    assert masker.values == ("sameBatch12345",)


def _structure_drafts() -> list[EventDraft]:
    """A console line of each stream, a table summary with a validation, a failed run."""
    return [
        line("plain text"),
        EventDraft(
            type="console.line",
            payload={"scope": "build", "stream": "stderr", "level": "warning", "message": "w"},
        ),
        EventDraft(
            type="run.table.summary",
            payload={
                "table_id": "t1",
                "source_file": "a.csv",
                "table_index": 0,
                "row_count": 3,
                "column_count": 2,
                "validation": {"issues_total": 1, "issues_by_code": {"row_count_low": 1}},
                "my_row_count": "row_count of mine",
            },
        ),
        EventDraft(
            type="run.completed",
            payload={"status": "failed", "failure": {"stage": "run", "code": "c", "message": "m"}},
        ),
    ]


# the same batch (the strings are walked) or a later one (the batch's JSON is searched)
@pytest.mark.parametrize("same_batch", [True, False])
@pytest.mark.parametrize(
    "value", ["scope", "stream", "stdout", "stderr", "warning", "level", "message", "build"]
)
def test_an_add_mask_value_corrupted_console_line_keys(same_batch: bool, value: str) -> None:
    # Defect: ::add-mask::VALUE rewrote the contract's structure: ::add-mask::stdout
    # made stream "***", ::add-mask::level renamed the key ("***"), and the summary's
    # by_stream / by_level became {}
    masker = Masker()
    command = line(f"::add-mask::{value}")
    if same_batch:
        out = masker.mask_drafts([command, *_structure_drafts()])[1:]
    else:
        masker.mask_drafts([command])
        out = masker.mask_drafts(_structure_drafts())
    plain, err = out[0].payload, out[1].payload
    assert {k: plain[k] for k in ("scope", "stream", "level", "message")} == {
        "scope": "run",
        "stream": "stdout",
        "level": "info",
        "message": "plain text",
    }, value
    assert {k: err[k] for k in ("scope", "stream", "level")} == {
        "scope": "build",
        "stream": "stderr",
        "level": "warning",
    }, value


@pytest.mark.parametrize("same_batch", [True, False])
def test_an_add_mask_value_renamed_a_table_summary_field(same_batch: bool) -> None:
    # Defect: ::add-mask::row_count renamed run.table.summary's row_count ("***"), so
    # the summary skipped the table
    masker = Masker()
    command = line("::add-mask::row_count")
    if same_batch:
        out = masker.mask_drafts([command, *_structure_drafts()])[1:]
    else:
        masker.mask_drafts([command])
        out = masker.mask_drafts(_structure_drafts())
    table = out[2].payload
    assert list(table) == [
        "table_id",
        "source_file",
        "table_index",
        "row_count",
        "column_count",
        "validation",
        "my_***",
        "masked",
    ]
    assert table["row_count"] == 3
    # the keys the contract does not pin, and every value, are still masked
    assert table["validation"]["issues_by_code"] == {"***_low": 1}
    assert table["my_***"] == "*** of mine"
    assert table["masked"] == 3
    completed = out[3].payload
    assert completed["status"] == "failed" and completed["failure"]["code"] == "c"


def test_an_add_mask_value_kept_the_run_completed_failure_keys() -> None:
    # the executor's failure is masked with its keys kept (code, message, stage)
    masker = Masker(["message", "code-value-1"])
    failure = {"stage": "run", "code": "code-value-1", "message": "the message"}
    masked, count = masker.mask_pinned(failure, FAILURE_KEYS)
    assert masked == {"stage": "run", "code": "***", "message": "the ***"} and count == 2


def test_a_short_add_mask_value_masked_every_letter() -> None:
    # Defect: ::add-mask::e masked every "e" of the rest of the log; a value shorter
    # than MIN_ADD_MASK_CHARS is not applied, but its own line still hides it
    masker = Masker()
    out = masker.mask_drafts(
        [line("::add-mask::e"), line("hello there everyone"), line("  ::add-mask::abc ")]
    )
    assert [d.payload["message"] for d in out] == [
        "::add-mask::***",
        "hello there everyone",
        "  ::add-mask::***",
    ]
    assert out[0].payload["masked"] == 1 and "masked" not in out[1].payload
    assert masker.values == ()
    (later,) = masker.mask_drafts([line("e abc")])
    assert later.payload["message"] == "e abc"
    # from MIN_ADD_MASK_CHARS on, a value is masked everywhere
    masker.mask_drafts([line("::add-mask::" + "p" * MIN_ADD_MASK_CHARS)])
    (pin,) = masker.mask_drafts([line("pin " + "p" * MIN_ADD_MASK_CHARS)])
    assert pin.payload["message"] == "pin ***"
