"""KeyedLocks: one asyncio.Lock per key (a run id), created on use, dropped when idle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    """One asyncio.Lock per run id, created on use and dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def __call__(self, run_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(run_id)
        if entry is None:
            entry = self._locks[run_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0 and self._locks.get(run_id) is entry:
                del self._locks[run_id]

    def __len__(self) -> int:
        return len(self._locks)
