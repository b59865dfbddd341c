"""Measured versions of the two storage seams, wrapped around the real ones in ``app.py``.

* :class:`MeteredFileOps` -- the write path's system calls (``eventlog.files.FileOps``):
  fsync latency, bytes written, failed writes and fsyncs. Wrapping the seam
  measures exactly what the writer asks of the disk without a line in the
  writer, and a test (or a bad disk) swaps ``inner`` underneath.
* :class:`MeteredLogStore` -- any :class:`~runevents.logstore.base.LogStore`:
  latency and errors per backend (``file``, ``s3``, ``memory``) and operation.
  A missing object (``LogNotFound``) is an answer, not an error.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

from runevents import metrics
from runevents.eventlog.files import DEFAULT_OPS, FileOps
from runevents.exceptions import LogNotFound
from runevents.logstore.base import READ_CHUNK, LogStore, ObjectInfo


class MeteredFileOps(FileOps):
    """``FileOps`` that report to :mod:`runevents.metrics`, delegating to ``inner``."""

    def __init__(self, inner: FileOps = DEFAULT_OPS) -> None:
        #: the real system calls (a test may put a failing one here)
        self.inner = inner

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        try:
            written = self.inner.pwrite(fd, data, offset)
        except OSError:
            metrics.write_failed("write")
            raise
        metrics.bytes_written(written)
        return written

    def ftruncate(self, fd: int, length: int) -> None:
        self.inner.ftruncate(fd, length)

    def fsync(self, fd: int) -> None:
        start = time.perf_counter()
        try:
            self.inner.fsync(fd)
        except OSError:
            metrics.write_failed("fsync")
            raise
        metrics.fsync_observed(time.perf_counter() - start)


def backend_of(url: str) -> str:
    """``file``, ``s3``, ``memory``: the label of a store URL."""
    return url.split("://", 1)[0] if "://" in url else "file"


class MeteredLogStore:
    """A LogStore that times every operation of ``inner`` (same protocol, same errors)."""

    def __init__(self, inner: LogStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.backend = backend_of(inner.url)

    def _observe(self, operation: str, start: float, error: BaseException | None) -> None:
        failed = error is not None and not isinstance(error, LogNotFound)
        metrics.logstore_observed(
            self.backend, operation, time.perf_counter() - start, failed=failed
        )

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            async for info in self.inner.list(prefix):
                yield info
        except Exception as exc:
            error = exc
            raise
        finally:
            # an abandoned listing (GeneratorExit) is the caller's choice, not an error
            self._observe("list", start, error)

    async def stat(self, key: str) -> ObjectInfo:
        start = time.perf_counter()
        try:
            info = await self.inner.stat(key)
        except Exception as exc:
            self._observe("stat", start, exc)
            raise
        self._observe("stat", start, None)
        return info

    async def read(
        self, key: str, start: int = 0, end: int | None = None, *, chunk_size: int = READ_CHUNK
    ) -> AsyncIterator[bytes]:
        began = time.perf_counter()
        observed = False
        try:
            async for data in self.inner.read(key, start, end, chunk_size=chunk_size):
                if not observed:
                    # latency to the first byte: the rest is paced by the reader
                    observed = True
                    self._observe("read", began, None)
                yield data
        except Exception as exc:
            if not observed:
                observed = True
                self._observe("read", began, exc)
            elif not isinstance(exc, LogNotFound):
                metrics.logstore_failed(self.backend, "read")
            raise
        finally:
            if not observed:
                self._observe("read", began, None)  # an empty range

    async def write(self, key: str, data: bytes | Path | AsyncIterable[bytes]) -> ObjectInfo:
        start = time.perf_counter()
        try:
            info = await self.inner.write(key, data)
        except Exception as exc:
            self._observe("write", start, exc)
            raise
        self._observe("write", start, None)
        return info

    async def delete(self, key: str) -> None:
        start = time.perf_counter()
        try:
            await self.inner.delete(key)
        except Exception as exc:
            self._observe("delete", start, exc)
            raise
        self._observe("delete", start, None)

    def local_path(self, key: str) -> Path | None:
        return self.inner.local_path(key)

    def __getattr__(self, name: str) -> Any:
        # backend extras (closing an S3 client, test helpers) pass through
        return getattr(self.inner, name)
