"""metered.py: the measured storage seams count what the real ones did, and change nothing else."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from runevents import metrics
from runevents.eventlog.files import FileOps
from runevents.exceptions import LogNotFound, StorageError
from runevents.logstore.memory import MemoryLogStore
from runevents.metered import MeteredFileOps, MeteredLogStore, backend_of
from tests.fixtures.metrics import parse, value


class FullDisk(FileOps):
    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def fsync(self, fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")


def _moved(before: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return value(parse(metrics.render()), name, **labels) - value(before, name, **labels)


def test_file_ops_count_bytes_fsyncs_and_failures(tmp_path: Path) -> None:
    ops = MeteredFileOps()
    fd = os.open(tmp_path / "log", os.O_RDWR | os.O_CREAT)
    try:
        before = parse(metrics.render())
        assert ops.pwrite(fd, b"0123456789", 0) == 10
        ops.fsync(fd)
        assert _moved(before, "runevents_bytes_appended_total") == 10
        assert _moved(before, "runevents_fsync_seconds_count") == 1
        ops.inner = FullDisk()  # the disk goes bad underneath
        with pytest.raises(OSError):
            ops.pwrite(fd, b"more", 10)
        with pytest.raises(OSError):
            ops.fsync(fd)
        assert _moved(before, "runevents_write_failures_total", operation="write") == 1
        assert _moved(before, "runevents_write_failures_total", operation="fsync") == 1
        assert _moved(before, "runevents_bytes_appended_total") == 10
        assert _moved(before, "runevents_fsync_seconds_count") == 1  # a failed fsync is no sample
    finally:
        os.close(fd)


class Unreachable(MemoryLogStore):
    async def write(self, key: str, data: object) -> object:  # type: ignore[override]
        raise StorageError("the bucket does not answer")


async def test_log_store_times_operations_and_counts_only_real_errors() -> None:
    store = MeteredLogStore(MemoryLogStore())
    assert store.backend == "memory"
    before = parse(metrics.render())
    await store.write("a/b", b"hello\n")
    assert (await store.stat("a/b")).size == 6
    assert b"".join([c async for c in store.read("a/b")]) == b"hello\n"
    assert [i.key async for i in store.list("a/")] == ["a/b"]
    with pytest.raises(LogNotFound):
        await store.stat("missing")
    with pytest.raises(LogNotFound):
        _ = [c async for c in store.read("missing")]
    await store.delete("a/b")
    name = "runevents_logstore_request_seconds_count"
    for op in ("write", "stat", "read", "list", "delete"):
        assert _moved(before, name, backend="memory", operation=op) >= 1, op
    # not found is an answer, not an error
    assert (
        _moved(before, "runevents_logstore_errors_total", backend="memory", operation="stat") == 0
    )
    assert (
        _moved(before, "runevents_logstore_errors_total", backend="memory", operation="read") == 0
    )

    broken = MeteredLogStore(Unreachable())
    with pytest.raises(StorageError):
        await broken.write("a/b", b"x")
    assert (
        _moved(before, "runevents_logstore_errors_total", backend="memory", operation="write") == 1
    )


def test_backend_label_is_the_url_scheme() -> None:
    assert backend_of("s3://bucket/prefix") == "s3"
    assert backend_of("file:///var/lib/runevents") == "file"
    assert backend_of("memory://x") == "memory"
