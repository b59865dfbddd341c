"""Backend-specific behaviour of the in-process fake store (``memory://``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runevents.exceptions import InvalidInput, StorageError
from runevents.logstore import open_log_store
from runevents.logstore.memory import MemoryLogStore


def test_it_is_remote_so_the_engine_spools() -> None:
    assert MemoryLogStore().local_path("anything") is None


def test_bare_urls_are_private_and_named_urls_are_shared() -> None:
    assert open_log_store("memory://") is not open_log_store("memory://")
    shared = open_log_store("memory://test-memory-shared")
    assert open_log_store("memory://test-memory-shared") is shared
    assert shared.url == "memory://test-memory-shared"


@pytest.mark.parametrize("url", ["memory://name/path", "memory://x?y=1", "mem://x"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        MemoryLogStore.from_url(url)


async def test_a_read_in_flight_keeps_seeing_the_object_it_started_on() -> None:
    store = MemoryLogStore()
    await store.write("k", b"a" * 10)
    reader = store.read("k", chunk_size=4)
    first = await reader.__anext__()
    await store.write("k", b"b" * 10)
    await store.delete("k")
    rest = [block async for block in reader]
    assert first + b"".join(rest) == b"a" * 10


async def test_writes_from_files_and_streams(tmp_path: Path) -> None:
    store = MemoryLogStore()
    source = tmp_path / "f"
    source.write_bytes(b"from file")
    await store.write("f", source)

    async def stream() -> AsyncIterator[bytes]:
        yield b"from "
        yield b"stream"

    await store.write("s", stream())
    assert b"".join([b async for b in store.read("f")]) == b"from file"
    assert b"".join([b async for b in store.read("s")]) == b"from stream"
    with pytest.raises(StorageError):
        await store.write("x", tmp_path / "missing")
