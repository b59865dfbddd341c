"""Matching one chunk of lines (runevents.search.hits)."""

from __future__ import annotations

import msgspec

from runevents.search.hits import Filters, Prefilter, find_hits
from runevents.search.pattern import Pattern
from tests.unit.search.builders import line


def hits(data: bytes, q: str, regex: bool = False, **kw: object) -> list[dict[str, object]]:
    pattern = Pattern(q, regex=regex)
    filters = Filters(stream=kw.pop("stream", None), level=kw.pop("level", None))  # type: ignore[arg-type]
    found = find_hits(
        data,
        1,
        pattern,
        Prefilter.of(pattern),
        filters,
        run_id="run_X",
        configuration_id="etl",
        **kw,  # type: ignore[arg-type]
    )
    return [msgspec.json.decode(b) for _, b in found]


def test_only_console_lines_with_string_messages_match() -> None:
    data = (
        line(1, "needle", "run.error")
        + line(2, 42)
        + line(3, "the needle")
        + line(4, "nothing")
        + line(5, "NEEDLE", stream="stderr", level="error")
    )
    assert [h["sequence"] for h in hits(data, "needle")] == [3, 5]
    assert [h["sequence"] for h in hits(data, "needle", stream="stderr")] == [5]
    assert [h["sequence"] for h in hits(data, "needle", level="info")] == [3]
    assert [h["sequence"] for h in hits(data, "needle", after_sequence=3)] == [5]
    assert [h["sequence"] for h in hits(data, "needle", limit=1)] == [3]


def test_the_byte_prefilter_never_hides_a_casefolded_match() -> None:
    # the Kelvin sign casefolds to ASCII "k": a byte test on "kelvin" would miss it
    data = line(1, "\u212aelvin scale") + line(2, "plain ascii")
    assert [h["sequence"] for h in hits(data, "kelvin")] == [1]
    # escaped characters in the stored JSON are matched after decoding
    data = line(1, 'say "hi"\tthere \\ now')
    assert hits(data, '"hi"\tthere \\')[0]["match"] == [[4, 16]]


def test_a_regex_with_a_required_literal_matches_like_without_the_prefilter() -> None:
    data = b"".join(line(i + 1, m) for i, m in enumerate(["Timeout after 30 s", "timeout", "x"]))
    assert [h["sequence"] for h in hits(data, r"Timeout after \d+", regex=True)] == [1]
    assert [h["sequence"] for h in hits(data, r"(?i)timeout", regex=True)] == [1, 2]


def _hits_with(
    prefilter: Prefilter, data: bytes, first: int, pattern: Pattern, after: int, limit: int | None
) -> list[tuple[int, bytes]]:
    return find_hits(
        data,
        first,
        pattern,
        prefilter,
        Filters(),
        run_id="r",
        configuration_id="c",
        after_sequence=after,
        limit=limit,
    )


def test_candidate_lines_found_in_the_whole_chunk_equal_a_line_by_line_match() -> None:
    # An ASCII chunk is searched for the query's literal as a whole (RE2) and
    # only the lines it lands on are decoded: the answer must be exactly the
    # line-by-line one (no byte prefilter), sequences included.
    import random

    rng = random.Random(16)
    words = ["Needle", "needle", "NEEDLE-7", "hay", "stack", "nee dle", "ne", "edle", "x" * 40]
    queries = [("needle", False), ("NEEDLE-7", False), ("(?i)needle|stack", True), ("e", False)]
    for trial in range(40):
        first = rng.randint(1, 50)
        lines = []
        for i in range(rng.randint(1, 60)):
            message = " ".join(rng.choices(words, k=rng.randint(0, 5)))
            type_ = "console.line" if rng.random() < 0.9 else "run.error"
            lines.append(line(first + i, message, type_))
        data = b"".join(lines)
        if trial % 3 == 0:
            data = data.rstrip(b"\n")  # a chunk may end without a newline
        for q, regex in queries:
            pattern = Pattern(q, regex=regex)
            for after, limit in ((0, None), (first + 5, None), (0, 2)):
                fast = _hits_with(Prefilter.of(pattern), data, first, pattern, after, limit)
                slow = _hits_with(Prefilter(None), data, first, pattern, after, limit)
                assert fast == slow, (trial, q, after, limit)
                assert Prefilter.of(pattern).finder is not None or q == "e"
