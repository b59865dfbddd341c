"""Search across the runs of a workspace (contract section 12).

Runs are taken newest first from the runs list (keyset pages of light rows,
the same filters as ``GET .../runs``), in batches. For each batch:

1. one worker thread looks up the search index of every compacted run in
   the cache (reading and parsing those not cached; a remote store's objects
   are fetched first) and probes it: the runs whose every frame the n-gram
   filters rule out are counted there and never reach the event loop;
2. each remaining run, in order, is then searched: a compacted run frame by
   frame (only the candidate frames: read, decompressed and matched in a
   worker thread), any other run (live, plain, or compacted with no usable
   index) by scanning its log like any reader.

Every lookup, probe, decode and match runs in a worker thread, a batch, chunk
or frame at a time: the event loop only moves bytes, and memory holds one
batch of run rows, the cached filters (bounded) and one frame per request.

The answer is a stream of NDJSON lines: hits as they are found, then the
``done`` record with the counts and a cursor. The cursor names the run and
sequence of the last hit: the next request resumes just after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import msgspec
import zstandard

from runevents.db.rows import decode_cursor, encode_cursor
from runevents.eventlog import EventLog, RunRef
from runevents.eventlog.compressed import FrameIndex, read_all
from runevents.eventlog.locate import CompressedLog, open_compressed
from runevents.eventlog.ngrams import NgramIndex, Probe
from runevents.exceptions import InvalidInput, LogNotFound, RuneventsError, StorageError
from runevents.logstore import paths
from runevents.models import LogState, RunHead, RunQuery, RunStatus
from runevents.search.filters import CACHE, FilterCache, load_filters, read_local
from runevents.search.hits import Filters, Prefilter, find_hits
from runevents.search.pattern import Pattern

_log = logging.getLogger(__name__)

#: hits per answer: default and maximum (contract section 12)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: runs per batch (one page of light rows; the next is read while one is searched):
#: a small first page for the first hits, then large ones: each page is a
#: database round trip and a worker-thread hop, whose fixed CPU cost (measured:
#: ~4 ms a query) is most of a rare term's search once the filters are cached
FIRST_BATCH = 500
BATCH = 4500
#: plain chunks smaller than this are matched on the loop (a thread hop costs more)
INLINE_BYTES = 16 * 1024


@dataclass(frozen=True)
class SearchRequest:
    """One search: what to look for, in which runs, and where to resume."""

    workspace_id: str
    pattern: Pattern
    filters: Filters = field(default_factory=Filters)
    statuses: frozenset[RunStatus] = frozenset()
    configuration_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
        if self.cursor is not None:
            decode_search_cursor(self.cursor)  # 422 before anything is read


@dataclass
class Stats:
    """The counts of the ``done`` record."""

    hits: int = 0
    runs_scanned: int = 0
    bytes_scanned: int = 0
    bytes_skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    def done(self, cursor: str | None) -> bytes:
        """The last line of the answer."""
        return msgspec.json.encode(
            {
                "done": True,
                "hits": self.hits,
                "runs_scanned": self.runs_scanned,
                "bytes_scanned": self.bytes_scanned,
                "bytes_skipped": self.bytes_skipped,
                "elapsed_ms": round((time.monotonic() - self.started) * 1000, 3),
                "cursor": cursor,
            }
        )


# ---------------------------------------------------------------------------
# the cursor: a runs-list cursor naming the run, and the sequence of the last hit


def encode_search_cursor(created_at: datetime, run_id: str, sequence: int) -> str:
    """Resume in run ``run_id`` after ``sequence``, then the runs older than it."""
    return f"{encode_cursor(created_at, run_id)}.{sequence}"


def decode_search_cursor(cursor: str) -> tuple[datetime, str, int]:
    """``(created_at, run_id, sequence)``; InvalidInput for anything else."""
    runs_cursor, _, sequence = cursor.rpartition(".")
    if not runs_cursor or not sequence.isdigit() or len(sequence) > 19:
        raise InvalidInput("invalid cursor: pass the previous answer's cursor unchanged")
    created_at, run_id = decode_cursor(runs_cursor)
    return created_at, run_id, int(sequence)


# ---------------------------------------------------------------------------
# the search


class RunHeadSource(Protocol):
    """What the engine needs of the repository (``RunRepository`` provides it)."""

    async def list_run_heads(self, query: RunQuery) -> tuple[list[RunHead], str | None]:
        """A runs-list page of light rows."""
        ...

    async def get_run_head(self, workspace_id: str, run_id: str) -> RunHead | None:
        """One light row, None if there is no such run in the workspace."""
        ...


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one run is searched: after which sequence, and with which frames."""

    head: RunHead
    after: int
    #: the run's search index (None: scan the run)
    index: NgramIndex | None = None
    #: frames the index cannot rule out, in order
    frames: tuple[int, ...] = ()


class WorkspaceSearch:
    """Runs one :class:`SearchRequest` over a repository's rows and an event log."""

    def __init__(
        self,
        repo: RunHeadSource,
        log: EventLog,
        request: SearchRequest,
        *,
        cache: FilterCache = CACHE,
    ) -> None:
        self.repo = repo
        self.log = log
        self.request = request
        self.cache = cache
        self.prefilter = Prefilter.of(request.pattern)
        self.probe = Probe(request.pattern.requirement())
        self.stats = Stats()
        self._remaining = request.limit
        self._resume: dict[str, int] = {}
        #: filters come from a remote store (fetched on the loop, then parsed off it)
        self._remote = log.store.local_path(paths.LOG_NAME) is None
        #: the resumed run and the first page of runs, once :meth:`start` read them
        self._started: tuple[RunHead | None, tuple[list[RunHead], str | None]] | None = None

    async def lines(self) -> AsyncIterator[bytes]:
        """The answer: hit lines, then the done record (each with its newline).

        A failure once the answer has started (the database goes away between two
        pages) ends it with an ``{"error": ...}`` record instead of the done record:
        the status line is sent already, and a cut without a word reads as a
        network fault.
        """
        try:
            async for head, sequence, line in self._hits():
                yield line + b"\n"
                self.stats.hits += 1
                self._remaining -= 1
                if self._remaining == 0:
                    cursor = encode_search_cursor(head.created_at, head.id, sequence)
                    yield self.stats.done(cursor) + b"\n"
                    return
        except RuneventsError as exc:
            if self._started is None:
                raise  # nothing sent yet: the caller answers the error's status
            _log.warning("search: the answer ends early: %s", exc.message)
            yield msgspec.json.encode({"error": {"code": exc.code, "message": exc.message}}) + b"\n"
            return
        yield self.stats.done(None) + b"\n"

    async def _hits(self) -> AsyncIterator[tuple[RunHead, int, bytes]]:
        async for batch in self._batches():
            for plan in await self._plan(batch):
                try:
                    async for sequence, line in self._search_run(plan):
                        yield plan.head, sequence, line
                except (LogNotFound, StorageError) as exc:
                    # deleted meanwhile, or damaged: the other runs are still searched
                    _log.warning("search: run %s skipped: %s", plan.head.id, exc)

    async def start(self) -> None:
        """Read the first page of runs now, before the answer starts, so a database that
        is away is an error status (503) rather than a 200 cut off with no body."""
        request = self.request
        cursor = None
        resumed = None
        if request.cursor is not None:
            created_at, run_id, sequence = decode_search_cursor(request.cursor)
            cursor = encode_cursor(created_at, run_id)
            resumed = await self.repo.get_run_head(request.workspace_id, run_id)
            if resumed is not None:
                self._resume[run_id] = sequence
        first = await self._page(cursor, FIRST_BATCH)
        self._started = (resumed, first)

    async def _batches(self) -> AsyncIterator[list[RunHead]]:
        if self._started is None:
            await self.start()
        assert self._started is not None
        resumed, (heads, cursor) = self._started
        if resumed is not None:
            yield [resumed]
        if heads:
            yield heads
        if cursor is None:
            return
        # the next page is read while this one is searched
        pending = asyncio.ensure_future(self._page(cursor, BATCH))
        try:
            while True:
                heads, cursor = await pending
                if cursor is not None:
                    pending = asyncio.ensure_future(self._page(cursor, BATCH))
                if heads:
                    yield heads
                if cursor is None:
                    return
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending

    async def _page(self, after: str | None, size: int) -> tuple[list[RunHead], str | None]:
        request = self.request
        return await self.repo.list_run_heads(
            RunQuery(
                workspace_id=request.workspace_id,
                statuses=request.statuses,
                configuration_id=request.configuration_id,
                created_after=request.created_after,
                created_before=request.created_before,
                limit=size,
                cursor=after,
            )
        )

    async def _plan(self, heads: Sequence[RunHead]) -> list[_Plan]:
        """The runs of a batch to read, in order, and with which frames.

        The filters of the compacted runs are loaded and probed in one worker
        thread per batch (a local store's files are read there too; a remote
        store's objects are fetched first, on the loop, a few at a time): a run
        whose every frame they rule out is counted there and never opened, and
        costs the event loop nothing. The index is checked against the log
        whenever a frame is read.
        """
        loaded = None
        if self.probe.usable and self._remote:
            compacted = [h for h in heads if h.log_state is LogState.COMPRESSED]
            if compacted:
                found = await load_filters(self.log, compacted, self.cache)
                loaded = dict(zip((h.id for h in compacted), found, strict=True))
        plans, runs, skipped = await asyncio.to_thread(self._plan_batch, heads, loaded)
        self.stats.runs_scanned += runs
        self.stats.bytes_skipped += skipped
        return plans

    def _plan_batch(
        self, heads: Sequence[RunHead], loaded: dict[str, NgramIndex | None] | None
    ) -> tuple[list[_Plan], int, int]:
        """``(plans, runs ruled out, their plain bytes)`` (in a worker thread).

        One pass, no per-run allocation for a run the filters rule out: this
        is the per-run cost of a search (thousands of runs per request).
        """
        resume = self._resume
        probe = self.probe
        plans: list[_Plan] = []
        runs = skipped = 0
        if not probe.usable:
            plans = [
                _Plan(h, resume.get(h.id, 0)) for h in heads if h.log_state is not LogState.EXPIRED
            ]
            return plans, runs, skipped
        if loaded is None:
            compacted = [h for h in heads if h.log_state is LogState.COMPRESSED]
            found = read_local(self.log.store, compacted, self.cache) if compacted else []
            loaded = dict(zip([h.id for h in compacted], found, strict=True))
        candidates = probe.candidates
        get = loaded.get
        compressed, expired = LogState.COMPRESSED, LogState.EXPIRED
        for head in heads:
            state = head.log_state
            index = get(head.id) if state is compressed else None
            # an index that does not count the row's events belongs to another log
            if index is None or index.event_count != head.event_count:
                if state is not expired:
                    plans.append(_Plan(head, resume.get(head.id, 0)))
                continue
            frames = candidates(index)
            after = resume.get(head.id, 0) if resume else 0
            if frames:
                plans.append(_Plan(head, after, index, frames))
            else:
                runs += 1
                skipped += _bytes_after(index, after)
        return plans, runs, skipped

    async def _search_run(self, plan: _Plan) -> AsyncIterator[tuple[int, bytes]]:
        self.stats.runs_scanned += 1
        head = plan.head
        ref = _ref(head)
        if head.log_state is LogState.COMPRESSED:
            compressed = await open_compressed(self.log.store, self.log.keys(ref))
            if compressed is not None:
                try:
                    frames: tuple[int, ...] | None = plan.frames if plan.index is not None else None
                    if plan.index is not None and not _belongs(plan.index, compressed.index):
                        self.cache.forget(head.id)  # another compaction's index: scan all
                        frames = None
                    async for hit in self._search_frames(head, compressed, plan.after, frames):
                        yield hit
                finally:
                    compressed.close()
                return
        async for hit in self._scan(head, ref, plan.after):
            yield hit

    async def _search_frames(
        self,
        head: RunHead,
        compressed: CompressedLog,
        after: int,
        candidates: tuple[int, ...] | None,
    ) -> AsyncIterator[tuple[int, bytes]]:
        frames = compressed.index
        for i in range(frames.frames):
            if _frame_last(frames.first_sequences, frames.event_count, i) <= after:
                continue
            if candidates is not None and i not in candidates:
                self.stats.bytes_skipped += frames.raw_sizes[i]
                continue
            start = frames.offsets[i]
            data = await read_all(compressed.source, start, start + frames.sizes[i])
            self.stats.bytes_scanned += frames.raw_sizes[i]
            hits = await asyncio.to_thread(self._frame_hits, head, frames, i, data, after)
            for hit in hits:
                yield hit

    def _frame_hits(
        self, head: RunHead, frames: FrameIndex, i: int, data: bytes, after: int
    ) -> list[tuple[int, bytes]]:
        try:
            raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=frames.raw_sizes[i])
        except zstandard.ZstdError as exc:
            raise StorageError(f"frame {i} of the compressed log is damaged: {exc}") from exc
        return self._match(head, raw, frames.first_sequences[i], after)

    def _match(self, head: RunHead, data: bytes, first: int, after: int) -> list[tuple[int, bytes]]:
        return find_hits(
            data,
            first,
            self.request.pattern,
            self.prefilter,
            self.request.filters,
            run_id=head.id,
            configuration_id=head.configuration_id,
            after_sequence=after,
            limit=self._remaining,
        )

    async def _scan(
        self, head: RunHead, ref: RunRef, after: int
    ) -> AsyncIterator[tuple[int, bytes]]:
        chunks = self.log.read(ref, after_sequence=after)
        try:
            async for chunk in chunks:
                self.stats.bytes_scanned += len(chunk.data)
                if len(chunk.data) > INLINE_BYTES:
                    hits = await asyncio.to_thread(
                        self._match, head, chunk.data, chunk.first_sequence, after
                    )
                else:
                    hits = self._match(head, chunk.data, chunk.first_sequence, after)
                for hit in hits:
                    yield hit
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]


def _ref(head: RunHead) -> RunRef:
    return RunRef(head.workspace_id, head.configuration_id, head.id)


def _frame_last(first_sequences: Sequence[int], event_count: int, i: int) -> int:
    return first_sequences[i + 1] - 1 if i + 1 < len(first_sequences) else event_count


def _bytes_after(index: NgramIndex, after: int) -> int:
    if after == 0:
        return index.raw_bytes
    firsts = [f.first_sequence for f in index.frames]
    return sum(
        f.raw_size
        for i, f in enumerate(index.frames)
        if _frame_last(firsts, index.event_count, i) > after
    )


def _belongs(index: NgramIndex, frames: FrameIndex) -> bool:
    """Whether ``index`` was built from the log ``frames`` describes."""
    return (
        index.event_count == frames.event_count
        and index.digest == frames.digest
        and [f.first_sequence for f in index.frames] == list(frames.first_sequences)
    )
