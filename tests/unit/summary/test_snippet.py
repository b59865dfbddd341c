"""The console snippet (summary/snippet.py) on its own: the window, batches, copies.

The builder's own snippet tests (tests/unit/summary/test_summary.py) go through
``RunSummaryBuilder``; these pin the module's contract directly.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runevents.summary.snippet import SNIPPET_BYTES, ConsoleSnippet


def reference(messages: list[str]) -> str:
    tail = "\n".join(messages).encode("utf-8", "replace")[-SNIPPET_BYTES:]
    return tail.decode("utf-8", "ignore")  # drops only a partial first character


# Runs of one (possibly multi-byte) character reach the 4 KiB window cheaply.
repeated = st.builds(
    lambda char, n: char * n, st.sampled_from(["a", "€", "\U0001f600", "xé"]), st.integers(0, 5000)
)
messages_strategy = st.lists(
    st.text(alphabet="a€\U0001f600\n", max_size=40) | repeated, max_size=30
)


def test_an_empty_snippet_is_empty() -> None:
    assert ConsoleSnippet().text == ""


@settings(max_examples=100, deadline=None)
@given(messages_strategy, st.integers(1, 8))
def test_property_batches_keep_the_same_tail_as_one_by_one(messages: list[str], batch: int) -> None:
    one_by_one, batched = ConsoleSnippet(), ConsoleSnippet()
    for message in messages:
        one_by_one.keep(message)
    for i in range(0, len(messages), batch):
        batched.keep_tail(messages[i : i + batch])
    assert one_by_one.text == batched.text == reference(messages)


def test_a_copy_is_independent() -> None:
    snippet = ConsoleSnippet()
    snippet.keep_tail(["one", "two"])
    twin = snippet.copy()
    twin.keep("three")
    snippet.keep("x" * SNIPPET_BYTES)  # fills the window alone: the rest is dropped
    assert twin.text == "one\ntwo\nthree"
    assert snippet.text == "x" * SNIPPET_BYTES
