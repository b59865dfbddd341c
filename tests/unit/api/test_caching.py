"""ETag and If-None-Match rules of event reads (api/caching.py)."""

from __future__ import annotations

from runevents.api.caching import IMMUTABLE, NO_STORE, etag, headers, matches
from runevents.logview import LogEnd


def test_etag_names_run_form_kind_and_range_and_is_strong() -> None:
    end = LogEnd(100, True, "ndjson")
    tag = etag("run_X", end, "json500", 0, 100)
    assert tag == '"run_X.ndjson.json500.0-100"'
    assert etag("run_X", LogEnd(100, True, "zstd"), "json500", 0, 100) != tag
    assert etag("run_X", end, "ndjson", 0, 100) != tag
    assert etag("run_X", end, "json500", 0, 99) != tag


def test_if_none_match_lists_weak_forms_and_star() -> None:
    tag = '"run_X.ndjson.ndjson.0-5"'
    assert matches(tag, tag)
    assert matches(f'"a", W/{tag}', tag)
    assert matches("*", tag)
    assert not matches(None, tag)
    assert not matches("", tag)
    assert not matches('"run_X.ndjson.ndjson.0-6"', tag)
    assert not matches(tag.strip('"'), tag)  # an unquoted tag is another string


def test_complete_ranges_are_immutable_and_the_tail_no_store() -> None:
    assert headers('"t"', True)["Cache-Control"] == IMMUTABLE
    assert headers('"t"', False)["Cache-Control"] == NO_STORE
    assert "Accept" in headers('"t"', True)["Vary"]
