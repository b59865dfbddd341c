"""The LogStore contract (``runevents.logstore.base``), run over every backend.

One suite, three backends: ``memory``, ``local`` (a tmp dir) and ``s3``
(SeaweedFS, marked ``s3``; each test gets its own key prefix in the session's
bucket). A backend passes only if every docstring promise of the protocol
holds: key-ordered listing by string prefix, LogNotFound for missing keys,
ranged and chunked reads, atomic whole-object writes from bytes / a file / an
async stream, idempotent delete.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from runevents.exceptions import InvalidInput, LogNotFound
from runevents.ids import new_run_id
from runevents.logstore import LogStore, ObjectInfo, open_log_store
from runevents.logstore.base import READ_CHUNK
from runevents.logstore.paths import log_key, run_prefix
from tests.fixtures.s3 import seaweedfs  # noqa: F401  (until conftest registers tests.fixtures.s3)

MiB = 1024 * 1024
#: every character an id may hold (contract section 1), starting with an alphanumeric
ALL_ID_CHARS = "a" + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"

BACKENDS = ["memory", "local", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.fixture(params=BACKENDS)
def log_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogStore]:
    """A fresh, empty store of each backend."""
    kind = request.param
    if kind == "memory":
        yield open_log_store("memory://")
    elif kind == "local":
        yield open_log_store((tmp_path / "store").as_uri())
    else:
        server = request.getfixturevalue("seaweedfs")
        # a prefix of its own per test: the bucket is shared by the session
        yield open_log_store(server.url(f"contract/{uuid.uuid4().hex}"), **server.store_kwargs())


# -- helpers --------------------------------------------------------------------


async def read_all(
    store: LogStore, key: str, start: int = 0, end: int | None = None, **kw: Any
) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start, end, **kw)])


async def list_keys(store: LogStore, prefix: str) -> list[str]:
    return [info.key async for info in store.list(prefix)]


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (a misplaced range shows)."""
    return random.Random(seed).randbytes(size)


async def agen(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        await asyncio.sleep(0)
        yield piece


class Boom(Exception):
    """The producer of a write's data stream failed."""


async def failing_stream(before: int, piece: int = MiB) -> AsyncIterator[bytes]:
    """Yield ``before`` bytes, then raise Boom."""
    sent = 0
    while sent < before:
        n = min(piece, before - sent)
        yield pattern(n, seed=sent)
        sent += n
    raise Boom("producer died")


# -- list ---------------------------------------------------------------------------


async def test_list_of_empty_store_and_unknown_prefix_yields_nothing(log_store: LogStore) -> None:
    assert await list_keys(log_store, "") == []
    assert await list_keys(log_store, "workspaces/") == []
    assert await list_keys(log_store, "no/such/prefix/") == []


async def test_list_is_in_key_order_with_string_prefix_semantics(log_store: LogStore) -> None:
    # "-" and "." sort before "/": a store that walks directories ("k/a/..."
    # before "k/a-d") lists out of key order
    keys = ["k/a/x", "k/a.c", "k/a-d", "k/a_e", "k/aZ", "k/a0", "k/b", "k/a/y/z", "other"]
    for key in reversed(keys):
        await log_store.write(key, key.encode())
    assert await list_keys(log_store, "") == sorted(keys)
    assert await list_keys(log_store, "k/") == sorted(k for k in keys if k.startswith("k/"))
    # a prefix that ends inside a name matches by string, not by path segment
    assert await list_keys(log_store, "k/a") == sorted(k for k in keys if k.startswith("k/a"))
    assert await list_keys(log_store, "k/a.") == ["k/a.c"]
    assert await list_keys(log_store, "k/a/") == ["k/a/x", "k/a/y/z"]
    assert await list_keys(log_store, "k/a/x") == ["k/a/x"]
    assert await list_keys(log_store, "k/c") == []


async def test_list_reports_size_and_aware_modified_time(log_store: LogStore) -> None:
    await log_store.write("d/one", b"12345")
    await log_store.write("d/empty", b"")
    infos = [info async for info in log_store.list("d/")]
    assert [(i.key, i.size) for i in infos] == [("d/empty", 0), ("d/one", 5)]
    for info in infos:
        assert isinstance(info, ObjectInfo)
        assert isinstance(info.modified, datetime)
        assert info.modified.utcoffset() is not None


async def test_list_does_not_show_deleted_or_failed_objects(log_store: LogStore) -> None:
    await log_store.write("p/keep", b"1")
    await log_store.write("p/gone", b"2")
    await log_store.delete("p/gone")
    with pytest.raises(Boom):
        await log_store.write("p/failed", failing_stream(1000))
    assert await list_keys(log_store, "p/") == ["p/keep"]


# -- stat -----------------------------------------------------------------------------


async def test_stat_of_missing_key_raises_log_not_found(log_store: LogStore) -> None:
    with pytest.raises(LogNotFound):
        await log_store.stat("missing/key")
    await log_store.write("present/key", b"x")
    with pytest.raises(LogNotFound):
        await log_store.stat("present/ke")  # a key prefix is not a key


async def test_a_directory_of_keys_is_not_an_object(log_store: LogStore) -> None:
    # file systems and SeaweedFS have real directories; they must not leak out as objects
    await log_store.write("dir/sub/key", b"x")
    for key in ("dir", "dir/sub"):
        with pytest.raises(LogNotFound):
            await log_store.stat(key)
        with pytest.raises(LogNotFound):
            await read_all(log_store, key)
    assert await list_keys(log_store, "dir") == ["dir/sub/key"]
    assert await list_keys(log_store, "") == ["dir/sub/key"]
    await log_store.delete("dir/sub/key")
    assert await list_keys(log_store, "") == []


async def test_write_returns_what_stat_reports(log_store: LogStore) -> None:
    info = await log_store.write("s/key", b"hello world")
    assert (info.key, info.size) == ("s/key", 11)
    assert info.modified.utcoffset() is not None
    stat = await log_store.stat("s/key")
    assert (stat.key, stat.size) == ("s/key", 11)


# -- read ---------------------------------------------------------------------------------

DATA_SIZE = 10_000


@pytest.mark.parametrize(
    ("start", "end", "chunk_size"),
    [
        (0, None, READ_CHUNK),
        (0, None, 1000),  # size is a multiple of the chunk size
        (0, None, 3),  # ... and not
        (17, 4321, 100),
        (0, 1, 64),
        (9_999, None, 7),  # the last byte
        (5_000, 99_999, 256),  # end past EOF: up to EOF
        (0, DATA_SIZE, 4096),
        (1234, 1234, 10),  # empty range
        (DATA_SIZE, None, 10),  # start == size: nothing
        (DATA_SIZE, DATA_SIZE + 50, 10),
        (DATA_SIZE + 100, None, 10),  # start past EOF: nothing
    ],
)
async def test_ranged_read(
    log_store: LogStore, start: int, end: int | None, chunk_size: int
) -> None:
    data = pattern(DATA_SIZE)
    await log_store.write("r/key", data)
    chunks = [c async for c in log_store.read("r/key", start, end, chunk_size=chunk_size)]
    assert b"".join(chunks) == data[start:end]
    assert all(0 < len(c) <= chunk_size for c in chunks), "chunks must be non-empty, <= chunk_size"
    assert all(isinstance(c, bytes) for c in chunks)


async def test_read_of_missing_key_raises_on_first_iteration(log_store: LogStore) -> None:
    for start, end in [(0, None), (10, 20), (0, 0)]:
        reader = log_store.read("missing/key", start, end)  # creating the iterator does not raise
        with pytest.raises(LogNotFound):
            await anext(aiter(reader))


async def test_read_of_empty_object_yields_nothing(log_store: LogStore) -> None:
    await log_store.write("e/empty", b"")
    assert [c async for c in log_store.read("e/empty")] == []
    assert [c async for c in log_store.read("e/empty", 0, 10)] == []
    assert (await log_store.stat("e/empty")).size == 0


@pytest.mark.parametrize(
    ("start", "end", "chunk_size"), [(-1, None, 10), (10, 5, 10), (0, None, 0)]
)
async def test_read_rejects_invalid_range(
    log_store: LogStore, start: int, end: int | None, chunk_size: int
) -> None:
    await log_store.write("i/key", b"0123456789abcdef")
    with pytest.raises(InvalidInput):
        await read_all(log_store, "i/key", start, end, chunk_size=chunk_size)


async def test_read_can_stop_early(log_store: LogStore) -> None:
    data = pattern(3 * MiB)
    await log_store.write("early/key", data)
    reader = log_store.read("early/key", chunk_size=64 * 1024)
    first = await anext(aiter(reader))
    await reader.aclose()  # type: ignore[attr-defined]
    assert first == data[: len(first)]
    # the store is still usable after an abandoned read
    assert await read_all(log_store, "early/key", 100, 200) == data[100:200]


# -- write ----------------------------------------------------------------------------------


async def test_write_from_bytes_path_and_stream(log_store: LogStore, tmp_path: Path) -> None:
    data = pattern(70_000, seed=1)
    source = tmp_path / "source.ndjson"
    source.write_bytes(data)

    by_bytes = await log_store.write("w/bytes", data)
    by_path = await log_store.write("w/path", source)
    by_stream = await log_store.write(
        "w/stream", agen(data[:10], b"", data[10:50_000], data[50_000:])
    )
    by_bytearray = await log_store.write("w/bytearray", bytearray(data))

    for info in (by_bytes, by_path, by_stream, by_bytearray):
        assert info.size == len(data)
        assert await read_all(log_store, info.key) == data
        assert (await log_store.stat(info.key)).size == len(data)
    assert source.read_bytes() == data  # the source file is left alone


async def test_write_from_empty_stream_and_empty_file(log_store: LogStore, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert (await log_store.write("w/empty-stream", agen())).size == 0
    assert (await log_store.write("w/empty-file", empty)).size == 0
    assert await read_all(log_store, "w/empty-stream") == b""
    assert (await log_store.stat("w/empty-file")).size == 0


async def test_overwrite_replaces_the_whole_object(log_store: LogStore) -> None:
    await log_store.write("o/key", pattern(5000, seed=1))
    await log_store.write("o/key", b"short")
    assert await read_all(log_store, "o/key") == b"short"
    assert (await log_store.stat("o/key")).size == 5
    await log_store.write("o/key", agen(b"longer ", b"again"))
    assert await read_all(log_store, "o/key") == b"longer again"
    assert await list_keys(log_store, "o/") == ["o/key"]


@pytest.mark.parametrize("fail_after", [0, 1000, 9 * MiB], ids=["at-once", "small", "multipart"])
async def test_failed_stream_write_leaves_old_object(log_store: LogStore, fail_after: int) -> None:
    # 9 MiB is past one multipart part (S3): the upload must be aborted, not completed
    old = pattern(2000, seed=7)
    await log_store.write("a/key", old)
    with pytest.raises(Boom):
        await log_store.write("a/key", failing_stream(fail_after))
    assert await read_all(log_store, "a/key") == old
    assert (await log_store.stat("a/key")).size == len(old)
    assert await list_keys(log_store, "a/") == ["a/key"]


@pytest.mark.parametrize("fail_after", [0, 1000, 9 * MiB], ids=["at-once", "small", "multipart"])
async def test_failed_stream_write_leaves_no_object(log_store: LogStore, fail_after: int) -> None:
    with pytest.raises(Boom):
        await log_store.write("n/key", failing_stream(fail_after))
    with pytest.raises(LogNotFound):
        await log_store.stat("n/key")
    assert await list_keys(log_store, "") == []


async def test_concurrent_writes_to_different_keys(log_store: LogStore) -> None:
    payloads = {f"c/{i:02d}": pattern(1000 * i + 1, seed=i) for i in range(16)}
    infos = await asyncio.gather(*(log_store.write(k, v) for k, v in payloads.items()))
    assert [i.size for i in infos] == [len(v) for v in payloads.values()]
    assert await list_keys(log_store, "c/") == sorted(payloads)
    contents = await asyncio.gather(*(read_all(log_store, k) for k in payloads))
    assert contents == list(payloads.values())


# -- delete -------------------------------------------------------------------------------


async def test_delete_is_idempotent(log_store: LogStore) -> None:
    await log_store.delete("never/existed")
    await log_store.write("x/key", b"data")
    await log_store.write("x/sibling", b"stays")
    await log_store.delete("x/key")
    with pytest.raises(LogNotFound):
        await log_store.stat("x/key")
    with pytest.raises(LogNotFound):
        await read_all(log_store, "x/key")
    await log_store.delete("x/key")
    assert await list_keys(log_store, "") == ["x/sibling"]
    # a deleted key can be written again
    await log_store.write("x/key", b"again")
    assert await read_all(log_store, "x/key") == b"again"


# -- keys -----------------------------------------------------------------------------------


async def test_keys_with_every_allowed_id_character(log_store: LogStore) -> None:
    run_id = new_run_id()
    workspaces = [ALL_ID_CHARS, "acme", "acme-2", "acme.x", "acme_y", "acme0", "Acme", "a" * 128]
    for ws in workspaces:
        key = log_key(ws, run_id)
        await log_store.write(key, ws.encode())
    listed = await list_keys(log_store, "workspaces/")
    assert listed == sorted(log_key(ws, run_id) for ws in workspaces)
    for ws in workspaces:
        key = log_key(ws, run_id)
        assert await list_keys(log_store, run_prefix(ws, run_id)) == [key]
        assert (await log_store.stat(key)).size == len(ws)
        assert await read_all(log_store, key) == ws.encode()
        await log_store.delete(key)
    assert await list_keys(log_store, "workspaces/") == []


# -- local_path and url ------------------------------------------------------------------


async def test_local_path_is_the_object_or_none(log_store: LogStore) -> None:
    await log_store.write("lp/key", b"content")
    path = log_store.local_path("lp/key")
    if path is not None:
        assert path.read_bytes() == b"content"
    assert isinstance(log_store.url, str)
    assert log_store.url.split("://")[0] in {"file", "memory", "s3"}


# -- big objects -----------------------------------------------------------------------------

BIG = 20 * MiB


async def big_stream(size: int, piece: int = MiB) -> AsyncIterator[bytes]:
    block = pattern(piece, seed=99)
    for offset in range(0, size, piece):
        yield block[: min(piece, size - offset)]


async def test_big_object_streams_in_bounded_memory(log_store: LogStore, tmp_path: Path) -> None:
    expected = hashlib.sha256()
    block = pattern(MiB, seed=99)
    for _ in range(BIG // MiB):
        expected.update(block)
    info = await log_store.write("big/stream", big_stream(BIG))
    assert info.size == BIG

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        total = 0
        async for chunk in log_store.read("big/stream"):
            assert 0 < len(chunk) <= READ_CHUNK
            digest.update(chunk)
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == BIG
    assert digest.hexdigest() == expected.hexdigest()
    # a few chunks in flight at most, never the object (20 MiB)
    assert peak < 4 * MiB, f"read peak {peak / MiB:.1f} MiB"

    # a ranged read in the middle of the big object
    middle = await read_all(log_store, "big/stream", 7 * MiB + 3, 9 * MiB + 11)
    assert len(middle) == 2 * MiB + 8
    assert middle == (block * 10)[7 * MiB + 3 : 9 * MiB + 11]


async def test_big_object_from_file(log_store: LogStore, tmp_path: Path) -> None:
    source = tmp_path / "big.ndjson"
    block = pattern(MiB, seed=5)
    with source.open("wb") as f:
        for _ in range(BIG // MiB):
            f.write(block)
    info = await log_store.write("big/file", source)
    assert info.size == BIG
    assert (await log_store.stat("big/file")).size == BIG
    tail = await read_all(log_store, "big/file", BIG - 100)
    assert tail == block[-100:]
