"""Search across runs (issue 16): order, filters, cursor, and the n-gram index.

Every test runs on SQLite and Postgres. Frames are 4 KiB here, so a run has
dozens of frames and the index has something to skip.
"""

from __future__ import annotations

import asyncio

from runevents.app import App
from runevents.eventlog.ngrams import NgramIndex
from runevents.maintenance import reindex, retention
from runevents.models import utcnow
from runevents.search.filters import CACHE
from runevents.upkeep import run_ref
from tests.integration.search.conftest import (
    clear_filter_cache,
    console,
    filler,
    make_run,
    search,
)


async def test_hits_are_newest_runs_first_in_sequence_order_with_code_point_spans(
    app: App,
) -> None:
    old = await make_run(app, [console("ConnectionResetError: peer"), *filler(5)])
    new = await make_run(
        app, [*filler(3), console("Ünïcode ✓ then connectionreseterror twice ConnectionResetError")]
    )
    hits, done = await search(app, "connectionReseterror")
    assert [(h["run_id"], h["sequence"]) for h in hits] == [(new.id, 5), (old.id, 2)]
    message = hits[0]["message"]
    assert [message[a:b] for a, b in hits[0]["match"]] == [
        "connectionreseterror",
        "ConnectionResetError",
    ]
    assert hits[1]["match"] == [[0, 20]]
    assert hits[0]["configuration_id"] == "etl" and hits[0]["created_at"].endswith("Z")
    assert done["hits"] == 2 and done["runs_scanned"] == 2 and done["cursor"] is None


async def test_filters_configuration_status_stream_level_and_regex(app: App) -> None:
    a = await make_run(app, [console("boom A", "stderr", "error")], cfg="etl", status="failed")
    b = await make_run(app, [console("boom B")], cfg="load")
    hits, _ = await search(app, "boom", configuration_id="load")
    assert [h["run_id"] for h in hits] == [b.id]
    from runevents.models import RunStatus

    hits, _ = await search(app, "boom", statuses=frozenset({RunStatus.FAILED}))
    assert [h["run_id"] for h in hits] == [a.id]
    hits, _ = await search(app, "boom", stream="stderr", level="error")
    assert [h["run_id"] for h in hits] == [a.id]
    hits, _ = await search(app, r"boom [AB]$", regex=True)
    assert [h["message"] for h in hits] == ["boom B", "boom A"]
    # a regex is case-sensitive unless it says so
    assert (await search(app, "BOOM", regex=True))[0] == []
    assert len((await search(app, "(?i)BOOM", regex=True))[0]) == 2


async def test_cursor_continues_where_the_limit_stopped(app: App) -> None:
    runs = [
        await make_run(app, [console(f"needle {r}-{i}") for i in range(3)] + filler(2))
        for r in range(3)
    ]
    expected = [(r.id, s) for r in reversed(runs) for s in (2, 3, 4)]
    seen: list[tuple[str, int]] = []
    cursor = None
    for _ in range(10):
        hits, done = await search(app, "needle", limit=4, cursor=cursor)
        seen += [(h["run_id"], h["sequence"]) for h in hits]
        cursor = done["cursor"]
        if cursor is None:
            break
        assert done["hits"] == 4
    assert seen == expected


async def test_live_and_plain_runs_are_scanned(app: App) -> None:
    live = await make_run(app, [console("live needle")], end=False)
    plain = await make_run(app, [console("plain needle")])
    hits, done = await search(app, "needle")
    assert [h["run_id"] for h in hits] == [plain.id, live.id]
    assert done["bytes_skipped"] == 0 and done["bytes_scanned"] > 0


async def _corpus(app: App) -> tuple[list, list]:  # type: ignore[type-arg]
    rare = [
        await make_run(app, [*filler(300, seed=r), console("zqxj-7731 rare thing"), *filler(300)])
        for r in range(2)
    ]
    others = [await make_run(app, filler(600, seed=r + 10)) for r in range(4)]
    for run in [*rare, *others]:
        assert await app.manager.compact_run(run) is not None
    return rare, others


async def test_the_index_skips_frames_that_cannot_match(app: App) -> None:
    rare, _ = await _corpus(app)
    hits, done = await search(app, "ZQXJ-7731")
    assert sorted(h["run_id"] for h in hits) == sorted(r.id for r in rare)
    assert done["runs_scanned"] == 6
    # most bytes ruled out by the filters: only the frames holding the term were read
    assert done["bytes_skipped"] > 10 * done["bytes_scanned"] > 0
    # a regex with a required literal uses the index too
    hits, done = await search(app, r"zqxj-\d+ rare", regex=True)
    assert len(hits) == 2 and done["bytes_skipped"] > 10 * done["bytes_scanned"]
    # a query too short for n-grams reads everything, and still finds it all
    hits, done = await search(app, "zq")
    assert len(hits) == 2 and done["bytes_skipped"] == 0


async def test_index_answers_equal_a_full_scan(app: App) -> None:
    await _corpus(app)
    for q in ("amount=7", "rare thing", "ROW 3-29", "merged", "zqxj"):
        with_index = await search(app, q, limit=1000)
        app.manager.log.search_index = False
        for run_id in list(CACHE._entries):
            CACHE.forget(run_id)
        # the same search with every index gone
        for ref in [k async for k in app.manager.log.scan()]:
            await app.manager.log.store.delete(app.manager.log.keys(ref).ngram_index)
        without = await search(app, q, limit=1000)
        assert with_index[0] == without[0], q
        assert without[1]["bytes_skipped"] == 0
        # rebuild for the next query
        for ref in [k async for k in app.manager.log.scan()]:
            assert await app.manager.log.index_for_search(ref)
        app.manager.log.search_index = True
        clear_filter_cache()


async def test_missing_index_falls_back_to_a_scan(app: App) -> None:
    rare, _ = await _corpus(app)
    keys = app.manager.log.keys(run_ref(rare[0]))
    await app.manager.log.store.delete(keys.ngram_index)
    hits, done = await search(app, "zqxj-7731")
    assert sorted(h["run_id"] for h in hits) == sorted(r.id for r in rare)
    assert done["bytes_skipped"] > 0  # the other runs still use theirs


async def test_damaged_index_falls_back_to_a_scan(app: App) -> None:
    rare, _ = await _corpus(app)
    for run in rare:
        path = app.manager.log.store.local_path(app.manager.log.keys(run_ref(run)).ngram_index)
        assert path is not None
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte: the checksum fails
        path.write_bytes(bytes(data))
        assert NgramIndex.from_bytes(bytes(data)) is None
    hits, _ = await search(app, "zqxj-7731")
    assert sorted(h["run_id"] for h in hits) == sorted(r.id for r in rare)


async def test_index_of_another_log_is_not_trusted(app: App) -> None:
    rare, others = await _corpus(app)
    log = app.manager.log
    # the index of a run without the term, put beside a run with it: its filters
    # would rule the term out. Its event count differs from the row's: not used.
    source = log.store.local_path(log.keys(run_ref(others[0])).ngram_index)
    target = log.store.local_path(log.keys(run_ref(rare[0])).ngram_index)
    assert source is not None and target is not None
    target.write_bytes(source.read_bytes())
    hits, _ = await search(app, "rare thing")
    assert sorted(h["run_id"] for h in hits) == sorted(r.id for r in rare)
    # and reindex puts the right one back
    await reindex(app.manager)
    assert target.read_bytes() != source.read_bytes()


async def test_reindex_rebuilds_the_index(app: App) -> None:
    rare, others = await _corpus(app)
    log = app.manager.log
    for run in [*rare, *others]:
        await log.store.delete(log.keys(run_ref(run)).ngram_index)
    report = await reindex(app.manager)
    assert not report.errors
    for run in [*rare, *others]:
        path = log.store.local_path(log.keys(run_ref(run)).ngram_index)
        assert path is not None and NgramIndex.from_bytes(path.read_bytes()) is not None
    hits, done = await search(app, "zqxj-7731")
    assert len(hits) == 2 and done["bytes_skipped"] > 10 * done["bytes_scanned"]


async def test_retention_deletes_the_index_with_the_log(app: App) -> None:
    from datetime import timedelta

    rare, _ = await _corpus(app)
    log = app.manager.log
    path = log.store.local_path(log.keys(run_ref(rare[0])).ngram_index)
    assert path is not None and path.exists()
    report = await retention(app.manager, timedelta(0))
    assert report.runs == 6
    # expired runs are not searched from the moment they expire...
    hits, done = await search(app, "zqxj-7731")
    assert hits == [] and done["runs_scanned"] == 0
    # ...and their indexes go with their bodies once the delete delay has passed
    later = utcnow() + timedelta(seconds=app.settings.delete_delay_seconds)
    assert await app.manager.delete_due_bodies(now=later) == 6
    assert not path.exists()
    assert [info.key async for info in log.store.list("workspaces/")] == []


async def test_search_never_stalls_the_event_loop(app: App) -> None:
    # a run of 1 MiB frames searched for a term on every line: decoding happens off-loop
    app.manager.log.frame_bytes = 1024 * 1024
    run = await make_run(app, filler(20_000))
    await app.manager.compact_run(run)
    worst = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.005)
            worst = max(worst, loop.time() - before - 0.005)

    task = asyncio.create_task(ticker())
    hits, _ = await search(app, "parsed", limit=1000)
    hits2, _ = await search(app, "zzzz-not-there", limit=1000)
    stop.set()
    await task
    assert len(hits) == 1000 and hits2 == []
    assert worst < 0.05, f"the event loop stalled {worst * 1000:.0f} ms"


async def test_several_statuses_and_a_time_window(app: App) -> None:
    from datetime import timedelta

    from runevents.models import RunStatus, utcnow

    ok = await make_run(app, [console("hit ok")])
    bad = await make_run(app, [console("hit bad")], status="failed")
    await make_run(app, [console("hit cancelled")], status="cancelled")
    both = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED})
    hits, _ = await search(app, "hit", statuses=both)
    assert [h["run_id"] for h in hits] == [bad.id, ok.id]
    hits, _ = await search(app, "hit", statuses=both, created_after=utcnow() + timedelta(hours=1))
    assert hits == []
    hits, _ = await search(app, "hit", created_before=bad.created_at)
    assert [h["run_id"] for h in hits] == [ok.id]


async def test_search_on_a_remote_store_uses_the_stored_index(remote_app: App) -> None:
    remote = remote_app
    rare, _ = await _corpus(remote)
    assert remote.manager.log.store.local_path("x") is None
    hits, done = await search(remote, "zqxj-7731")
    assert sorted(h["run_id"] for h in hits) == sorted(r.id for r in rare)
    assert done["bytes_skipped"] > 10 * done["bytes_scanned"] > 0
    live = await make_run(remote, [console("zqxj-7731 live")], end=False)
    hits, _ = await search(remote, "zqxj-7731")
    assert hits[0]["run_id"] == live.id and len(hits) == 3
