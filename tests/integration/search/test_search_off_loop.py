"""Search across runs keeps its per-run work off the event loop (issue 16, loop figure).

A search lists thousands of runs; whatever it does per run on the event loop
is multiplied by thousands, and every other request (followers, ingest) waits
meanwhile. These tests pin down where that work runs, structurally: the
filter cache lookups, the index file reads and parses and the filter probes
all happen in worker threads, never on the loop's thread; and what the server
caches per run is invisible to the garbage collector (a full collection
walking thousands of cached objects stalls every thread).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from typing import Any

import pytest

from runevents.app import App
from runevents.eventlog.ngrams import NgramIndex, Probe
from runevents.models import RunQuery
from runevents.search.filters import CACHE, FilterCache
from tests.integration.search.conftest import console, filler, make_run, search


def _record_threads(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> set[int]:
    """Patch ``owner.name`` to note the thread of every call; the set of thread idents."""
    seen: set[int] = set()
    original: Callable[..., Any] = getattr(owner, name)
    is_static = isinstance(owner.__dict__.get(name), (classmethod, staticmethod))

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        seen.add(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, staticmethod(wrapper) if is_static else wrapper)
    return seen


async def _runs(app: App) -> None:
    for r in range(5):
        lines = filler(200, seed=r)
        if r == 2:
            lines = [*lines, console("qvxz-0912 rare thing")]
        run = await make_run(app, lines)
        assert await app.manager.compact_run(run) is not None


async def _check_off_loop(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    loop_thread = threading.get_ident()
    lookups = _record_threads(monkeypatch, FilterCache, "get_many")
    parses = _record_threads(monkeypatch, NgramIndex, "from_bytes")
    probes = _record_threads(monkeypatch, Probe, "filter_may_match")
    for _ in range(2):  # the filters read from the store, then from the cache
        hits, done = await search(app, "qvxz-0912")
        assert len(hits) == 1 and done["runs_scanned"] == 5
    assert lookups and parses and probes
    assert loop_thread not in lookups | parses | probes


async def test_filter_lookups_reads_and_probes_run_off_the_event_loop(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the regression: every run's cache lookup (and the loop over the batch) ran on the loop
    await _runs(app)
    await _check_off_loop(app, monkeypatch)


async def test_remote_filters_are_parsed_off_the_event_loop(
    remote_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # objects of a remote store are fetched on the loop, but parsed (CRC) in a worker thread
    await _runs(remote_app)
    await _check_off_loop(remote_app, monkeypatch)


async def test_cached_filters_and_run_rows_are_invisible_to_the_collector(app: App) -> None:
    # the regression: thousands of cached parsed filters (dataclasses) were walked by
    # every full garbage collection, a pause of tens of ms for every thread
    await _runs(app)
    await search(app, "qvxz-0912")
    cached = [entry for entry in CACHE._entries.values() if isinstance(entry, NgramIndex)]
    assert len(cached) == 5
    for index in cached:
        assert not gc.is_tracked(index)
        assert not any(gc.is_tracked(frame) for frame in index.frames)
    heads, _ = await app.manager.repo.list_run_heads(RunQuery(workspace_id="acme", limit=10))
    assert len(heads) == 5 and not any(gc.is_tracked(head) for head in heads)
