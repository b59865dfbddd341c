"""Stored live-tier chunks (db/chunks.py): the zstd frame of a chunk's bytes."""

from __future__ import annotations

import asyncio
import os

from runevents.db.chunks import INLINE_BYTES, pack, unpack


def _chunk(i: int) -> bytes:
    # past INLINE_BYTES: (de)compressed on a worker thread, as a large batch's chunk is
    return os.urandom(64) * 4096 + bytes([i]) * INLINE_BYTES


async def test_chunks_packed_and_unpacked_on_several_threads_at_once_round_trip() -> None:
    """Issue 14 (bench_cluster): one ZstdCompressor/ZstdDecompressor shared by the event
    loop and to_thread workers wrote corrupt frames, failed reads (``Data corruption
    detected`` at seal: 500) and could crash the process."""
    data = [_chunk(i) for i in range(8)]
    for _ in range(15):
        frames = await asyncio.gather(*(pack(d) for d in [*data, b"small"]))
        assert await asyncio.gather(*(asyncio.to_thread(unpack, f) for f in frames)) == [
            *data,
            b"small",
        ]
