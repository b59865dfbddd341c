"""The in-process fake backend (``memory://``), for tests.

It behaves like a *remote* store: :meth:`MemoryLogStore.local_path` returns
None, so the event log engine spools live logs on local disk and uploads them
whole at seal time, exactly as it does for S3. ``memory://name`` opens the
same named store again in this process (handy for tests that play two
processes); bare ``memory://`` is always a fresh, private store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from runevents.exceptions import InvalidInput, LogNotFound, StorageError
from runevents.logstore.base import READ_CHUNK, ObjectInfo

_named: dict[str, MemoryLogStore] = {}


class MemoryLogStore:
    """Objects as immutable ``bytes`` in a dict; whole-object writes replace atomically."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._objects: dict[str, tuple[bytes, datetime]] = {}

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> MemoryLogStore:
        """``memory://`` (a fresh store) or ``memory://name`` (shared within this process)."""
        if kwargs:
            raise InvalidInput(f"memory:// storage takes no options (got {sorted(kwargs)})")
        parts = urlsplit(url)
        if parts.scheme != "memory" or parts.path.strip("/") or parts.query or parts.fragment:
            raise InvalidInput(
                f"invalid memory storage URL {url!r}: use memory:// or memory://name"
            )
        name = parts.netloc
        if not name:
            return cls("memory://")
        store = _named.get(name)
        if store is None:
            store = _named[name] = cls(f"memory://{name}")
        return store

    def local_path(self, key: str) -> Path | None:
        """Always None: this store is "remote"."""
        return None

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order."""
        for key in sorted(k for k in self._objects if k.startswith(prefix)):
            entry = self._objects.get(key)
            if entry is not None:
                yield ObjectInfo(key=key, size=len(entry[0]), modified=entry[1])

    async def stat(self, key: str) -> ObjectInfo:
        """Info of ``key`` (LogNotFound if missing)."""
        entry = self._objects.get(key)
        if entry is None:
            raise LogNotFound(f"no object {key!r} in {self.url}")
        return ObjectInfo(key=key, size=len(entry[0]), modified=entry[1])

    async def read(
        self, key: str, start: int = 0, end: int | None = None, *, chunk_size: int = READ_CHUNK
    ) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of ``key``, in chunks of at most ``chunk_size``."""
        if start < 0 or (end is not None and end < start) or chunk_size < 1:
            raise InvalidInput(f"invalid byte range [{start}, {end}) or chunk size {chunk_size}")
        entry = self._objects.get(key)
        if entry is None:
            raise LogNotFound(f"no object {key!r} in {self.url}")
        # The bytes object is immutable: a concurrent write or delete does not
        # change what this read sees (like a GET already in flight).
        data = entry[0]
        stop = len(data) if end is None else min(end, len(data))
        for position in range(start, stop, chunk_size):
            yield data[position : min(position + chunk_size, stop)]
            # a remote read yields to the loop between chunks; so does the fake
            await asyncio.sleep(0)

    async def write(self, key: str, data: bytes | Path | AsyncIterable[bytes]) -> ObjectInfo:
        """Store ``data`` at ``key`` (replacing it); readers see old or new, never a part."""
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
        elif isinstance(data, Path):
            try:
                body = await asyncio.to_thread(data.read_bytes)
            except OSError as exc:
                raise StorageError(f"cannot write {key!r} from {data}: {exc}") from exc
        else:
            body = b"".join([block async for block in data])
        modified = datetime.now(UTC)
        self._objects[key] = (body, modified)
        return ObjectInfo(key=key, size=len(body), modified=modified)

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is fine."""
        self._objects.pop(key, None)
