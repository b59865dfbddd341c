"""The log storage seam: a small protocol of raw object operations.

Modelled on litestream's ``ReplicaClient``: backends only store and fetch
whole objects (and byte ranges of them). Policy -- when to seal a live log,
compaction, retention, tailing -- lives above, in ``eventlog`` and the
manager. Keys are ``/``-separated relative paths built only by
``logstore.paths``; a backend never invents or interprets them.

Live appends are not part of this seam: a run's log is appended on the local
disk of the process that holds the run's writer (the *spool*); for the local
backend the spool file *is* the stored object (``local_path`` returns it), for
remote backends the finished log is uploaded whole with :meth:`LogStore.write`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

#: default read chunk size for streaming reads (bytes)
READ_CHUNK = 256 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object."""

    key: str
    size: int
    modified: datetime


@runtime_checkable
class LogStore(Protocol):
    """Raw object storage for event logs and their sidecars."""

    #: the URL this store was opened from (file:///..., s3://bucket/prefix, memory://)
    url: str

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, in key order.

        A prefix with no objects yields nothing (never raises LogNotFound).
        Raises StorageError when the backend cannot be reached.
        """
        ...

    async def stat(self, key: str) -> ObjectInfo:
        """Return the object's info. Raises LogNotFound if it does not exist."""
        ...

    def read(
        self, key: str, start: int = 0, end: int | None = None, *, chunk_size: int = READ_CHUNK
    ) -> AsyncIterator[bytes]:
        """Yield the bytes ``[start, end)`` of the object in chunks of at most ``chunk_size``.

        ``end=None`` means to the end of the object as it is when the read starts.
        Raises LogNotFound (on the first iteration) if the object does not exist;
        StorageError on other backend failures. Never yields an empty chunk.
        """
        ...

    async def write(self, key: str, data: bytes | Path | AsyncIterable[bytes]) -> ObjectInfo:
        """Store a whole object atomically: readers see the old object or the new one, never a part.

        ``data`` may be bytes, a local file to copy, or an async byte stream.
        Local: temp file in the same directory, fsync, rename, fsync the directory.
        Overwrites an existing object. Raises StorageError on failure, leaving no partial object.
        """
        ...

    async def delete(self, key: str) -> None:
        """Delete the object. Deleting a missing object is not an error (idempotent)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The local file that holds ``key`` if this backend is the local disk, else None.

        Used by the writer to append live logs in place and by readers to use the page cache.
        """
        ...
