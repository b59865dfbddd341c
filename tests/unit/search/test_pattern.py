"""Search patterns: casefolded plain text, RE2, code point spans, required literals."""

from __future__ import annotations

import time

import pytest

from runevents.search.pattern import InvalidPattern, Pattern, regex_requirement


def test_plain_text_is_casefolded_with_spans_in_code_points_of_the_original() -> None:
    p = Pattern("strasse", regex=False)
    assert p.spans("Die Straße, die STRASSE") == [(4, 10), (16, 23)]
    assert Pattern("é", regex=False).spans("🙂É é") == [(1, 2), (3, 4)]
    assert Pattern("aa", regex=False).spans("aaaa") == [(0, 2), (2, 4)]  # non-overlapping
    assert Pattern("K", regex=False).spans("\u212aelvin") == [(0, 1)]  # Kelvin sign


def test_regex_is_case_sensitive_unless_it_says_so() -> None:
    assert Pattern("err(or)?", regex=True).spans("Error error") == [(6, 11)]
    assert Pattern("(?i)err(or)?", regex=True).spans("Error error") == [(0, 5), (6, 11)]
    assert Pattern("x*", regex=True).spans("abc") == []  # empty matches mark nothing
    assert Pattern("ü+", regex=True).spans("🙂üü!") == [(1, 3)]


@pytest.mark.parametrize("bad", ["(", "a{2,1}", r"(a)\1", "(?<=a)b", "x{1001}{1001}"])
def test_invalid_regex_is_rejected(bad: str) -> None:
    with pytest.raises(InvalidPattern) as caught:
        Pattern(bad, regex=True)
    assert "b'" not in caught.value.message  # RE2's reason as text, not a bytes repr


def test_regex_runs_in_linear_time() -> None:
    started = time.perf_counter()
    assert Pattern("(a+)+$", regex=True).spans("a" * 100_000 + "!") == []
    assert Pattern("(x+x+)+y", regex=True).spans("x" * 100_000) == []
    assert time.perf_counter() - started < 1.0


def test_requirement_of_plain_text_is_the_casefolded_text() -> None:
    assert Pattern("Straße", regex=False).requirement() == [["strasse"]]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("ConnectionReset", [["connectionreset"]]),
        (r"conn\w+ reset", [["conn", " reset"]]),
        ("(?i)Timeout after [0-9]+ secs", [["timeout after ", " secs"]]),
        ("foo(bar)?baz", [["foo", "baz"]]),
        ("(alpha|beta) release", [["alpha", " release"], ["beta", " release"]]),
        ("x(yz)+w", []),  # pieces shorter than an n-gram: unknown
        ("error|ab", []),  # an alternative with no literal of 3 characters: unknown
        ("[[:alpha:]]abc", []),  # Python reads POSIX classes differently: unknown
        (r"\p{Greek}abc", []),
        ("a.*", []),
        ("(?:abc){0,3}", []),
        ("naïve approach", [["ve approach"]]),  # ASCII runs only
    ],
)
def test_requirement_of_a_regex_is_conservative(pattern: str, expected: list[list[str]]) -> None:
    assert regex_requirement(pattern) == expected
