"""Backend-specific behaviour of the local-disk store (the shared contract is in tests/contract)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runevents.exceptions import InvalidInput, LogNotFound, StorageError
from runevents.logstore import open_log_store
from runevents.logstore.local import TEMP_PREFIX, LocalLogStore

KEY = "workspaces/acme/runs/run_01JABCDEFGHJKMNPQRSTVWXYZ0/logs/events.ndjson"


def test_from_url_roots_the_store_at_the_path(tmp_path: Path) -> None:
    store = LocalLogStore.from_url(tmp_path.as_uri())
    assert store.root == tmp_path.resolve()
    assert store.local_path(KEY) == tmp_path / KEY
    assert LocalLogStore.from_url(f"file://localhost{tmp_path}").root == tmp_path.resolve()
    assert store.url == tmp_path.resolve().as_uri()


@pytest.mark.parametrize(
    "url", ["file://otherhost/tmp/x", "file:relative/path", "file:///tmp/x?q=1", "http://x/y"]
)
def test_from_url_rejects_what_is_not_a_local_absolute_path(url: str) -> None:
    with pytest.raises(InvalidInput):
        LocalLogStore.from_url(url)


def test_from_url_takes_no_options(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no options"):
        LocalLogStore.from_url(tmp_path.as_uri(), region="x")


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "a/../../etc", "a//b", "./a", "a/./b", "a\\b", "a\x00b", "a/"]
)
async def test_keys_that_could_leave_the_root_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalLogStore(tmp_path)
    with pytest.raises(InvalidInput):
        store.local_path(key)
    with pytest.raises(InvalidInput):
        await store.write(key, b"x")


async def test_write_is_atomic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = LocalLogStore(tmp_path)
    await store.write(KEY, b"old")
    await store.write(KEY, b"new")
    assert (tmp_path / KEY).read_bytes() == b"new"
    assert [p.name for p in (tmp_path / KEY).parent.iterdir()] == ["events.ndjson"]


async def test_a_failing_stream_leaves_the_old_object_and_no_temp(tmp_path: Path) -> None:
    store = LocalLogStore(tmp_path)
    await store.write(KEY, b"old")

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError):
        await store.write(KEY, broken())
    assert (tmp_path / KEY).read_bytes() == b"old"
    assert not [p for p in (tmp_path / KEY).parent.iterdir() if p.name.startswith(TEMP_PREFIX)]


async def test_copying_a_missing_file_is_a_storage_error(tmp_path: Path) -> None:
    store = LocalLogStore(tmp_path)
    with pytest.raises(StorageError):
        await store.write(KEY, tmp_path / "nope")


async def test_list_skips_temp_files_and_walks_nested_dirs_in_key_order(tmp_path: Path) -> None:
    store = LocalLogStore(tmp_path)
    for key in ["b/x", "a/z/1", "a/y", "a/z/0", "ab"]:
        await store.write(key, key.encode())
    (tmp_path / "a" / f"{TEMP_PREFIX}half").write_bytes(b"?")
    keys = [info.key async for info in store.list("a")]
    assert keys == ["a/y", "a/z/0", "a/z/1", "ab"]
    assert [info.key async for info in store.list("a/z/")] == ["a/z/0", "a/z/1"]
    assert [info.key async for info in store.list("missing/dir/")] == []


async def test_a_read_sees_appends_made_before_it_started(tmp_path: Path) -> None:
    store = LocalLogStore(tmp_path)
    await store.write(KEY, b"one\n")
    with (tmp_path / KEY).open("ab") as f:
        f.write(b"two\n")
    data = b"".join([b async for b in store.read(KEY, chunk_size=3)])
    assert data == b"one\ntwo\n"


async def test_delete_removes_directories_it_leaves_empty(tmp_path: Path) -> None:
    store = LocalLogStore(tmp_path)
    await store.write(KEY, b"x")
    await store.write("workspaces/acme/keep", b"y")
    await store.delete(KEY)
    assert not (tmp_path / "workspaces" / "acme" / "runs").exists()
    assert (tmp_path / "workspaces" / "acme" / "keep").exists()
    assert tmp_path.exists()


async def test_open_log_store_picks_the_local_backend(tmp_path: Path) -> None:
    store = open_log_store(tmp_path.as_uri())
    assert isinstance(store, LocalLogStore)
    assert store.local_path("k") == tmp_path / "k"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
async def test_permission_errors_are_storage_errors(tmp_path: Path) -> None:
    store = LocalLogStore(tmp_path)
    await store.write(KEY, b"x")
    locked = (tmp_path / KEY).parent
    locked.chmod(0o500)
    try:
        with pytest.raises(StorageError):
            await store.write(KEY, b"y")
    finally:
        locked.chmod(0o700)


async def test_regression_a_directory_of_keys_was_stat_as_an_object(tmp_path: Path) -> None:
    store = LocalLogStore(tmp_path)
    await store.write("dir/sub/key", b"x")
    for key in ("dir", "dir/sub"):
        with pytest.raises(LogNotFound):
            await store.stat(key)
        with pytest.raises(LogNotFound):
            await anext(aiter(store.read(key)))
        await store.delete(key)  # no object there: nothing to do
    assert (tmp_path / "dir" / "sub" / "key").exists()
