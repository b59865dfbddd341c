"""The compressed form of an ended log: independent zstd frames with a frame index.

``events.ndjson.zst`` is a sequence of independent zstd frames, each holding
whole lines (about ``frame_bytes`` of NDJSON; a longer line gets a frame of
its own). Concatenated frames are a valid zstd stream, so ``zstd -d`` reads
the file too. ``events.ndjson.zst.idx`` holds a 64-byte header (magic
``RVEZIDX1``, event count, plain size, frame count, SHA-256 of the plain log)
and one 32-byte record per frame: ``<u64 first sequence, u64 offset, u64
compressed size, u64 plain size>``. ``after_sequence=N`` binary-searches the
records and decompresses only the frame holding N+1 (and the ones after it,
as the reader goes on).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
from array import array
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from runevents.eventlog.reader import ByteSource
from runevents.eventlog.types import Chunk, ends_with_completed
from runevents.exceptions import StorageError

MAGIC = b"RVEZIDX1"
HEADER = struct.Struct("<8sQQQ32s")
FRAME = struct.Struct("<QQQQ")
#: plain bytes per frame (whole lines)
FRAME_BYTES = 1024 * 1024
LEVEL = 3

#: test seam: called with a step name during compaction; raising there simulates a crash
StepHook = Callable[[str], None]
#: called with (first sequence, plain bytes) of each frame, in the compressing thread
FrameHook = Callable[[int, bytes], None]


@dataclass(slots=True)
class FrameIndex:
    """The frame index of one compressed log."""

    event_count: int = 0
    raw_bytes: int = 0
    digest: bytes = bytes(32)
    first_sequences: array[int] = field(default_factory=lambda: array("Q"))
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    sizes: array[int] = field(default_factory=lambda: array("Q"))
    raw_sizes: array[int] = field(default_factory=lambda: array("Q"))

    @property
    def frames(self) -> int:
        """Number of frames."""
        return len(self.offsets)

    @property
    def compressed_bytes(self) -> int:
        """Size the compressed file must have."""
        return self.offsets[-1] + self.sizes[-1] if self.offsets else 0

    def add(self, first_sequence: int, offset: int, size: int, raw_size: int) -> None:
        """Append a frame record."""
        self.first_sequences.append(first_sequence)
        self.offsets.append(offset)
        self.sizes.append(size)
        self.raw_sizes.append(raw_size)

    def to_bytes(self) -> bytes:
        """The sidecar file."""
        out = bytearray(
            HEADER.pack(MAGIC, self.event_count, self.raw_bytes, self.frames, self.digest)
        )
        for record in zip(
            self.first_sequences, self.offsets, self.sizes, self.raw_sizes, strict=True
        ):
            out += FRAME.pack(*record)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> FrameIndex:
        """Parse a sidecar; StorageError if it is damaged or incomplete."""
        if len(data) < HEADER.size:
            raise StorageError("the compressed log's index is truncated")
        magic, count, raw, frames, digest = HEADER.unpack_from(data)
        if magic != MAGIC or len(data) != HEADER.size + frames * FRAME.size:
            raise StorageError("the compressed log's index is damaged")
        index = cls(event_count=count, raw_bytes=raw, digest=digest)
        for record in FRAME.iter_unpack(memoryview(data)[HEADER.size :]):
            index.add(*record)
        for i in range(index.frames):
            at = index.offsets[i - 1] + index.sizes[i - 1] if i else 0
            first = index.first_sequences[i]
            if index.offsets[i] != at or first <= (index.first_sequences[i - 1] if i else 0):
                raise StorageError("the compressed log's index is inconsistent")
        if index.frames and (index.first_sequences[0] != 1 or index.first_sequences[-1] > count):
            raise StorageError("the compressed log's index is inconsistent")
        return index


async def read_all(source: ByteSource, start: int, end: int) -> bytes:
    """The bytes ``[start, end)`` of ``source`` as one object (one frame: ~1 MiB at most)."""
    parts = [block async for block in source.blocks(start, end)]
    data = b"".join(parts)
    if len(data) != end - start:
        raise StorageError("the compressed log is shorter than its index says")
    return data


async def decompress_frame(source: ByteSource, index: FrameIndex, i: int) -> bytes:
    """The plain lines of frame ``i``."""
    start = index.offsets[i]
    data = await read_all(source, start, start + index.sizes[i])
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=index.raw_sizes[i])
    except zstandard.ZstdError as exc:
        raise StorageError(f"frame {i} of the compressed log is damaged: {exc}") from exc
    if len(raw) != index.raw_sizes[i]:
        raise StorageError(f"frame {i} of the compressed log has the wrong size")
    return raw


async def read_compressed(
    source: ByteSource, index: FrameIndex, after_sequence: int = 0, limit: int | None = None
) -> AsyncIterator[Chunk]:
    """Chunks (one per frame) of the lines after ``after_sequence``."""
    if (limit is not None and limit <= 0) or after_sequence >= index.event_count:
        return
    remaining = limit
    i = max(bisect_right(index.first_sequences, after_sequence + 1) - 1, 0)
    skip = after_sequence + 1 - index.first_sequences[i] if after_sequence >= 0 else 0
    while i < index.frames:
        raw = await decompress_frame(source, index, i)
        first = index.first_sequences[i]
        pos = 0
        for _ in range(max(skip, 0)):
            pos = raw.index(b"\n", pos) + 1
        first += max(skip, 0)
        skip = 0
        body = raw[pos:] if pos else raw
        count = body.count(b"\n")
        if remaining is not None and count >= remaining:
            cut = -1
            for _ in range(remaining):
                cut = body.find(b"\n", cut + 1)
            body, count = body[: cut + 1], remaining
        if count:
            yield Chunk(first, first + count - 1, body, ends_with_completed(body))
        if remaining is not None:
            remaining -= count
            if remaining <= 0:
                return
        i += 1


# ---------------------------------------------------------------------------
# writing


class FrameWriter:
    """Cuts a plain log into frames, compresses them into ``fd``, hashes and counts the input."""

    def __init__(
        self,
        fd: int,
        *,
        frame_bytes: int = FRAME_BYTES,
        level: int = LEVEL,
        frame_hook: FrameHook | None = None,
    ) -> None:
        self.fd = fd
        self.frame_hook = frame_hook
        self.frame_bytes = frame_bytes
        self.index = FrameIndex()
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._hash = hashlib.sha256()
        self._pending = bytearray()
        self._offset = 0
        self._next_sequence = 1

    async def feed(self, block: bytes) -> None:
        """Add plain bytes (whole lines or not; frames are cut at line ends)."""
        self._hash.update(block)
        self._pending += block
        while len(self._pending) >= self.frame_bytes:
            cut = self._pending.rfind(b"\n", 0, self.frame_bytes)
            if cut < 0:
                cut = self._pending.find(b"\n", self.frame_bytes)
                if cut < 0:
                    return  # one long line: wait for its end
            await self._emit(bytes(self._pending[: cut + 1]))
            del self._pending[: cut + 1]

    async def finish(self) -> FrameIndex:
        """Write the last frame; the input must have ended with a newline."""
        if self._pending:
            if not self._pending.endswith(b"\n"):
                raise StorageError("the plain log ends with a partial line")
            await self._emit(bytes(self._pending))
            self._pending.clear()
        self.index.event_count = self._next_sequence - 1
        self.index.digest = self._hash.digest()
        return self.index

    def _compress(self, raw: bytes, first_sequence: int) -> bytes:
        if self.frame_hook is not None:
            self.frame_hook(first_sequence, raw)
        data: bytes = self._compressor.compress(raw)
        return data

    async def _emit(self, raw: bytes) -> None:
        # zstd releases the GIL: compress (and index, if asked) off the event loop
        data = await asyncio.to_thread(self._compress, raw, self._next_sequence)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        count = raw.count(b"\n")
        self.index.add(self._next_sequence, self._offset, len(data), len(raw))
        self.index.raw_bytes += len(raw)
        self._offset += len(data)
        self._next_sequence += count


async def verify(source: ByteSource, index: FrameIndex, expected: FrameIndex) -> None:
    """Decompress every frame of ``source`` and check count and checksum against ``expected``.

    ``expected`` comes from the plain log (what was fed in). StorageError if anything differs.
    """
    digest = hashlib.sha256()
    lines = 0
    for i in range(index.frames):
        raw = await decompress_frame(source, index, i)
        if not raw.endswith(b"\n"):
            raise StorageError(f"frame {i} does not end with a whole line")
        digest.update(raw)
        lines += raw.count(b"\n")
    if lines != expected.event_count or digest.digest() != expected.digest:
        raise StorageError(
            "the compressed log does not match the plain log "
            f"({lines} events vs {expected.event_count}, checksum "
            f"{'ok' if digest.digest() == expected.digest else 'differs'})"
        )


def fsync_path(path: Path) -> None:
    """fsync an existing file by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
