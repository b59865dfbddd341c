"""The live-notification seam: "run X's log grew", as a per-run signal.

The signal carries no data -- the log is the only data path. A reader that
wants to wait for more takes the run's *current* signal **before** it looks at
the log, reads what is there, and only then waits on the signal it took. A
writer that makes new bytes visible calls :meth:`Notifier.notify`, which sets
the current signal and replaces it with a fresh one (close-and-replace, as
litestream's ``Notify``). An append that lands between the reader's look and
its wait has already set the signal the reader holds, so no wake-up is lost.

Cross-process: :class:`LocalNotifier` only reaches waiters of this process.
A bridge (Postgres ``LISTEN/NOTIFY``, added by the composition root) plugs in
through the two hooks below: it passes ``publish=`` to send each local notify
out, and calls :meth:`LocalNotifier.wake` for each notification it receives.
Readers never rely on a notifier alone: the tail also re-checks the log every
``poll_interval_ms``, so a writer in another process is noticed even with no
bridge at all.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from runevents import metrics


@runtime_checkable
class Notifier(Protocol):
    """Per-run wake-up signals (close-and-replace)."""

    def signal(self, run_id: str) -> asyncio.Event:
        """The run's current signal. Take it before reading, then wait on it."""
        ...

    def notify(self, run_id: str) -> None:
        """The run's log grew: wake this process's waiters and tell other processes."""
        ...

    def wake(self, run_id: str) -> None:
        """Wake this process's waiters only (a bridge calls this for remote notifications)."""
        ...


class LocalNotifier:
    """In-process signals: one ``asyncio.Event`` per run that has waiters.

    Signals are held weakly: a run nobody waits on costs nothing, and runs that
    end without a final notify leave nothing behind.
    """

    def __init__(self, *, publish: Callable[[str], None] | None = None) -> None:
        #: hook for a cross-process bridge: called with the run id on every notify
        self.publish = publish
        self._signals: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )

    def signal(self, run_id: str) -> asyncio.Event:
        """The run's current signal (created on demand)."""
        event = self._signals.get(run_id)
        if event is None:
            event = asyncio.Event()
            self._signals[run_id] = event
        return event

    def wake(self, run_id: str) -> None:
        """Set and drop the run's current signal; the next :meth:`signal` makes a new one."""
        event = self._signals.pop(run_id, None)
        if event is not None:
            event.set()

    def notify(self, run_id: str) -> None:
        """Wake local waiters, then hand the run id to the bridge (if any)."""
        metrics.notify_wakeup("local")
        self.wake(run_id)
        if self.publish is not None:
            self.publish(run_id)
