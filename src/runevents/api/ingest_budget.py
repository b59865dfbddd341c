"""How many ingest bodies one process holds at once: a budget of bytes.

Each batch is bounded (``max_batch_bytes``), but without a bound on how many
are read and decoded at the same time, memory was not: decoding costs about
six times the body, so 30 producers sending 16 MiB batches at once took a
server to 3.2 GB (measured by an outside probe). A batch reserves its declared
``Content-Length`` (the whole ``max_batch_bytes`` when it does not declare
one) before its body is read, and gives it back when it is answered. When the
budget is spent the request waits -- its body stays in the socket, so the
producer is slowed down by TCP -- and after ``wait_seconds`` it gets an honest
503 with ``Retry-After`` (contract 6: nothing of it is stored; a keyed retry
appends it once). A batch larger than the whole budget runs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from runevents.exceptions import StorageError


class Overloaded(StorageError):
    """Too many ingest bytes in flight in this process right now; retry shortly."""

    code = "overloaded"


class IngestBudget:
    """Bytes of ingest bodies in flight, at most ``limit`` (see the module doc)."""

    def __init__(self, limit: int, wait_seconds: float) -> None:
        self.limit = limit
        self.wait_seconds = wait_seconds
        #: bytes reserved by the batches in flight
        self.used = 0
        self._freed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes of the budget for the block; Overloaded if they cannot be had
        within ``wait_seconds``."""
        size = min(max(size, 0), self.limit)
        if self.used + size > self.limit:
            try:
                async with self._freed:
                    await asyncio.wait_for(
                        self._freed.wait_for(lambda: self.used + size <= self.limit),
                        self.wait_seconds,
                    )
            except TimeoutError:
                raise Overloaded(
                    "the server is busy with other batches; retry shortly (nothing was stored)"
                ) from None
        self.used += size
        try:
            yield
        finally:
            self.used -= size
            async with self._freed:
                self._freed.notify_all()
