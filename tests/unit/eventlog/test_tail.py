"""Live fan-out: replay then live, shared chunks, slow subscribers, other writers."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from runevents.eventlog import Chunk, EventLog, RunRef
from runevents.eventlog import tail as tail_module
from runevents.logstore import LogStore
from runevents.notify import LocalNotifier
from tests.unit.eventlog.conftest import MakeLog, collect
from tests.unit.eventlog.helpers import check_chunks, completed, drafts


async def follow_all(log: EventLog, ref: RunRef, after: int = 0) -> list[Chunk]:
    return [chunk async for chunk in log.follow(ref, after_sequence=after)]


async def test_replay_then_live_is_seamless_under_concurrent_appends(
    log: EventLog, ref: RunRef
) -> None:
    writer = await log.open_writer(ref)
    await writer.append(drafts(50))
    await writer.flush()
    rng = random.Random(3)
    followers: list[tuple[int, asyncio.Task[list[Chunk]]]] = []

    async def produce() -> None:
        for i in range(60):
            await writer.append(drafts(rng.randint(1, 9)))
            if i % 10 == 0:
                # a follower joins while events keep coming, from various positions
                after = rng.randint(0, writer.last_sequence + 5)
                followers.append((after, asyncio.create_task(follow_all(log, ref, after))))
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.005]))
        await writer.append([completed()])

    followers.append((0, asyncio.create_task(follow_all(log, ref))))
    await produce()
    total = writer.last_sequence
    await writer.close()
    for after, task in followers:
        chunks = await asyncio.wait_for(task, 10)
        assert check_chunks(chunks, after + 1) == list(range(after + 1, total + 1))
        assert chunks[-1].ends_run
    assert log._tails == {}  # the last subscriber took the tail down


async def test_caught_up_subscribers_share_the_same_chunk_objects(
    log: EventLog, ref: RunRef
) -> None:
    writer = await log.open_writer(ref)
    await writer.append(drafts(5))
    await writer.flush()
    received: list[list[Chunk]] = [[], [], []]

    async def subscriber(box: list[Chunk]) -> None:
        async for chunk in log.follow(ref, after_sequence=5):
            box.append(chunk)

    tasks = [asyncio.create_task(subscriber(box)) for box in received]
    await asyncio.sleep(0.05)  # all three are caught up and waiting
    await writer.append(drafts(4))
    await writer.flush()
    await writer.append([completed()])
    await writer.close()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    for position in range(2):
        first = received[0][position]
        assert all(box[position] is first for box in received)
    received[0][0].cache["sse"] = b"encoded once"
    assert received[2][0].cache["sse"] == b"encoded once"


async def test_a_slow_subscriber_falls_behind_the_ring_and_catches_up_from_the_log(
    store: LogStore, make_log: MakeLog, ref: RunRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    file_reads: list[int] = []
    original = tail_module.iter_lines

    def counting(*args: Any, **kwargs: Any) -> Any:
        file_reads.append(kwargs["start_offset"])
        return original(*args, **kwargs)

    monkeypatch.setattr(tail_module, "iter_lines", counting)
    log = make_log(store, tail_bytes=8 * 1024, flush_events=4)
    writer = await log.open_writer(ref)
    fast_done = asyncio.Event()
    slow: list[Chunk] = []

    async def slow_subscriber() -> None:
        async for chunk in log.follow(ref):
            slow.append(chunk)
            await asyncio.sleep(0.002)  # a slow client

    async def fast_subscriber() -> list[Chunk]:
        chunks = await follow_all(log, ref)
        fast_done.set()
        return chunks

    slow_task = asyncio.create_task(slow_subscriber())
    fast_task = asyncio.create_task(fast_subscriber())
    await asyncio.sleep(0.02)
    ring_peak = 0
    for i in range(100):
        await writer.append(drafts(4, start=i * 4, size=300))
        tail = next(iter(log._tails.values()), None)
        if tail is not None:
            ring_peak = max(ring_peak, tail._bytes)
        await asyncio.sleep(0)
    await writer.append([completed()])
    await writer.close()
    fast = await asyncio.wait_for(fast_task, 10)
    await asyncio.wait_for(slow_task, 20)
    assert check_chunks(slow) == check_chunks(fast) == list(range(1, 402))
    assert ring_peak <= 8 * 1024 + 4 * 600  # bounded: the limit plus one chunk
    assert file_reads  # the slow one really read the log from its own cursor


async def test_a_writer_in_another_process_is_noticed_by_polling(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    """Two EventLogs on the same files, no shared notifier: the follower polls."""
    reader_side = make_log(local_store, poll_interval_ms=10)
    writer_side = make_log(local_store)
    writer = await writer_side.open_writer(ref)
    await writer.append(drafts(3))
    await writer.flush()
    follower = asyncio.create_task(follow_all(reader_side, ref))
    for i in range(5):
        await asyncio.sleep(0.01)
        await writer.append(drafts(10, start=i * 10))
        await writer.flush()
    await writer.append([completed()])
    await writer.close()
    chunks = await asyncio.wait_for(follower, 5)
    assert check_chunks(chunks) == list(range(1, 55))


async def test_a_shared_notifier_wakes_followers_of_another_event_log_at_once(
    local_store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    """What a cross-process bridge gives: no waiting for the (here: very slow) poll."""
    notifier = LocalNotifier()
    reader_side = make_log(local_store, notifier=notifier, poll_interval_ms=60_000)
    writer_side = make_log(local_store, notifier=notifier)
    writer = await writer_side.open_writer(ref)
    await writer.append(drafts(1))
    await writer.flush()
    follower = asyncio.create_task(follow_all(reader_side, ref))
    await asyncio.sleep(0.02)
    await writer.append([completed()])
    await writer.close()
    chunks = await asyncio.wait_for(follower, 2)
    assert check_chunks(chunks) == [1, 2]


async def test_an_in_process_writer_wakes_followers_without_polling(
    store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    log = make_log(store, notifier=None, poll_interval_ms=60_000)
    writer = await log.open_writer(ref)
    await writer.append(drafts(1))
    await writer.flush()
    follower = asyncio.create_task(follow_all(log, ref))
    await asyncio.sleep(0.02)
    await writer.append([completed()])
    chunks = await asyncio.wait_for(follower, 2)
    assert check_chunks(chunks) == [1, 2]
    await writer.close()


async def test_follow_past_the_end_of_an_ended_log_ends_at_once(log: EventLog, ref: RunRef) -> None:
    writer = await log.open_writer(ref)
    await writer.append([*drafts(3), completed()])
    await writer.close()
    assert await asyncio.wait_for(follow_all(log, ref, after=4), 2) == []
    assert await asyncio.wait_for(follow_all(log, ref, after=9), 2) == []
    chunks = await asyncio.wait_for(follow_all(log, ref, after=2), 2)
    assert check_chunks(chunks, 3) == [3, 4]


async def test_follow_waits_past_its_position_then_gets_only_what_follows(
    log: EventLog, ref: RunRef
) -> None:
    writer = await log.open_writer(ref)
    await writer.append(drafts(2))
    await writer.flush()
    follower = asyncio.create_task(follow_all(log, ref, after=6))
    for _ in range(4):
        await asyncio.sleep(0.005)
        await writer.append(drafts(2))
        await writer.flush()
    await writer.append([completed()])
    await writer.close()
    chunks = await asyncio.wait_for(follower, 2)
    assert check_chunks(chunks, 7) == [7, 8, 9, 10, 11]


async def test_followers_of_a_sealed_or_compacted_log_replay_and_end(
    log: EventLog, ref: RunRef
) -> None:
    writer = await log.open_writer(ref)
    await writer.append([*drafts(30), completed()])
    await writer.close()
    await log.seal(ref)
    assert check_chunks(await follow_all(log, ref, 10), 11) == list(range(11, 32))
    await log.compact(ref)
    await log.drop_plain(ref)
    assert check_chunks(await follow_all(log, ref, 20), 21) == list(range(21, 32))


async def test_a_follower_survives_the_seal_of_a_spooled_log(
    make_log: MakeLog, ref: RunRef
) -> None:
    from runevents.logstore import open_log_store

    log = make_log(open_log_store("memory://"))
    writer = await log.open_writer(ref)
    await writer.append(drafts(5))
    await writer.flush()
    gate = asyncio.Event()
    got: list[Chunk] = []

    async def follower() -> None:
        async for chunk in log.follow(ref):
            got.append(chunk)
            await gate.wait()  # hold on to the spool file while it is sealed away

    task = asyncio.create_task(follower())
    await asyncio.sleep(0.02)
    await writer.append([*drafts(3, start=5), completed()])
    await writer.close()
    await log.seal(ref)
    assert not log.keys(ref).live.exists()
    gate.set()
    await asyncio.wait_for(task, 2)
    assert check_chunks(got) == list(range(1, 10))


async def test_abandoning_a_follow_releases_the_tail(log: EventLog, ref: RunRef) -> None:
    writer = await log.open_writer(ref)
    await writer.append(drafts(3))
    await writer.flush()
    follow = log.follow(ref)
    assert (await follow.__anext__()).last_sequence == 3
    waiting = asyncio.ensure_future(follow.__anext__())
    await asyncio.sleep(0.02)
    assert len(log._tails) == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await follow.aclose()
    assert log._tails == {}
    await writer.close()
    assert check_chunks(await collect(log.read(ref))) == [1, 2, 3]


async def test_a_watched_run_flushes_on_the_live_interval(
    store: LogStore, make_log: MakeLog, ref: RunRef
) -> None:
    """Unwatched: events wait for flush_interval_ms; followed live: live_flush_interval_ms."""
    log = make_log(store, flush_interval_ms=60_000, live_flush_interval_ms=10)
    writer = await log.open_writer(ref)
    await writer.append(drafts(1))
    await asyncio.sleep(0.1)
    assert writer.pending_events == 1  # nobody watches: still buffered
    await writer.flush()
    follower = asyncio.create_task(follow_all(log, ref))
    await asyncio.sleep(0.02)
    await writer.append(drafts(1))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if writer.pending_events == 0:
            break
    assert writer.pending_events == 0
    await writer.append([completed()])
    await writer.close()
    assert check_chunks(await asyncio.wait_for(follower, 2)) == [1, 2, 3]
