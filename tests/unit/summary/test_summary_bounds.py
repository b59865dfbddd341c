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
    issue,
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


# -- defect D3: long names sharing a prefix stay distinct -------------------------------------

#: about 320 characters that the long names below share before they differ
LONG_PREFIX = "/data/very/long/path/" + "d" * 300


def live_and_rebuilt(items: list[Ev]) -> dict[str, Any]:
    """The summary of ``items`` folded live (two ``add_events`` batches), checked equal to
    a rebuild from the log (``add_line``) and to a fold of the events in reverse order's
    maps (the kept state depends on the set of names, not their order)."""
    events = events_of(items)
    live = RunSummaryBuilder()
    middle = len(events) // 2
    live.add_events(events[:middle])
    live.add_events(events[middle:])
    summary = live.build()
    lines = [json.dumps(msgspec.to_builtins(e)).encode() for e in events]
    assert summarize_lines(lines) == summary
    backwards = build(reversed(items))
    for path in ("events.by_type", "tables.by_file", "validation.issues_by_code"):
        assert field(backwards, path) == field(summary, path)
    assert json_size(summary) <= MAX_SUMMARY_BYTES
    return summary


def assert_distinct_display_names(names: list[str]) -> None:
    assert len(set(names)) == len(names)
    assert names == sorted(names)  # listed in key order
    for name in names:
        assert len(name) <= MAX_NAME_CHARS
        assert name.startswith(LONG_PREFIX[:200])  # still readable


def test_long_source_files_sharing_a_prefix_stay_distinct() -> None:
    files = [f"{LONG_PREFIX}/file{i}.xlsx" for i in range(3)]
    items = [table(f"t{i}", name, row_count=i + 1) for i, name in enumerate(files)]
    items.append(table("t3", files[0], row_count=10))  # the same long file again: one entry
    summary = live_and_rebuilt(items)
    tables = summary["tables"]
    assert tables["input_file_count"] == 3
    assert tables["table_count"] == 4
    by_file = tables["by_file"]
    assert len(by_file) == 3
    assert sorted((e["table_count"], e["row_count"]) for e in by_file) == [(1, 2), (1, 3), (2, 11)]
    assert_distinct_display_names([e["source_file"] for e in by_file])
    assert summary["truncated"] == {}


def test_long_source_files_sharing_a_prefix_stay_distinct_past_the_tracked_tables() -> None:
    # Tables past the tracked window are folded as they come: the same keys.
    files = [f"{LONG_PREFIX}/file{i}.xlsx" for i in range(3)]
    items = [table(f"pad{i}", "a.xlsx") for i in range(2048)]
    items += [table(f"t{i}", name) for i, name in enumerate(files)]
    summary = live_and_rebuilt(items)
    assert summary["tables"]["input_file_count"] == 4
    long_entries = [e for e in summary["tables"]["by_file"] if e["source_file"] != "a.xlsx"]
    assert [e["table_count"] for e in long_entries] == [1, 1, 1]
    assert_distinct_display_names([e["source_file"] for e in long_entries])


def test_long_issue_codes_sharing_a_prefix_stay_distinct_keys() -> None:
    codes = [LONG_PREFIX[:300] + f"-code{i}" for i in range(3)]
    block = {
        "issues_total": 4,
        "issues_by_severity": {"error": 4},
        "issues_by_code": {codes[0]: 2, codes[1]: 1, codes[2]: 1},
    }
    feeds: dict[str, list[Ev]] = {
        "issues": [issue("error", code) for code in [*codes, codes[0]]],
        "validation summary": [("run.validation.summary", ts(0), block)],
        "table block": [table("t", "f.xlsx", validation=block)],
    }
    for name, items in feeds.items():
        summary = live_and_rebuilt(items)
        by_code = summary["validation"]["issues_by_code"]
        assert len(by_code) == 3, name
        assert sorted(by_code.values()) == [1, 1, 2], name
        assert_distinct_display_names(list(by_code))
        assert summary["validation"]["issues_total"] == 4
        assert summary["truncated"] == {}
    # The three feeds show a name the same way.
    shown = {
        name: list(live_and_rebuilt(items)["validation"]["issues_by_code"])
        for name, items in feeds.items()
    }
    assert len({tuple(keys) for keys in shown.values()}) == 1


def test_long_event_types_sharing_a_prefix_stay_distinct_keys() -> None:
    types = [f"{LONG_PREFIX}.type{i:03d}" for i in range(300)]
    items: list[Ev] = [(type_, ts(0), {}) for type_ in types]
    items.append((types[7], ts(1), {}))
    summary = live_and_rebuilt(items)
    by_type = summary["events"]["by_type"]
    assert len(by_type) == 300
    assert sorted(by_type.values()) == [1] * 299 + [2]
    assert_distinct_display_names(list(by_type))
    assert summary["events"]["total"] == 301
    assert summary["truncated"] == {}


def test_long_console_streams_and_levels_sharing_a_prefix_stay_distinct_keys() -> None:
    names = [f"{LONG_PREFIX}-{i}" for i in range(3)]
    items = [console(stream=name, level=name) for name in [*names, names[1]]]
    summary = live_and_rebuilt(items)
    for key in ("by_stream", "by_level"):
        counts = summary["console"][key]
        assert sorted(counts.values()) == [1, 1, 2]
        assert_distinct_display_names(list(counts))


def test_long_phase_names_sharing_a_prefix_stay_distinct() -> None:
    first, second = f"{LONG_PREFIX}-extract", f"{LONG_PREFIX}-load"
    items = [
        phase(first, at=0),
        phase(second, at=10),
        phase(first, at=20, started=False, status="succeeded", duration_ms=5),
    ]
    summary = live_and_rebuilt(items)
    phases = summary["phases"]
    assert phases[0]["phase"] != phases[1]["phase"]
    # The completion closes its own phase, not the later start sharing its prefix.
    assert (phases[0]["status"], phases[0]["duration_ms"]) == ("succeeded", 5)
    assert phases[1]["status"] is None


def test_a_name_spelled_like_another_names_shown_form_stays_distinct() -> None:
    long_file = f"{LONG_PREFIX}/file.xlsx"
    shown = live_and_rebuilt([table("t0", long_file)])["tables"]["by_file"][0]["source_file"]
    assert shown != long_file
    summary = live_and_rebuilt([table("t0", long_file), table("t1", shown)])
    assert summary["tables"]["input_file_count"] == 2
    assert len({e["source_file"] for e in summary["tables"]["by_file"]}) == 2
    types = live_and_rebuilt([(long_file, ts(0), {}), (shown, ts(0), {})])["events"]["by_type"]
    assert sorted(types.values()) == [1, 1]
    # The batch fold's inline lookups of a raw name, too (add_events and add_line).
    lines = [console(stream=long_file, level=long_file), console(stream=shown, level=shown)]
    lines += [console(stream=shown, level=shown)]
    console_counts = live_and_rebuilt(lines)["console"]
    assert sorted(console_counts["by_stream"].values()) == [1, 2]
    assert sorted(console_counts["by_level"].values()) == [1, 2]
