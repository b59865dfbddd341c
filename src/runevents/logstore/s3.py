"""S3 (and S3-compatible: SeaweedFS, MinIO, R2) log storage on top of obstore.

Objects live under ``s3://{bucket}/{prefix}/{key}``. obstore does the HTTP,
signing, retries and multipart uploads in Rust; this module adds what the
:class:`~runevents.logstore.base.LogStore` contract needs on top:

- **Errors**: "no such object" becomes :class:`LogNotFound`, anything else
  :class:`StorageError` with a short message (operation, ``s3://`` location,
  HTTP status / S3 error code, from ``s3_errors.py``). Messages never carry
  credentials.
- **Reads** are windowed ranged GETs: one window (``read_window`` bytes,
  default 8 MiB) is fetched whole while the previous one is handed out in
  ``chunk_size`` slices, so memory stays at about two windows for any object
  size, and a slow consumer never holds an HTTP response open (a response
  body kept open longer than the client timeout would fail mid-read). Every
  window after the first is conditional on the first one's ETag: if the
  object is replaced mid-read the reader gets StorageError instead of a
  splice of two objects.
- **Writes**: S3 PUT is atomic per object. Small payloads go in one PUT;
  bigger files and streams use a multipart upload, which S3 only makes visible
  on completion (obstore aborts it on failure), so a failed write leaves the
  old object or none.
- **Listing** is sorted client-side: S3 proper lists in key order, but
  SeaweedFS lists directory by directory (``a/b`` before ``a-c``), and the
  contract promises key order.

Configuration comes from the constructor; whatever is not given there obstore
takes from the usual ``AWS_*`` environment variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ...), which
is how the contract says S3 is configured.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError, PreconditionError
from obstore.store import S3Store

from runevents.exceptions import InvalidInput, LogNotFound, StorageError
from runevents.logstore.base import READ_CHUNK, ObjectInfo
from runevents.logstore.s3_errors import describe, first_line

if TYPE_CHECKING:
    from obstore import Bytes, GetResult, ObjectMeta

__all__ = ["S3LogStore"]

#: bytes fetched per ranged GET (a multiple of the read chunk size is used)
DEFAULT_READ_WINDOW = 8 * 1024 * 1024
#: multipart part size; payloads up to this size go in a single PUT
DEFAULT_PART_SIZE = 8 * 1024 * 1024
#: parts uploaded at once (memory: about part_size * max_concurrency)
DEFAULT_MAX_CONCURRENCY = 4
#: obstore's own default retries for 3 minutes; a log read behind an SSE
#: request should fail (503) well before a browser gives up on it
DEFAULT_RETRY: dict[str, Any] = {
    "max_retries": 3,
    "retry_timeout": timedelta(seconds=20),
    "backoff": {
        "init_backoff": timedelta(milliseconds=100),
        "max_backoff": timedelta(seconds=2),
        "base": 2,
    },
}


class _SourceFailed(Exception):
    """Internal: wraps an exception raised by the caller's data stream during a write."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        super().__init__(repr(original))


class S3LogStore:
    """Log storage in an S3 bucket (optionally under a key prefix), through obstore."""

    url: str

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        region: str | None = None,
        allow_http: bool | None = None,
        client_options: Mapping[str, Any] | None = None,
        retry_config: Mapping[str, Any] | None = None,
        read_window: int = DEFAULT_READ_WINDOW,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        """Open ``bucket`` (keys go under ``prefix``). No request is made here.

        Arguments left as None fall back to obstore's ``AWS_*`` environment
        variables. ``allow_http`` defaults to True exactly when the endpoint
        (``endpoint_url``, else ``AWS_ENDPOINT_URL``) is an ``http://`` URL (a
        loopback SeaweedFS/MinIO).
        """
        if not bucket or "/" in bucket:
            raise InvalidInput(f"invalid S3 bucket name {bucket!r}")
        if read_window < 1 or part_size < 5 * 1024 * 1024 or max_concurrency < 1:
            # S3 rejects multipart parts under 5 MiB (except the last)
            raise InvalidInput(
                "S3 read_window must be >= 1, part_size >= 5 MiB, max_concurrency >= 1"
            )
        prefix = prefix.strip("/")
        if any(part in {"", ".", ".."} for part in prefix.split("/")) and prefix:
            raise InvalidInput(f"invalid S3 key prefix {prefix!r}")
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url
        self._read_window = read_window
        self._part_size = part_size
        self._max_concurrency = max_concurrency

        config: dict[str, Any] = {}
        for name, value in (
            ("endpoint", endpoint_url),
            ("access_key_id", access_key_id),
            ("secret_access_key", secret_access_key),
            ("token", session_token),
            ("region", region),
        ):
            if value is not None:
                config[name] = value
        options: dict[str, Any] = dict(client_options or {})
        if allow_http is None:
            # contract 10: an http:// endpoint (argument or AWS_ENDPOINT_URL) works with no
            # further setting; AWS_ALLOW_HTTP still says so explicitly either way
            endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or ""
            allow_http = endpoint.startswith("http://")
        if allow_http:
            options.setdefault("allow_http", True)
        retry = dict(retry_config) if retry_config is not None else dict(DEFAULT_RETRY)
        try:
            self._store = S3Store(
                bucket,
                prefix=prefix or None,
                config=config,  # type: ignore[arg-type]
                client_options=options or None,  # type: ignore[arg-type]
                retry_config=retry,  # type: ignore[arg-type]
            )
        except BaseError as exc:
            # the message names the bad option, never its value
            raise InvalidInput(
                f"invalid S3 configuration for {self.url}: {first_line(exc)}"
            ) from exc

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> S3LogStore:
        """Open ``s3://bucket`` or ``s3://bucket/prefix``; ``kwargs`` go to the constructor.

        Credentials are never accepted in the URL (it ends up in logs and run
        rows): pass them as arguments or in the ``AWS_*`` environment.
        """
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise InvalidInput(f"not an s3:// URL: {parts.scheme}://...")
        if parts.username or parts.password or "@" in parts.netloc:
            raise InvalidInput("credentials in an s3:// URL are not accepted; use AWS_* variables")
        if parts.query or parts.fragment:
            raise InvalidInput("an s3:// storage URL takes no query or fragment")
        return cls(parts.hostname or "", parts.path, **kwargs)

    def __repr__(self) -> str:
        return f"S3LogStore({self.url!r}, endpoint={self.endpoint_url!r})"

    # -- LogStore ---------------------------------------------------------------

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix`` (a string prefix), in key order.

        Memory is proportional to the number of matching objects (the listing
        is sorted client-side, see the module docstring).
        """
        # obstore lists by whole path segments; list the enclosing "directory"
        # and filter by the string prefix, so "workspaces/ac" finds "workspaces/acme/...".
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        found: list[ObjectInfo] = []
        try:
            stream = obstore.list(self._store, directory or None, chunk_size=1000)
            async for page in stream:
                for meta in page:
                    key = meta["path"]
                    if key.startswith(prefix) and not key.endswith("/"):
                        found.append(_info(key, meta))
        except BaseError as exc:
            raise self._error("list", prefix, exc) from exc
        except OSError as exc:
            raise self._error("list", prefix, exc) from exc
        found.sort(key=lambda info: info.key)
        for info in found:
            yield info

    async def stat(self, key: str) -> ObjectInfo:
        """Return the object's info; LogNotFound if it does not exist."""
        _check_key(key)
        try:
            meta = await obstore.head_async(self._store, key)
        except FileNotFoundError as exc:
            raise LogNotFound(f"no log object at {self.url}/{key}") from exc
        except (BaseError, OSError) as exc:
            raise self._error("stat", key, exc) from exc
        return _info(key, meta)

    async def read(
        self, key: str, start: int = 0, end: int | None = None, *, chunk_size: int = READ_CHUNK
    ) -> AsyncIterator[bytes]:
        """Yield bytes ``[start, end)`` in chunks of at most ``chunk_size`` (windowed ranged GETs).

        LogNotFound on the first iteration if the object does not exist;
        StorageError on other failures, including the object being replaced
        while it is read.
        """
        _check_key(key)
        if start < 0 or (end is not None and end < start) or chunk_size < 1:
            raise InvalidInput(f"invalid byte range [{start}, {end}) or chunk size {chunk_size}")
        if end is not None and end == start:
            await self.stat(key)  # nothing to read, but a missing object is still an error
            return
        # a whole number of chunks per window: every chunk but the last is full
        window = max(1, self._read_window // chunk_size) * chunk_size

        first = await self._first_window(
            key, start, start + window if end is None else min(end, start + window)
        )
        if first is None:
            return  # start at or past the end of the object
        data, meta, got_end = first
        stop = meta["size"] if end is None else min(end, meta["size"])
        etag = meta["e_tag"]
        pos = got_end
        pending: asyncio.Future[Bytes] | None = None
        expected = 0
        try:
            while True:
                if pos < stop:
                    # fetch the next window while this one is handed out
                    upto = min(pos + window, stop)
                    pending = asyncio.ensure_future(self._window(key, pos, upto, etag))
                    expected = upto - pos
                    pos = upto
                view = memoryview(data)
                for offset in range(0, len(view), chunk_size):
                    yield view[offset : offset + chunk_size].tobytes()
                view.release()
                if pending is None:
                    return
                data = await pending
                pending = None
                if len(data) != expected:
                    # same ETag, different length: never hand out a gap silently
                    raise StorageError(
                        f"S3 read of {self.url}/{key} got {len(data)} bytes, expected {expected}"
                    )
        finally:
            if pending is not None:
                # the consumer stopped early (or failed): drop the prefetch
                pending.cancel()
                pending.add_done_callback(_consume_outcome)

    async def write(self, key: str, data: bytes | Path | AsyncIterable[bytes]) -> ObjectInfo:
        """Store a whole object atomically (single PUT, or multipart upload for big data).

        An exception raised by the caller's async iterator propagates unchanged
        and leaves the previous object (or none) in place; storage failures
        raise StorageError.
        """
        _check_key(key)
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                size = len(data)
                result = await self._put(
                    key, bytes(data) if not isinstance(data, bytes) else data, size
                )
            elif isinstance(data, Path):
                try:
                    size = data.stat().st_size
                except OSError as exc:
                    raise StorageError(
                        f"cannot read {data} to store it at {self.url}/{key}: {exc.strerror}"
                    ) from exc
                result = await self._put(key, data, size)
            else:
                result, size = await self._put_stream(key, data)
        except _SourceFailed as exc:
            raise exc.original from None
        except FileNotFoundError as exc:
            # e.g. the bucket vanished; not a missing *log*
            raise self._error("write", key, exc) from exc
        except (BaseError, OSError) as exc:
            raise self._error("write", key, exc) from exc
        return await self._written_info(key, size, result.get("e_tag"))

    async def delete(self, key: str) -> None:
        """Delete the object; a missing object is not an error."""
        _check_key(key)
        try:
            await obstore.delete_async(self._store, key)
        except FileNotFoundError:
            return
        except (BaseError, OSError) as exc:
            raise self._error("delete", key, exc) from exc

    def local_path(self, key: str) -> Path | None:
        """Always None: nothing of S3 is on the local disk."""
        return None

    # -- helpers ------------------------------------------------------------------

    async def _first_window(
        self, key: str, start: int, upto: int
    ) -> tuple[Bytes, ObjectMeta, int] | None:
        """GET ``[start, upto)``; returns (data, object meta, end of data), or None past EOF."""
        try:
            result: GetResult = await obstore.get_async(
                self._store, key, options={"range": (start, upto)}
            )
            data = await result.bytes_async()
        except FileNotFoundError as exc:
            raise LogNotFound(f"no log object at {self.url}/{key}") from exc
        except (BaseError, OSError) as exc:
            # S3 answers 416 to a range starting at/after the end (and to any range
            # of an empty object); tell that apart from real failures with a HEAD
            info = await self.stat(key)
            if start >= info.size:
                return None
            raise self._error("read", key, exc) from exc
        if not data:
            return None
        return data, result.meta, result.range[1]

    async def _window(self, key: str, start: int, upto: int, etag: str | None) -> Bytes:
        """GET ``[start, upto)`` of the same object version the read started on."""
        options: dict[str, Any] = {"range": (start, upto)}
        if etag:
            options["if_match"] = etag
        try:
            result = await obstore.get_async(self._store, key, options=options)  # type: ignore[arg-type]
            return await result.bytes_async()
        except PreconditionError as exc:
            raise StorageError(f"{self.url}/{key} was replaced while it was being read") from exc
        except FileNotFoundError as exc:
            raise StorageError(f"{self.url}/{key} was deleted while it was being read") from exc
        except (BaseError, OSError) as exc:
            raise self._error("read", key, exc) from exc

    async def _put(self, key: str, data: bytes | Path, size: int) -> Mapping[str, Any]:
        return await obstore.put_async(
            self._store,
            key,
            data,
            use_multipart=size > self._part_size,
            chunk_size=self._part_size,
            max_concurrency=self._max_concurrency,
        )

    async def _put_stream(
        self, key: str, data: AsyncIterable[bytes]
    ) -> tuple[Mapping[str, Any], int]:
        """Upload a stream: one PUT if it ends within one part, else multipart.

        Most logs are small: buffering up to one part first saves the three
        requests of a multipart upload (create, part, complete).
        """
        iterator = aiter(data)
        head: list[bytes] = []
        buffered = 0
        exhausted = False
        while buffered <= self._part_size:
            try:
                piece = await anext(iterator)
            except StopAsyncIteration:
                exhausted = True
                break
            except Exception as exc:
                raise _SourceFailed(exc) from exc
            if piece:
                head.append(bytes(piece))
                buffered += len(piece)
        if exhausted:
            return await self._put(key, b"".join(head), buffered), buffered

        counted = [buffered]

        async def rest() -> AsyncIterator[bytes]:
            for piece in head:
                yield piece
            head.clear()
            while True:
                try:
                    piece = await anext(iterator)
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    # obstore re-raises what the stream raised, after aborting the upload;
                    # wrapping it lets write() tell it apart from a storage failure
                    raise _SourceFailed(exc) from exc
                if piece:
                    counted[0] += len(piece)
                    yield bytes(piece)

        result = await obstore.put_async(
            self._store,
            key,
            rest(),
            use_multipart=True,
            chunk_size=self._part_size,
            max_concurrency=self._max_concurrency,
        )
        return result, counted[0]

    async def _written_info(self, key: str, size: int, etag: str | None) -> ObjectInfo:
        """The stored object's info, from a HEAD (S3 sets the modification time)."""
        try:
            meta = await obstore.head_async(self._store, key)
        except (BaseError, OSError):
            meta = None
        if meta is not None and (etag is None or meta["e_tag"] == etag):
            return _info(key, meta)
        # someone overwrote it already, or the HEAD failed: report what we wrote
        return ObjectInfo(key=key, size=size, modified=datetime.now(UTC))

    def _error(self, op: str, key: str, exc: BaseException) -> StorageError:
        return StorageError(
            f"S3 {op} of {self.url}/{key} failed: {describe(exc, self.endpoint_url)}"
        )


def _check_key(key: str) -> None:
    # keys come from logstore.paths; this only stops a programming error from
    # reaching the bucket root or escaping the prefix
    if not key or key.startswith("/") or any(part in {"", ".", ".."} for part in key.split("/")):
        raise InvalidInput(f"invalid storage key {key!r}")


def _info(key: str, meta: ObjectMeta) -> ObjectInfo:
    modified = meta["last_modified"]
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)
    return ObjectInfo(key=key, size=int(meta["size"]), modified=modified)


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    # retrieve a cancelled prefetch's outcome so asyncio never logs
    # "exception was never retrieved" for a read nobody waits for any more
    if not future.cancelled():
        future.exception()
