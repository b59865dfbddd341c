"""The live-notification seam (runevents.notify)."""

from __future__ import annotations

import asyncio
import gc

from runevents.notify import LocalNotifier, Notifier


def test_local_notifier_satisfies_the_protocol() -> None:
    assert isinstance(LocalNotifier(), Notifier)


async def test_notify_sets_the_signal_taken_before_and_replaces_it() -> None:
    notifier = LocalNotifier()
    taken = notifier.signal("r1")
    assert notifier.signal("r1") is taken  # same until notified
    notifier.notify("r1")
    assert taken.is_set()
    fresh = notifier.signal("r1")
    assert fresh is not taken and not fresh.is_set()


async def test_a_notify_between_look_and_wait_is_not_lost() -> None:
    """Close-and-replace: the waiter holds the signal it took before reading."""
    notifier = LocalNotifier()
    signal = notifier.signal("r1")  # 1. take the signal
    notifier.notify("r1")  # 2. an append lands while the reader reads
    await asyncio.wait_for(signal.wait(), 1)  # 3. the wait returns at once


async def test_notify_wakes_every_waiter_of_that_run_only() -> None:
    notifier = LocalNotifier()
    waiters = [asyncio.create_task(notifier.signal("r1").wait()) for _ in range(5)]
    other = asyncio.create_task(notifier.signal("r2").wait())
    await asyncio.sleep(0)
    notifier.notify("r1")
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert not other.done()
    other.cancel()


async def test_publish_hook_gets_every_notify_and_wake_stays_local() -> None:
    published: list[str] = []
    notifier = LocalNotifier(publish=published.append)
    signal = notifier.signal("r1")
    notifier.wake("r1")  # what a bridge calls for a remote notification
    assert signal.is_set()
    assert published == []
    notifier.notify("r1")
    notifier.notify("r2")
    assert published == ["r1", "r2"]


def test_signals_nobody_holds_are_forgotten() -> None:
    notifier = LocalNotifier()
    for i in range(100):
        notifier.signal(f"run-{i}")
    gc.collect()
    assert len(notifier._signals) == 0
