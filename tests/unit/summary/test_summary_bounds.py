"""The bounded, incrementally folded run summary (issue 13, defects 3 and 8; contract 2.1)."""

from __future__ import annotations

import copy
import gc
import itertools
import json
import random
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runevents.events import encode_batch
from runevents.summary import RunSummaryBuilder, summarize_lines
from runevents.summary.bounds import (
    CAPPED_FIELDS,
    EXACT_DISTINCT,
    MAX_ENTRIES,
    MAX_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    MAX_SUMMARY_BYTES,
    json_size,
)
from tests.unit.summary.builders import (
    Ev,
    console,
    event,
    events_of,
    events_strategy,
    table,
    ts,
)

MAX_EVENT_BYTES = 1024 * 1024  # Settings.max_event_bytes' default


def build(items: Iterable[Ev], max_entries: int = MAX_ENTRIES) -> dict[str, Any]:
    builder = RunSummaryBuilder(max_entries=max_entries)
    for item in items:
        builder.add(*item)
    return builder.build()


def phase(name: str, at: int = 0, started: bool = True, **payload: Any) -> Ev:
    kind = "started" if started else "completed"
    return (f"run.phase.{kind}", ts(at), {"phase": name, **payload})


def field(summary: dict[str, Any], path: str) -> Any:
    head, _, tail = path.partition(".")
    return summary[head][tail] if tail else summary[head]


# -- defect 3: a summary larger than max_event_bytes ------------------------------------


def test_summary_larger_than_max_event_bytes_is_bounded() -> None:
    # Issue 13 defect 3: about 12k distinct source_files or 15k phases made a
    # summary over max_event_bytes, so completion, cancel and producer_timeout
    # failed with 413 forever. Now it is capped, and the cut is counted exactly.
    files = [f"inputs/file-{i:05d}.xlsx" for i in range(12_000)]
    items: list[Ev] = [table(f"t{i}", name, 3) for i, name in enumerate(reversed(files))]
    items += [phase(f"phase-{i:05d}", at=i) for i in range(15_000)]
    items.append(("run.completed", ts(20_000), {"status": "succeeded"}))
    summary = build(items)

    assert json_size(summary) <= MAX_SUMMARY_BYTES
    assert summary["truncated"] == {"phases": 14_000, "tables.by_file": 11_000}
    tables = summary["tables"]
    assert (tables["input_file_count"], tables["table_count"], tables["row_count"]) == (
        12_000,
        12_000,
        36_000,
    )
    # The first entries in the order the summary lists them: by_file sorted, phases in order.
    assert [f["source_file"] for f in tables["by_file"]] == files[:1000]
    assert [p["phase"] for p in summary["phases"]] == [f"phase-{i:05d}" for i in range(1000)]
    # The last kept phase runs to the next start of its scope, which was cut.
    assert summary["phases"][-1]["duration_ms"] == 1
    # The run.completed event that carries it fits in one event.
    completed = event(1, "run.completed", ts(20_000), {"status": "succeeded", "summary": summary})
    assert len(encode_batch([completed])) < MAX_EVENT_BYTES


# -- caps per list and map --------------------------------------------------------------


def _distinct(n: int) -> list[str]:
    names = [f"n{i:05d}" for i in range(n)]
    random.Random(n).shuffle(names)  # arrival order must not matter
    return names


CAP_FEEDS: dict[str, Callable[[str], list[Ev]]] = {
    "events.by_type": lambda name: [(f"custom.{name}", ts(0), {})],
    "console.by_stream": lambda name: [console(stream=name)],
    "console.by_level": lambda name: [console(level=name)],
    "phases": lambda name: [phase(name)],
    "tables.by_file": lambda name: [table(f"id-{name}", name)],
    "validation.issues_by_severity": lambda name: [
        ("run.validation.issue", ts(0), {"severity": name, "code": "c"})
    ],
    "validation.issues_by_code": lambda name: [
        ("run.validation.issue", ts(0), {"severity": "error", "code": name})
    ],
}


@pytest.mark.parametrize("path", sorted(CAP_FEEDS))
def test_each_list_and_map_keeps_its_first_1000_entries_and_counts_the_cut(path: str) -> None:
    names = _distinct(MAX_ENTRIES + 37)
    summary = build(item for name in names for item in CAP_FEEDS[path](name))
    kept = field(summary, path)
    assert len(kept) == MAX_ENTRIES
    assert summary["truncated"][path] == 37
    if path == "phases":
        assert [p["phase"] for p in kept] == names[:MAX_ENTRIES]  # start order
    elif path == "tables.by_file":
        assert [f["source_file"] for f in kept] == sorted(names)[:MAX_ENTRIES]
        assert summary["tables"]["input_file_count"] == len(names)
    else:
        prefix = "custom." if path == "events.by_type" else ""
        smallest = sorted(prefix + n for n in names)[:MAX_ENTRIES]
        assert [k for k in kept if k.startswith(prefix) and k[len(prefix) :] in names] == smallest


def test_capped_fields_cover_every_feed() -> None:
    assert set(CAP_FEEDS) == set(CAPPED_FIELDS)


@pytest.mark.parametrize("path", sorted(CAP_FEEDS))
def test_truncated_is_empty_when_nothing_was_cut(path: str) -> None:
    # Exactly at the cap nothing is cut (one key per feed is already present: "c", "error"...).
    names = _distinct(MAX_ENTRIES - 2)
    summary = build(item for name in names for item in CAP_FEEDS[path](name))
    assert summary["truncated"] == {}


def test_validation_summary_and_table_blocks_are_capped_too() -> None:
    codes = {f"code-{i:05d}": 1 for i in range(1500)}
    severities = {f"sev-{i:05d}": 1 for i in range(1200)} | {"warning": 2}
    block = {"issues_total": 2702, "issues_by_severity": severities, "issues_by_code": codes}
    for items in ([("run.validation.summary", ts(0), block)], [table("t", "f", validation=block)]):
        summary = build(items)
        validation = summary["validation"]
        assert len(validation["issues_by_code"]) == len(validation["issues_by_severity"]) == 1000
        assert summary["truncated"] == {
            "validation.issues_by_code": 500,
            "validation.issues_by_severity": 201,
        }
        # "warning" sorts after the "sev-" names and was cut, yet still ranks.
        assert "warning" not in validation["issues_by_severity"]
        assert validation["max_severity"] == "warning"
        assert validation["issues_total"] == 2702


# -- long strings --------------------------------------------------------------------------


def test_long_strings_are_capped_so_the_bound_holds_whatever_was_sent() -> None:
    huge = "\x01" * 200_000  # 6 bytes of JSON per character
    items: list[Ev] = [
        (huge, ts(0), {}),
        console(stream=huge, level=huge),
        phase(huge, status=huge),
        phase(huge, started=False, status=huge),
        table(huge, huge),
        ("run.validation.issue", ts(0), {"severity": huge, "code": huge}),
        ("run.error", ts(1), {"stage": huge, "code": huge, "message": huge}),
        ("run.completed", ts(2), {"status": "failed", "execution": {"exit_code": 1, "x": huge}}),
    ]
    summary = build(items)
    assert json_size(summary) <= MAX_SUMMARY_BYTES
    assert len(summary["failure"]["message"]) == MAX_MESSAGE_CHARS
    assert len(summary["failure"]["code"]) == MAX_NAME_CHARS
    assert len(summary["phases"][0]["phase"]) == MAX_NAME_CHARS
    assert summary["phases"][0]["status"] is not None  # the capped names still matched
    assert len(summary["tables"]["by_file"][0]["source_file"]) == MAX_NAME_CHARS
    # An oversized execution block keeps its pinned keys only.
    assert summary["execution"] == {
        "exit_code": 1,
        "started_at": None,
        "completed_at": None,
        "duration_ms": None,
    }


def test_1000_long_names_in_every_list_still_fit_256_kib() -> None:
    names = [f"{i:04d}" + "\x01" * (MAX_NAME_CHARS - 4) for i in range(MAX_ENTRIES)]
    items = [item for name in names for feed in CAP_FEEDS.values() for item in feed(name)]
    summary = build(items)
    assert json_size(summary) <= MAX_SUMMARY_BYTES
    for path in CAPPED_FIELDS:
        kept = len(field(summary, path))
        extra = {"console.by_stream": 1, "console.by_level": 1}.get(path, 0)  # "stdout", "info"...
        assert 0 < kept < MAX_ENTRIES
        assert kept + summary["truncated"][path] >= MAX_ENTRIES - extra


def test_small_failure_and_execution_are_kept_as_sent() -> None:
    failure = {"stage": "run", "code": "x", "message": "m", "details": {"row": 3}}
    summary = build([("run.completed", ts(0), {"status": "failed", "failure": failure})])
    assert summary["failure"] == failure


# -- phases across the cap -------------------------------------------------------------


def test_phase_completion_closes_a_cut_start_before_an_older_kept_one() -> None:
    items: list[Ev] = [phase("x", at=0)]
    items += [phase(f"p{i}", at=1) for i in range(2)]  # fills the cap of 3
    items += [phase("x", at=2), phase("x", at=3, started=False, status="inner")]
    items.append(phase("x", at=10, started=False, status="outer"))
    summary = build(items, max_entries=3)
    assert summary["phases"][0] == {
        "scope": "run",
        "phase": "x",
        "status": "outer",
        "duration_ms": 10,
    }
    assert summary["truncated"] == {"phases": 1}


# -- purity: batches, order of folding, rebuild ---------------------------------------------

console_runs = st.lists(
    st.builds(
        lambda m, s: console(m, stream=s),
        st.text(alphabet="ab\u20ac\n", max_size=3000),
        st.sampled_from(["stdout", "stderr"]),
    ),
    max_size=12,
)
mixed_events = st.lists(events_strategy | console_runs, max_size=4).map(
    lambda parts: [item for part in parts for item in part]
)


def capped_reference(summary: dict[str, Any], cap: int) -> dict[str, Any]:
    """An unbounded summary cut by the contract's words: first ``cap`` entries, cut counted."""
    out = copy.deepcopy(summary)
    truncated: dict[str, int] = {}
    for path in CAPPED_FIELDS:
        value = field(out, path)
        if len(value) > cap:
            truncated[path] = len(value) - cap
            kept = value[:cap] if isinstance(value, list) else dict(list(value.items())[:cap])
            head, _, tail = path.partition(".")
            if tail:
                out[head][tail] = kept
            else:
                out[head] = kept
    out["truncated"] = dict(sorted(truncated.items()))
    return out


@settings(max_examples=150, deadline=None)
@given(mixed_events, st.lists(st.integers(0, 60), max_size=6), st.integers(1, 4))
def test_property_folding_in_any_batches_equals_folding_at_once(
    items: list[Ev], cuts: list[int], cap: int
) -> None:
    events = events_of(items)
    whole = RunSummaryBuilder(max_entries=cap)
    whole.add_events(events)
    one_by_one = RunSummaryBuilder(max_entries=cap)
    for item in items:
        one_by_one.add(*item)
    batched = RunSummaryBuilder(max_entries=cap)
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    for start, end in itertools.pairwise(bounds):
        batched.add_events(events[start:end])
    expected = one_by_one.build()
    assert whole.build() == expected
    assert batched.build() == expected
    assert whole.console_snippet == batched.console_snippet == one_by_one.console_snippet
    # The cut is what the contract says: the unbounded summary's first entries.
    assert expected == capped_reference(build(items, max_entries=10**9), cap)


#: console lines the batch fold counts inline, with the fields it must read exactly as
#: ``add`` does: odd ``truncated`` / ``masked`` values, names past the 256-character cap
console_lines = st.lists(
    st.builds(
        lambda message, stream, level, extra: console(message, stream=stream, level=level, **extra),
        st.text(alphabet="ab\u20ac\n", max_size=300),
        st.sampled_from(["stdout", "stderr", "s" * 300, "s" * 301]),
        st.sampled_from(["info", "error", "l" * 257]),
        st.fixed_dictionaries(
            {},
            optional={
                "truncated": st.sampled_from([True, False, 1, 1.0, "true", None]),
                "masked": st.sampled_from([1, 3, 0, -2, True, 2.0, "4", None]),
                "extra": st.just("x"),
            },
        ),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(console_lines, events_strategy, st.integers(0, 30), st.integers(1, 4))
def test_property_console_batch_fold_equals_adding_one_by_one(
    lines: list[Ev], others: list[Ev], at: int, cap: int
) -> None:
    # The batch fold inlines the common console line (a kept name counted by one
    # lookup, the truncated / masked keys read only when the payload has more than
    # its four fields): same summary, same snippet as adding one by one.
    items = [*lines[:at], *others, *lines[at:]]
    batched = RunSummaryBuilder(max_entries=cap)
    batched.add_events(events_of(items))
    one_by_one = RunSummaryBuilder(max_entries=cap)
    for item in items:
        one_by_one.add(*item)
    assert batched.build() == one_by_one.build()
    assert batched.console_snippet == one_by_one.console_snippet


#: batches of console lines as producers send them (four string fields), many names,
#: some past the cap, and now and then a line that is not plain
plain_lines = st.lists(
    st.builds(
        lambda message, stream, level: console(message, stream=stream, level=level),
        st.text(alphabet="ab\u20ac\n", max_size=200),
        st.sampled_from(["stdout", "stderr", "s1", "s2", "s3", "s" * 300, "s" * 301]),
        st.sampled_from(["info", "error", "debug", "l" * 257, "l" * 258]),
    ),
    min_size=32,
    max_size=100,
)
odd_line = st.sampled_from(
    [
        console("x", extra="y"),
        ("console.line", ts(0), {"scope": "run", "stream": None, "level": "info", "message": "x"}),
        ("console.line", ts(0), {"scope": "run", "stream": "stdout", "level": "info", "msg": "x"}),
        ("console.line", ts(0), {"scope": 1, "stream": "stdout", "level": "info", "message": "x"}),
        ("console.line", ts(0), ["not", "a", "dict"]),
    ]
)


@settings(max_examples=150, deadline=None)
@given(plain_lines, st.lists(odd_line, max_size=1), st.integers(0, 100), st.integers(1, 4))
def test_property_plain_console_batch_equals_adding_one_by_one(
    lines: list[Ev], odd: list[Ev], at: int, cap: int
) -> None:
    items = [*lines[:at], *odd, *lines[at:]]
    batched = RunSummaryBuilder(max_entries=cap)
    half = len(items) // 2
    batched.add_events(events_of(items[:half]))
    batched.add_events(events_of(items[half:]))
    one_by_one = RunSummaryBuilder(max_entries=cap)
    for item in items:
        one_by_one.add(*item)
    assert batched.build() == one_by_one.build()
    assert batched.console_snippet == one_by_one.console_snippet


@settings(max_examples=50, deadline=None)
@given(mixed_events)
def test_property_rebuild_from_the_stored_log_equals_the_live_fold(items: list[Ev]) -> None:
    events = [e for e in events_of(items) if isinstance(e.payload, dict)]
    live = RunSummaryBuilder()
    live.add_events(events)
    lines = [json.dumps(msgspec.to_builtins(e)).encode() for e in events]
    assert summarize_lines(lines) == live.build()


# -- preview ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(mixed_events, mixed_events)
def test_preview_equals_adding_and_does_not_mutate(before: list[Ev], pending: list[Ev]) -> None:
    builder = RunSummaryBuilder(max_entries=2)
    builder.add_events(events_of(before))
    summary, snippet = builder.build(), builder.console_snippet
    pending_events = events_of(pending)

    previewed = builder.preview(pending_events)
    twin = builder.with_events(pending_events)

    assert builder.build() == summary  # unchanged: a failed commit leaves nothing behind
    assert builder.console_snippet == snippet
    reference = RunSummaryBuilder(max_entries=2)
    reference.add_events(events_of(before))
    reference.add_events(pending_events)
    assert previewed == twin.build() == reference.build()
    assert twin.console_snippet == reference.console_snippet


def test_preview_then_more_events_keeps_builder_and_copy_apart() -> None:
    builder = RunSummaryBuilder()
    builder.add_events(events_of([phase("a"), table("t", "f", 1), console("one")]))
    twin = builder.copy()
    twin.add_events(events_of([phase("a", started=False, status="ok"), table("t", "g", 5)]))
    summary = builder.build()
    assert summary["phases"][0]["status"] is None
    assert summary["tables"]["by_file"] == [
        {"source_file": "f", "table_count": 1, "row_count": 1, "issues_total": 0}
    ]
    assert twin.build()["tables"]["by_file"][0]["source_file"] == "g"


# -- memory ---------------------------------------------------------------------------------

MEMORY_FEEDS: dict[str, Callable[[int], Ev]] = {
    "source_files": lambda i: table(f"t{i}", f"file-{i:08d}.xlsx"),
    "table_ids": lambda i: table(f"table-{i:08d}", "one.xlsx"),
    "phases": lambda i: phase(f"phase-{i:08d}"),
    "codes": lambda i: ("run.validation.issue", None, {"severity": f"s{i}", "code": f"c{i}"}),
    "types": lambda i: (f"custom.{i:08d}", None, {}),
}


@pytest.mark.parametrize("kind", sorted(MEMORY_FEEDS))
def test_memory_stays_bounded_whatever_the_number_of_distinct_keys(kind: str) -> None:
    # Past the exact limits (EXACT_DISTINCT cut keys, the tracked tables) the
    # builder's memory must stop growing: 20,000 more distinct keys may not add
    # 128 KiB (a dict of them would add about 2 MB).
    feed = MEMORY_FEEDS[kind]
    builder = RunSummaryBuilder()
    warm = EXACT_DISTINCT + MAX_ENTRIES + 2000
    for i in range(warm):
        builder.add(*feed(i))
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for i in range(warm, warm + 20_000):
            builder.add(*feed(i))
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert growth < 128 * 1024, f"{kind}: grew {growth} bytes"
    summary = builder.build()
    assert json_size(summary) <= MAX_SUMMARY_BYTES
