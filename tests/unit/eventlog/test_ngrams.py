"""The search index of compressed logs: n-gram Bloom filters per frame (eventlog/ngrams.py)."""

from __future__ import annotations

import random

from runevents.eventlog.ngrams import (
    EMPTY,
    UNINDEXED,
    IndexBuilder,
    NgramIndex,
    Probe,
)
from tests.unit.search.builders import line


def frame(*messages: str, start: int = 1) -> bytes:
    return b"".join(line(start + i, m) for i, m in enumerate(messages))


def build(*frames: bytes) -> NgramIndex:
    builder = IndexBuilder()
    first = 1
    for raw in frames:
        builder.add_frame(first, raw)
        first += raw.count(b"\n")
    index = NgramIndex.from_bytes(builder.to_bytes(first - 1, b"d" * 32))
    assert index is not None
    return index


def test_a_probe_never_rules_out_a_frame_that_holds_the_text() -> None:
    rng = random.Random(7)
    words = ["alpha", "beta", "Gamma", "délta", "ε-psilon", "zeta42", "ÉTÉ", "straße"]
    messages = [
        " ".join(rng.choices(words, k=6)) + f" n={rng.randint(0, 99999)}" for _ in range(300)
    ]
    index = build(frame(*messages))
    for message in messages:
        for length in (3, 5, 9):
            for start in range(0, max(1, len(message) - length), 7):
                piece = message[start : start + length].casefold()
                assert Probe([[piece]]).may_match(index.frames[0]), piece


def test_a_rare_term_is_ruled_out_in_most_frames() -> None:
    frames = [
        frame(*(f"row {f}.{i} parsed ok amount={i * 13}" for i in range(200))) for f in range(50)
    ]
    index = build(*frames)
    probe = Probe([["connectionreseterror"]])
    assert sum(probe.may_match(f) for f in index.frames) <= 1
    # alternatives: either may match
    assert all(Probe([["zzzzzz"], ["parsed ok"]]).may_match(f) for f in index.frames)
    # too short to tell: never rules anything out
    assert not Probe([["ab"]]).usable and Probe([["ab"]]).may_match(index.frames[0])


def test_frames_without_console_text_and_undecodable_frames() -> None:
    index = build(line(1, "x", "run.started"), b'{"not": "an event"}\n[1,2]\n')
    assert index.frames[0].log2 == EMPTY and not Probe([["abc"]]).may_match(index.frames[0])
    assert index.frames[1].log2 == UNINDEXED and Probe([["abc"]]).may_match(index.frames[1])


def test_a_damaged_or_foreign_sidecar_is_refused() -> None:
    builder = IndexBuilder()
    builder.add_frame(1, frame("some text here"))
    data = builder.to_bytes(1, b"d" * 32)
    assert NgramIndex.from_bytes(data) is not None
    for i in range(0, len(data), 3):
        damaged = bytearray(data)
        damaged[i] ^= 0x41
        assert NgramIndex.from_bytes(bytes(damaged)) is None, i
    assert NgramIndex.from_bytes(data[:-1]) is None
    assert NgramIndex.from_bytes(b"") is None
    assert NgramIndex.from_bytes(b"RVEZIDX1" + data[8:]) is None


def test_candidates_are_the_frames_may_match_keeps_for_every_filter_size() -> None:
    # the probe's bit positions are worked out once per filter size: frames of
    # different sizes (few or many distinct n-grams) in one index must each be
    # tested with their own table
    frames = [
        frame(*(f"w{f}-{i} token{i * f}" for i in range(n))) for f, n in enumerate((1, 5, 80, 600))
    ]
    index = build(*frames)
    assert len({f.log2 for f in index.frames}) >= 3
    for query in ("w2-7 token14", "token", "w3-599", "zzzz-none", "w0-0"):
        probe = Probe([[query]])
        expected = tuple(i for i, f in enumerate(index.frames) if probe.may_match(f))
        assert probe.candidates(index) == expected, query
    assert Probe([["w3-599"]]).candidates(index) == (3,)
    one = build(frames[2])
    assert Probe([["w2-7"]]).candidates(one) == (0,)
    assert Probe([["zzzz-none"]]).candidates(one) == ()
