"""The search index of a compressed log: one n-gram Bloom filter per frame.

``events.ndjson.zst.ngrams`` sits beside the frame index (the precedents are
ClickHouse's ``ngrambf_v1`` skip index and Loki's bloom filters). For each
zstd frame it holds a Bloom filter of the byte trigrams of the frame's
console messages, casefolded and UTF-8 encoded, so a search for text whose
trigrams are not all in a frame's filter skips that frame without reading it.
A filter can only say "maybe" or "surely not": a false positive costs one
frame read, never a wrong answer.

Layout (little endian)::

    header  <8s magic "RVENGRM1", u32 n-gram size, u32 hashes, u32 frames,
             u64 event count, 32s SHA-256 of the plain log>
    frames  <u64 first sequence, u64 plain bytes, u8 log2(bits), 3x pad, u32 filter bytes> * frames
    filters the filters, concatenated
    trailer <u32 CRC-32 of everything before>

``log2(bits)`` 0 means the frame has no console message (nothing can match);
255 that it was not indexed (always read). The header repeats the frame
index's event count and checksum: an index that does not belong to the log
beside it, or is damaged, is ignored and the log is scanned instead -- the
index is never needed for a correct answer.

Building runs off the event loop (compaction calls :meth:`IndexBuilder.add_frame`
from the worker thread that compresses the frame).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

MAGIC = b"RVENGRM1"
HEADER = struct.Struct("<8sIIIQ32s")
RECORD = struct.Struct("<QQB3xI")
TRAILER = struct.Struct("<I")
#: n-gram length (bytes)
NGRAM = 3
#: bits set per n-gram (one odd 64-bit multiplier each: Fibonacci hashing)
MULTIPLIERS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9)
#: filter bits per distinct n-gram before rounding up to a power of two
#: (8 to 16 bits and 3 hashes: 1 to 3 % false positives per n-gram)
BITS_PER_NGRAM = 8
MIN_LOG2 = 6
#: a frame whose filter would exceed this share of its plain bytes is not indexed
#: (random-looking output: the filter would say "maybe" to everything anyway)
MAX_FILTER_SHARE = 0.25
EMPTY = 0
UNINDEXED = 255
_MASK = (1 << 64) - 1


class _Payload(msgspec.Struct):
    message: Any = None


class _Line(msgspec.Struct):
    type: str
    payload: _Payload


_decode_lines = msgspec.json.Decoder(list[_Line]).decode


def message_text(raw: bytes) -> bytes | None:
    """The casefolded console messages of a frame's lines, NUL-separated; None if undecodable."""
    if not raw:
        return b""
    try:
        lines = _decode_lines(b"[" + raw.rstrip(b"\n").replace(b"\n", b",") + b"]")
    except msgspec.DecodeError:
        return None
    messages = [
        line.payload.message
        for line in lines
        if line.type == "console.line" and isinstance(line.payload.message, str)
    ]
    # NUL never starts or ends an n-gram that is kept: n-grams never span two messages
    return "\x00".join(messages).casefold().encode("utf-8", "surrogatepass")


def ngrams_of_text(text: bytes) -> Any:
    """Distinct n-grams of ``text`` (as 24-bit integers), NUL-free, sorted (numpy uint32)."""
    if len(text) < NGRAM:
        return np.empty(0, np.uint32)
    a = np.frombuffer(text, np.uint8)
    grams = (a[:-2].astype(np.uint32) << 16) | (a[1:-1].astype(np.uint32) << 8) | a[2:]
    keep = (a[:-2] != 0) & (a[1:-1] != 0) & (a[2:] != 0)
    return np.unique(grams[keep])


def ngrams_of(literal: str) -> list[int]:
    """The n-grams of a casefolded literal, in order, without repeats (NUL-free)."""
    data = literal.encode("utf-8", "surrogatepass")
    seen: dict[int, None] = {}
    for i in range(len(data) - NGRAM + 1):
        gram = data[i : i + NGRAM]
        if 0 not in gram:
            seen[int.from_bytes(gram, "big")] = None
    return list(seen)


def build_filter(grams: Any, raw_size: int) -> tuple[int, bytes]:
    """``(log2 bits, filter bytes)`` of a frame's distinct n-grams."""
    n = len(grams)
    if n == 0:
        return EMPTY, b""
    log2 = max(MIN_LOG2, int(n * BITS_PER_NGRAM - 1).bit_length())
    if (1 << log2) / 8 > raw_size * MAX_FILTER_SHARE:
        return UNINDEXED, b""
    bits = np.zeros(1 << log2, np.bool_)
    h = grams.astype(np.uint64)
    shift = np.uint64(64 - log2)
    for multiplier in MULTIPLIERS:
        bits[(h * np.uint64(multiplier)) >> shift] = True
    return log2, np.packbits(bits, bitorder="little").tobytes()


class IndexBuilder:
    """Collects one filter per frame, in frame order; :meth:`to_bytes` makes the sidecar."""

    def __init__(self) -> None:
        self.records: list[tuple[int, int, int, bytes]] = []

    def add_frame(self, first_sequence: int, raw: bytes) -> None:
        """Index one frame's plain lines (synchronous: call it off the event loop)."""
        text = message_text(raw)
        if text is None:
            self.records.append((first_sequence, len(raw), UNINDEXED, b""))
            return
        log2, data = build_filter(ngrams_of_text(text), len(raw))
        self.records.append((first_sequence, len(raw), log2, data))

    def to_bytes(self, event_count: int, digest: bytes) -> bytes:
        """The sidecar for a log of ``event_count`` events whose plain SHA-256 is ``digest``."""
        out = bytearray(
            HEADER.pack(MAGIC, NGRAM, len(MULTIPLIERS), len(self.records), event_count, digest)
        )
        for first, raw_size, log2, data in self.records:
            out += RECORD.pack(first, raw_size, log2, len(data))
        for *_, data in self.records:
            out += data
        out += TRAILER.pack(zlib.crc32(out))
        return bytes(out)


# Structs without garbage-collector tracking (``gc=False``): a server caches
# thousands of parsed indexes (search/filters.py), and tracked objects would make
# every full collection walk them all while the event loop waits. They hold only
# numbers, bytes and tuples of these: no reference cycle is possible.


class FrameFilter(msgspec.Struct, frozen=True, gc=False):
    """One frame's filter."""

    first_sequence: int
    raw_size: int
    log2: int
    data: bytes


class NgramIndex(msgspec.Struct, frozen=True, gc=False):
    """A parsed sidecar."""

    event_count: int
    digest: bytes
    frames: tuple[FrameFilter, ...]
    #: plain bytes of all frames
    raw_bytes: int = 0
    #: bytes of filters plus a share per frame (for cache accounting)
    size: int = 0

    @classmethod
    def from_bytes(cls, data: bytes) -> NgramIndex | None:
        """Parse a sidecar; None if it is damaged, truncated or of another format."""
        if len(data) < HEADER.size + TRAILER.size:
            return None
        (crc,) = TRAILER.unpack_from(data, len(data) - TRAILER.size)
        end = len(data) - TRAILER.size
        if zlib.crc32(memoryview(data)[:end]) != crc:
            return None
        magic, ngram, hashes, count, events, digest = HEADER.unpack_from(data)
        if magic != MAGIC or ngram != NGRAM or hashes != len(MULTIPLIERS):
            return None
        at = HEADER.size + count * RECORD.size
        if at > end:
            return None
        frames = []
        raw_bytes = 0
        for first, raw_size, log2, length in RECORD.iter_unpack(data[HEADER.size : at]):
            if at + length > end or (log2 not in (EMPTY, UNINDEXED) and length != 1 << log2 >> 3):
                return None
            frames.append(FrameFilter(first, raw_size, log2, data[at : at + length]))
            at += length
            raw_bytes += raw_size
        if at != end:
            return None
        return cls(events, digest, tuple(frames), raw_bytes, end - HEADER.size + 64 * count)


class Probe:
    """A search requirement as n-gram hashes: which frames may hold a match.

    ``alternatives`` are lists of casefolded literals that must all occur (any
    one alternative). ``usable`` is False when some alternative has no n-gram
    (too short to test): then every frame may match.

    Thousands of filters are probed per search, so the bit positions are
    worked out once per filter size (``log2``) rather than once per filter:
    a filter is then tested with a few byte lookups.
    """

    def __init__(self, alternatives: Sequence[Sequence[str]]) -> None:
        self.alternatives: list[list[tuple[int, ...]]] = []
        for alternative in alternatives:
            grams = [g for literal in alternative for g in ngrams_of(literal)]
            if not grams:
                self.alternatives = []
                break
            self.alternatives.append([self._hashes(g) for g in dict.fromkeys(grams)])
        #: log2 -> per alternative, per n-gram: (byte, mask) of each hash
        self._tables: dict[int, _Table] = {}

    @property
    def usable(self) -> bool:
        """Whether the probe can rule any frame out."""
        return bool(self.alternatives)

    @staticmethod
    def _hashes(gram: int) -> tuple[int, ...]:
        return tuple((gram * m) & _MASK for m in MULTIPLIERS)

    def _table(self, log2: int) -> _Table:
        table = self._tables.get(log2)
        if table is None:
            shift = 64 - log2
            table = tuple(
                tuple(
                    tuple((h >> shift >> 3, 1 << (h >> shift & 7)) for h in hashes)
                    for hashes in alternative
                )
                for alternative in self.alternatives
            )
            self._tables[log2] = table  # a race only computes the same table twice
        return table

    def may_match(self, frame: FrameFilter) -> bool:
        """False only if the frame surely holds no match."""
        return self.filter_may_match(frame.log2, frame.data)

    def filter_may_match(self, log2: int, data: bytes) -> bool:
        """:meth:`may_match` of a filter of ``2**log2`` bits."""
        if log2 == UNINDEXED or not self.alternatives:
            return True
        if log2 == EMPTY:
            return False
        table = self._tables.get(log2) or self._table(log2)
        for alternative in table:
            # three hashes per n-gram (MULTIPLIERS), unrolled: this is the hot loop
            for (b0, m0), (b1, m1), (b2, m2) in alternative:
                if not (data[b0] & m0 and data[b1] & m1 and data[b2] & m2):
                    break
            else:
                return True
        return False

    def candidates(self, index: NgramIndex) -> tuple[int, ...]:
        """The frames of ``index`` that may hold a match, in order."""
        test = self.filter_may_match
        frames = index.frames
        if len(frames) == 1:  # the common case (frames are ~1 MiB): no generator
            frame = frames[0]
            return (0,) if test(frame.log2, frame.data) else ()
        return tuple(i for i, f in enumerate(frames) if test(f.log2, f.data))


#: per alternative, per n-gram, per hash: (byte offset, bit mask) in a filter
_Table = tuple[tuple[tuple[tuple[int, int], ...], ...], ...]
assert len(MULTIPLIERS) == 3, "Probe.filter_may_match unrolls three hashes"
