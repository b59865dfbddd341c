"""S3-specific behaviour of S3LogStore, against a real SeaweedFS server.

The LogStore contract itself is in ``tests/contract/test_logstore.py``; here:
prefixes, URL parsing, credentials and endpoint failures, windowed reads and
reads racing an overwrite.
"""

from __future__ import annotations

import random
import socket
import uuid
from datetime import timedelta
from typing import Any

import pytest

from runevents.exceptions import InvalidInput, LogNotFound, StorageError
from runevents.logstore import LogStore, open_log_store
from runevents.logstore.s3 import S3LogStore
from tests.fixtures.s3 import SeaweedFS, seaweedfs  # noqa: F401  (until conftest registers it)

pytestmark = pytest.mark.s3

#: fail fast instead of obstore's minutes of retries
NO_RETRY: dict[str, Any] = {"max_retries": 0, "retry_timeout": timedelta(seconds=2)}


@pytest.fixture
def server(request: pytest.FixtureRequest) -> SeaweedFS:
    """The session's SeaweedFS."""
    result: SeaweedFS = request.getfixturevalue("seaweedfs")
    return result


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"integration/{uuid.uuid4().hex}"


def open_store(server: SeaweedFS, prefix: str, **overrides: Any) -> S3LogStore:
    kwargs = server.store_kwargs() | overrides
    return S3LogStore.from_url(server.url(prefix), **kwargs)


async def read_all(
    store: S3LogStore, key: str, start: int = 0, end: int | None = None, **kw: Any
) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start, end, **kw)])


async def keys(store: S3LogStore, prefix: str = "") -> list[str]:
    return [info.key async for info in store.list(prefix)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- URLs and prefixes ------------------------------------------------------------------


async def test_url_and_registry(server: SeaweedFS, prefix: str) -> None:
    store = open_log_store(server.url(prefix) + "/", **server.store_kwargs())
    assert isinstance(store, S3LogStore)
    assert isinstance(store, LogStore)  # the runtime-checkable protocol
    assert store.url == f"s3://{server.bucket}/{prefix}"
    assert store.local_path("a/b") is None
    await store.write("a/b", b"x")
    again = open_store(server, prefix)
    assert await read_all(again, "a/b") == b"x"
    # the bucket root: keys are the full bucket keys
    root = S3LogStore.from_url(f"s3://{server.bucket}", **server.store_kwargs())
    assert root.url == f"s3://{server.bucket}"
    assert await keys(root, f"{prefix}/") == [f"{prefix}/a/b"]


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///prefix",
        "file:///tmp/x",
        "s3://AKIA:secret@bucket/prefix",
        "s3://bucket/prefix?region=x",
        "s3://bucket/a//b",
        "s3://bucket/../b",
    ],
)
def test_bad_urls_are_rejected(url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        S3LogStore.from_url(url)
    assert "secret" not in str(info.value)


async def test_prefixes_isolate_stores_on_one_bucket(server: SeaweedFS, prefix: str) -> None:
    # "p/a" is a string prefix of "p/ab": the stores must still be disjoint
    a = open_store(server, f"{prefix}/a")
    ab = open_store(server, f"{prefix}/ab")
    b = open_store(server, f"{prefix}/b")
    await a.write("logs/key", b"from a")
    await ab.write("logs/key", b"from ab")
    await b.write("logs/key", b"from b")
    await b.write("logs/only-b", b"b")
    assert await read_all(a, "logs/key") == b"from a"
    assert await read_all(ab, "logs/key") == b"from ab"
    assert await keys(a) == ["logs/key"]
    assert await keys(ab) == ["logs/key"]
    assert await keys(b) == ["logs/key", "logs/only-b"]
    with pytest.raises(LogNotFound):
        await a.stat("logs/only-b")
    await a.delete("logs/key")
    assert await keys(a) == []
    assert await read_all(ab, "logs/key") == b"from ab"
    assert await read_all(b, "logs/key") == b"from b"


async def test_invalid_keys_are_refused_before_any_request(server: SeaweedFS, prefix: str) -> None:
    store = open_store(server, prefix)
    for key in ["", "/abs", "a//b", "a/../b", "a/./b"]:
        with pytest.raises(InvalidInput):
            await store.stat(key)
        with pytest.raises(InvalidInput):
            await store.write(key, b"x")


async def test_big_bytes_and_streams_use_multipart(server: SeaweedFS, prefix: str) -> None:
    # past one part (the minimum, 5 MiB): bytes and a stream both go multipart
    store = open_store(server, prefix, part_size=5 * 1024 * 1024)
    data = random.Random(3).randbytes(11 * 1024 * 1024 + 5)
    assert (await store.write("m/bytes", data)).size == len(data)
    pieces = [data[i : i + 700_000] for i in range(0, len(data), 700_000)]
    assert (await store.write("m/stream", _stream(*pieces))).size == len(data)
    for key in ("m/bytes", "m/stream"):
        assert await read_all(store, key) == data
    # a multipart object's ETag ("...-N") still pins a multi-window read
    small_windows = open_store(server, prefix, read_window=1024 * 1024)
    assert await read_all(small_windows, "m/stream", 10, len(data) - 10) == data[10:-10]


def test_part_size_below_the_s3_minimum_is_refused() -> None:
    with pytest.raises(InvalidInput):
        S3LogStore("bucket", part_size=1024)


# -- failures ------------------------------------------------------------------------


async def test_endpoint_down_is_a_storage_error(server: SeaweedFS, prefix: str) -> None:
    store = open_store(
        server,
        prefix,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        retry_config=NO_RETRY,
        client_options={"connect_timeout": timedelta(seconds=2)},
    )
    operations = [
        ("stat", lambda: store.stat("a/b")),
        ("read", lambda: read_all(store, "a/b")),
        ("ranged read", lambda: read_all(store, "a/b", 5, 10)),
        ("write", lambda: store.write("a/b", b"x")),
        ("stream write", lambda: store.write("a/b", _stream(b"x", b"y"))),
        ("list", lambda: keys(store)),
        ("delete", lambda: store.delete("a/b")),
    ]
    for name, op in operations:
        with pytest.raises(StorageError) as info:
            await op()
        assert not isinstance(info.value, LogNotFound), name
        message = str(info.value)
        assert "cannot reach" in message, (name, message)
        assert server.secret_access_key not in message


async def test_wrong_credentials_are_a_storage_error(server: SeaweedFS, prefix: str) -> None:
    good = open_store(server, prefix)
    await good.write("a/b", b"exists")
    secret = "definitely-not-the-secret-" + uuid.uuid4().hex
    for overrides in (
        {"secret_access_key": secret},
        {"access_key_id": "unknown-key", "secret_access_key": secret},
    ):
        bad = open_store(server, prefix, retry_config=NO_RETRY, **overrides)
        operations = [
            lambda bad=bad: bad.stat("a/b"),
            lambda bad=bad: bad.stat("missing/key"),  # denied, not "not found"
            lambda bad=bad: read_all(bad, "a/b"),
            lambda bad=bad: bad.write("a/b", b"overwritten?"),
            lambda bad=bad: keys(bad),
            lambda bad=bad: bad.delete("a/b"),
        ]
        for op in operations:
            with pytest.raises(StorageError) as info:
                await op()
            assert not isinstance(info.value, LogNotFound)
            message = str(info.value)
            assert "credentials" in message, message
            assert secret not in message
            assert secret not in repr(bad)
    assert await read_all(good, "a/b") == b"exists"


async def test_missing_bucket_is_a_storage_error(server: SeaweedFS) -> None:
    store = S3LogStore.from_url(
        f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p",
        **server.store_kwargs(),
        retry_config=NO_RETRY,
    )
    with pytest.raises(StorageError, match="bucket does not exist"):
        await keys(store)


async def test_aws_environment_configures_the_store(
    server: SeaweedFS, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the contract: the usual AWS_* variables configure S3 (obstore reads them)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_access_key)
    monkeypatch.setenv("AWS_REGION", server.region)
    store = open_log_store(server.url(prefix))
    await store.write("env/key", b"via env")
    assert await read_all(open_store(server, prefix), "env/key") == b"via env"


async def test_http_aws_endpoint_url_needs_no_allow_http(
    server: SeaweedFS, prefix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    # contract 10: an http:// AWS_ENDPOINT_URL works with no further setting (obstore
    # alone refuses plain HTTP without AWS_ALLOW_HTTP: "builder error")
    from runevents.app import open_store as app_store
    from runevents.settings import Settings

    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_access_key)
    monkeypatch.setenv("AWS_REGION", server.region)
    store = app_store(Settings(data_dir=tmp_path, storage_url=server.url(prefix)))
    await store.write("env/plain-http", b"no AWS_ALLOW_HTTP")
    assert await read_all(open_store(server, prefix), "env/plain-http") == b"no AWS_ALLOW_HTTP"


# -- windowed reads ----------------------------------------------------------------


async def test_windowed_reads_match_the_object(server: SeaweedFS, prefix: str) -> None:
    # tiny windows: many ranged GETs, windows not aligned with the requested range
    store = open_store(server, prefix, read_window=1000)
    rng = random.Random(42)
    data = rng.randbytes(25_000)
    await store.write("w/key", data)
    cases = [(0, None, 1000), (0, None, 300), (1, None, 7000), (999, 1001, 1), (24_999, None, 5)]
    cases += [
        (s, s + rng.randrange(0, 9000), rng.choice([1, 10, 333, 1000, 4096]))
        for s in (rng.randrange(0, 25_000) for _ in range(15))
    ]
    for start, end, chunk in cases:
        chunks = [c async for c in store.read("w/key", start, end, chunk_size=chunk)]
        assert b"".join(chunks) == data[start:end], (start, end, chunk)
        assert all(0 < len(c) <= chunk for c in chunks)
        # windows are whole chunks: every chunk but the last is full
        assert all(len(c) == chunk for c in chunks[:-1]), (start, end, chunk)


async def test_object_replaced_mid_read_is_an_error_not_a_splice(
    server: SeaweedFS, prefix: str
) -> None:
    store = open_store(server, prefix, read_window=1000)
    await store.write("r/key", b"A" * 10_000)
    reader = store.read("r/key", chunk_size=1000)
    first = await anext(aiter(reader))
    assert first == b"A" * 1000
    await store.write("r/key", b"B" * 10_000)
    seen: list[bytes] = []

    async def drain() -> None:
        async for chunk in reader:
            seen.append(chunk)

    with pytest.raises(StorageError, match="replaced while it was being read"):
        await drain()
    # whatever came before the error was the old object, never the new one
    assert all(set(chunk) == {ord("A")} for chunk in seen)


async def test_object_deleted_mid_read_is_an_error(server: SeaweedFS, prefix: str) -> None:
    store = open_store(server, prefix, read_window=1000)
    await store.write("r/key", b"A" * 10_000)
    reader = store.read("r/key", chunk_size=1000)
    await anext(aiter(reader))
    await store.delete("r/key")
    with pytest.raises(StorageError):
        async for _ in reader:
            pass


async def test_single_window_read_survives_overwrite(server: SeaweedFS, prefix: str) -> None:
    # a read that fits one window is one GET: it sees the old object whole
    store = open_store(server, prefix)
    await store.write("r/key", b"A" * 10_000)
    reader = store.read("r/key", chunk_size=1000)
    parts = [await anext(aiter(reader))]
    await store.write("r/key", b"B" * 10_000)
    parts += [chunk async for chunk in reader]
    assert b"".join(parts) == b"A" * 10_000


async def _stream(*pieces: bytes) -> Any:
    for piece in pieces:
        yield piece
