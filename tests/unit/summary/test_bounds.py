"""The summary's bounded building blocks: capped strings, distinct counts, capped maps, the guard."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runevents.summary.bounds import (
    CAPPED_FIELDS,
    ELLIPSIS,
    MAX_NAME_CHARS,
    NAME_HEAD_CHARS,
    CappedMap,
    Counts,
    DistinctCounter,
    cap_str,
    fit_summary,
    json_size,
    name_key,
    stable_hash,
)

# -- cap_str ---------------------------------------------------------------------------


def test_cap_str_keeps_short_strings_and_cuts_long_ones_to_the_limit() -> None:
    assert cap_str("a" * MAX_NAME_CHARS) == "a" * MAX_NAME_CHARS
    long = cap_str("b" * (MAX_NAME_CHARS + 1))
    assert len(long) == MAX_NAME_CHARS
    assert long.endswith(ELLIPSIS)
    assert cap_str("x" * 10_000, 10) == "x" * 9 + ELLIPSIS


# -- name_key (defect D3: names sharing a long prefix stay distinct keys) ---------------


def test_name_key_keeps_names_up_to_the_limit_as_they_are() -> None:
    for name in ("", "stdout", "a" * (MAX_NAME_CHARS - 1), "a" * MAX_NAME_CHARS):
        assert name_key(name) == name


def test_name_key_of_long_names_sharing_a_prefix_are_distinct_bounded_and_stable() -> None:
    prefix = "/data/very/long/path/" + "d" * 300
    names = [f"{prefix}/file{i}.xlsx" for i in range(1000)]
    keys = [name_key(name) for name in names]
    assert len(set(keys)) == len(names)
    for name, key in zip(names, keys, strict=True):
        assert len(key) == MAX_NAME_CHARS
        assert key == f"{name[:NAME_HEAD_CHARS]}{ELLIPSIS}{stable_hash(name):016x}"
        assert name_key(name) == key  # deterministic
    huge = "x" * 1_000_000
    assert len(name_key(huge)) == MAX_NAME_CHARS
    assert name_key(huge) != name_key(huge + "y")


def test_name_key_of_a_name_spelled_like_a_key_is_another_key() -> None:
    long = "n" * 1000
    key = name_key(long)
    assert name_key(key) != key  # not idempotent: sent as a name, a key is a new name
    assert len(name_key(key)) == MAX_NAME_CHARS
    almost = "a" * NAME_HEAD_CHARS + ELLIPSIS + "0" * 16  # MAX_NAME_CHARS, key-shaped
    assert len(almost) == MAX_NAME_CHARS and name_key(almost) != almost
    assert (
        name_key("b" * NAME_HEAD_CHARS + "-" + "0" * 16) == "b" * NAME_HEAD_CHARS + "-" + "0" * 16
    )


def test_name_key_accepts_a_lone_surrogate() -> None:
    name = "\ud800" * (MAX_NAME_CHARS + 5)
    assert name_key(name).endswith(f"{ELLIPSIS}{stable_hash(name):016x}")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab", min_size=MAX_NAME_CHARS - 2, max_size=MAX_NAME_CHARS + 40)))
def test_counts_add_name_counts_each_distinct_name_once_in_any_order(names: list[str]) -> None:
    forward, backward = Counts(cap=3), Counts(cap=3)
    for name in names:
        forward.add_name(name)
    for name in reversed(names):
        backward.add_name(name)
    assert forward.as_dict() == backward.as_dict()
    assert forward.distinct() == backward.distinct() == len(set(names))
    assert sum(forward.as_dict().values()) <= len(names)


def test_capped_map_holds_shown_forms_apart_so_a_raw_lookup_in_kept_is_exact() -> None:
    long = "n" * 1000
    key = name_key(long)
    counts = Counts(cap=3)
    counts.add_name(long)
    counts.add_name("short")
    assert key not in counts.kept and "short" in counts.kept
    assert counts.as_dict() == {key: 1, "short": 1}
    counts.add_name(key)  # the shown form sent as a name: another entry
    assert counts.as_dict() == {key: 1, name_key(key): 1, "short": 1}
    counts.add_name("a")  # evicts "short", the largest key
    counts.add_name("0")  # evicts the larger shown form
    twin = counts.copy()
    assert counts.as_dict() == {"0": 1, "a": 1, min(key, name_key(key)): 1}
    assert twin.as_dict() == counts.as_dict()
    assert counts.cut() == 2 and counts.distinct() == 5
    kept_key = min(key, name_key(key))
    counts.add_name(long if kept_key == key else key)  # the kept one's name: counted again
    assert counts.as_dict()[kept_key] == 2


# -- DistinctCounter -------------------------------------------------------------------


def test_distinct_counter_is_exact_up_to_its_limit_and_ignores_repeats() -> None:
    counter = DistinctCounter(exact_limit=1000)
    for i in range(1000):
        counter.add(f"k{i}")
        counter.add(f"k{i}")
    assert counter.exact
    assert counter.count() == 1000


@pytest.mark.parametrize("n", [1_500, 20_000, 200_000])
def test_distinct_counter_estimates_past_its_limit_within_two_percent(n: int) -> None:
    counter = DistinctCounter(exact_limit=1000)
    for i in range(n):
        counter.add(f"key-{i}")
    assert not counter.exact
    assert abs(counter.count() - n) <= 0.02 * n
    assert counter.count() >= 1001  # never below what was counted exactly


def test_distinct_counter_depends_on_the_set_of_keys_not_their_order() -> None:
    keys = [f"k{i}" for i in range(5000)]
    first, second = DistinctCounter(exact_limit=100), DistinctCounter(exact_limit=100)
    for key in keys:
        first.add(key)
    random.Random(7).shuffle(keys)
    for key in keys + keys[:100]:
        second.add(key)
    assert first.count() == second.count()


def test_distinct_counter_copy_is_independent() -> None:
    counter = DistinctCounter(exact_limit=10)
    for i in range(50):
        counter.add(str(i))
    twin = counter.copy()
    for i in range(50, 5000):
        twin.add(str(i))
    assert counter.count() != twin.count()
    before = counter.count()
    counter.add("new")
    assert twin.count() != before or counter.count() != before


def test_stable_hash_is_the_same_in_every_process() -> None:
    # Python's hash() of a str changes per process; an estimate built on it would
    # make a summary rebuilt elsewhere differ from the stored one.
    code = "from runevents.summary.bounds import stable_hash; print(stable_hash('abc\u00e9'))"
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
        assert done.returncode == 0, done.stderr
        outputs.add(int(done.stdout))
    assert outputs == {stable_hash("abc\u00e9")}


def test_stable_hash_accepts_a_lone_surrogate() -> None:
    assert stable_hash("a\ud800") != stable_hash("a")


# -- CappedMap -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet="abcdefg", min_size=1, max_size=2), max_size=60), st.integers(1, 5)
)
def test_capped_map_keeps_the_smallest_keys_exactly_in_any_order(keys: list[str], cap: int) -> None:
    counts = Counts(cap)
    for key in keys:
        counts.add(key)
    reference = Counter(keys)
    smallest = sorted(reference)[:cap]
    assert counts.as_dict() == {key: reference[key] for key in smallest}
    assert list(counts.as_dict()) == smallest
    assert counts.cut() == len(reference) - len(smallest)
    assert counts.distinct() == len(reference)


def test_capped_map_slot_values_are_copied_by_copy() -> None:
    files: CappedMap[list[int]] = CappedMap(2, list.copy)
    entry = files.slot("a", lambda: [0])
    assert entry is not None
    entry[0] += 1
    twin = files.copy()
    twin_entry = twin.slot("a", lambda: [0])
    assert twin_entry == [1]
    assert twin_entry is not None
    twin_entry[0] += 5
    assert files.kept["a"] == [1]
    assert files.slot("b", lambda: [0]) == [0]
    assert files.slot("c", lambda: [0]) is None  # cut: larger than the two kept keys
    assert files.cut() == 1


def test_capped_map_descending_keys_each_evict_the_largest_kept_one() -> None:
    counts = Counts(1000)
    for i in range(15_000, 0, -1):
        counts.add(f"{i:07d}")
    assert list(counts.as_dict()) == [f"{i:07d}" for i in range(1, 1001)]
    assert counts.cut() == 14_000


# -- fit_summary -----------------------------------------------------------------------


def _summary(names: int, name_chars: int) -> dict[str, Any]:
    def name(i: int) -> str:
        return f"{i:06d}" + "\x01" * (name_chars - 6)  # \x01 is 6 bytes of JSON each

    return {
        "schema": "s",
        "events": {"total": 1, "by_type": {name(i): i for i in range(names)}, "ignored": 0},
        "console": {"lines": 0, "by_stream": {"stdout": 1}, "by_level": {}, "truncated": 0},
        "phases": [
            {"scope": "run", "phase": name(i), "status": None, "duration_ms": 1}
            for i in range(names)
        ],
        "tables": {"by_file": []},
        "validation": {"issues_by_severity": {}, "issues_by_code": {name(i): 1 for i in range(3)}},
        "truncated": {"phases": 5},
    }


def test_fit_summary_leaves_a_small_summary_alone() -> None:
    summary = _summary(10, 10)
    expected = json.loads(json.dumps(summary))
    assert fit_summary(summary) == expected


def test_fit_summary_cuts_the_biggest_lists_from_their_ends_and_counts_the_cut() -> None:
    summary = _summary(1000, 200)
    before = json.loads(json.dumps(summary))
    fitted = fit_summary(summary, limit=256 * 1024)
    assert json_size(fitted) <= 256 * 1024
    by_type, phases = fitted["events"]["by_type"], fitted["phases"]
    # The first entries survive, in order; the counts say how many went.
    assert list(by_type) == list(before["events"]["by_type"])[: len(by_type)]
    assert phases == before["phases"][: len(phases)]
    assert fitted["truncated"]["events.by_type"] == 1000 - len(by_type)
    assert fitted["truncated"]["phases"] == 5 + 1000 - len(phases)  # added to the builder's count
    assert fitted["validation"]["issues_by_code"] == before["validation"]["issues_by_code"]
    assert list(fitted["truncated"]) == sorted(fitted["truncated"])
    # Both big fields were cut down to about the same size, not one of them emptied.
    assert json_size(by_type) == pytest.approx(json_size(phases), rel=0.2)


def test_fit_summary_is_deterministic() -> None:
    assert fit_summary(_summary(800, 256)) == fit_summary(_summary(800, 256))


def test_capped_fields_name_every_list_and_map_of_the_summary() -> None:
    from runevents.summary import RunSummaryBuilder

    summary = RunSummaryBuilder().build()
    found = set()
    for head, value in summary.items():
        if isinstance(value, list):
            found.add(head)
        elif isinstance(value, dict) and head not in ("truncated", "execution", "failure"):
            found.update(f"{head}.{k}" for k, v in value.items() if isinstance(v, list | dict))
    assert found == set(CAPPED_FIELDS)
