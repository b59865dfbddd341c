"""The local-disk backend: keys are files under a root directory.

For this backend the spool *is* the store: :meth:`LocalLogStore.local_path`
returns the file of a key, and the event log engine appends live logs there
in place. Whole-object writes are atomic (temp file in the same directory,
fsync, rename, fsync the directory).

Blocking calls: small reads (``pread`` of at most one chunk, served by the page
cache in the common case) run inline, because a thread hop costs more than the
read; directory walks and whole-object writes, which can take long, run in a
worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from runevents.exceptions import InvalidInput, LogNotFound, StorageError
from runevents.logstore.base import READ_CHUNK, ObjectInfo

#: prefix of the temp files of atomic writes; never listed
TEMP_PREFIX = ".tmp-"


def _check_key(key: str) -> str:
    """Refuse keys that could leave the root (they are built by ``paths``; this is a backstop)."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(p in {"", ".", ".."} for p in parts)
    ):
        raise InvalidInput(f"invalid storage key {key!r}")
    return key


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key=key, size=st.st_size, modified=datetime.fromtimestamp(st.st_mtime, UTC))


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or unlink in it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalLogStore:
    """Objects as files under ``root`` (``file:///path``)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> LocalLogStore:
        """``file:///abs/path`` (or ``file://localhost/abs/path``) -> a store rooted there."""
        if kwargs:
            raise InvalidInput(f"file:// storage takes no options (got {sorted(kwargs)})")
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in {"", "localhost"}:
            raise InvalidInput(f"invalid file storage URL {url!r}: use file:///absolute/path")
        path = unquote(parts.path)
        if not path.startswith("/") or parts.query or parts.fragment:
            raise InvalidInput(f"invalid file storage URL {url!r}: use file:///absolute/path")
        return cls(Path(path))

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def local_path(self, key: str) -> Path | None:
        """The file that holds ``key``."""
        return self._path(key)

    # ------------------------------------------------------------------ listing
    def _walk(self, prefix: str) -> list[tuple[str, os.stat_result]]:
        # The prefix may end inside a name ("…/logs/events"): walk from the
        # deepest directory it names, then filter by the full prefix.
        base_dir = prefix.rpartition("/")[0]
        if base_dir:
            _check_key(base_dir)
        start = self.root / base_dir if base_dir else self.root
        found: list[tuple[str, os.stat_result]] = []
        stack = [(start, base_dir + "/" if base_dir else "")]
        while stack:
            directory, rel = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                key = rel + entry.name
                if entry.name.startswith(TEMP_PREFIX):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if key.startswith(prefix) or prefix.startswith(key + "/"):
                        stack.append((Path(entry.path), key + "/"))
                elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        found.append((key, entry.stat(follow_symlinks=False)))
        found.sort(key=lambda item: item[0])
        return found

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every file whose key starts with ``prefix``, in key order (temp files excluded)."""
        try:
            found = await asyncio.to_thread(self._walk, prefix)
        except OSError as exc:
            raise StorageError(f"cannot list {prefix!r} under {self.root}: {exc}") from exc
        for key, st in found:
            yield _info(key, st)

    async def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key`` (LogNotFound if missing)."""
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise LogNotFound(f"no object {key!r} in {self.url}") from exc
        except OSError as exc:
            raise StorageError(f"cannot stat {key!r}: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            # a directory of keys is not an object (object stores have no directories)
            raise LogNotFound(f"no object {key!r} in {self.url}")
        return _info(key, st)

    # ------------------------------------------------------------------ reading
    async def read(
        self, key: str, start: int = 0, end: int | None = None, *, chunk_size: int = READ_CHUNK
    ) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of ``key`` in chunks of at most ``chunk_size``."""
        if start < 0 or (end is not None and end < start) or chunk_size < 1:
            raise InvalidInput(f"invalid byte range [{start}, {end}) or chunk size {chunk_size}")
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise LogNotFound(f"no object {key!r} in {self.url}") from exc
        except OSError as exc:
            raise StorageError(f"cannot open {key!r}: {exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise LogNotFound(f"no object {key!r} in {self.url}")
            stop = st.st_size if end is None else end
            position = start
            while position < stop:
                try:
                    data = os.pread(fd, min(chunk_size, stop - position), position)
                except OSError as exc:
                    raise StorageError(f"cannot read {key!r}: {exc}") from exc
                if not data:
                    break
                position += len(data)
                yield data
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ writing
    async def write(self, key: str, data: bytes | Path | AsyncIterable[bytes]) -> ObjectInfo:
        """Store ``data`` at ``key`` atomically (temp file, fsync, rename, fsync the directory)."""
        path = self._path(key)
        temp = path.with_name(f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}")
        try:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                if isinstance(data, bytes | bytearray | memoryview):
                    await asyncio.to_thread(_write_all, fd, bytes(data))
                elif isinstance(data, Path):
                    await asyncio.to_thread(_copy_file, data, fd)
                else:
                    async for block in data:
                        _write_all(fd, block)
                await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
            await asyncio.to_thread(fsync_dir, path.parent)
            return _info(key, path.stat())
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise StorageError(f"cannot write {key!r}: {exc}") from exc
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    async def delete(self, key: str) -> None:
        """Remove ``key`` (missing is fine) and the directories it leaves empty."""
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return  # no object there (a directory of keys is not one)
        except OSError as exc:
            raise StorageError(f"cannot delete {key!r}: {exc}") from exc
        # Retention deletes many runs: do not leave a skeleton of empty dirs.
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        # the unlink (or the last rmdir) is durable only once its directory is synced:
        # a crash must not bring a dropped plain log back beside its compressed form
        with contextlib.suppress(OSError):
            await asyncio.to_thread(fsync_dir, parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _copy_file(source: Path, fd: int) -> None:
    with source.open("rb") as f:
        while block := f.read(1 << 20):
            _write_all(fd, block)
