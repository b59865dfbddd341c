"""Crash recovery of a live log when its writer is opened.

After a kill -9 (or a power cut) the log may end with a torn line, or with
garbage (a block that reached the disk without its predecessors). Recovery
works from the END of the file -- it never scans a large log -- to the last
complete line that decodes as an event of this run. Everything after it is
copied to a quarantine file beside the log (``events.ndjson.torn-<n>``,
fsynced) and then cut off, so the sequence continues from the last durable
event and a torn file is never appended to.

The index sidecar is then made consistent with the recovered end: records
past the end are dropped; a sidecar that is missing (for a log larger than
one index step), unreadable, or whose last record disagrees with the log is
rebuilt by a scan.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runevents.eventlog.files import rfind_newline
from runevents.eventlog.index import (
    EVERY_BYTES,
    HEADER,
    RECORD,
    SparseIndex,
    build_index,
    line_sequence,
)
from runevents.events import RUN_COMPLETED, Event, decode_event
from runevents.exceptions import InvalidEvent, StorageError

#: a "line" longer than this cannot be an event: it is garbage, not worth decoding
MAX_LINE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Recovered:
    """The state of a log after recovery."""

    #: offset just after the last good line (the file's size now)
    end: int
    #: sequence of the last good line (0: empty log)
    last_sequence: int
    #: the last good line is run.completed
    ended: bool
    #: quarantine file that received a torn tail, if any
    quarantined: Path | None
    #: bytes moved to quarantine
    torn_bytes: int


def _last_good_line(fd: int, size: int, run_id: str) -> tuple[int, Event | None]:
    """``(end offset, event)`` of the last complete line that is an event of ``run_id``."""
    search_end = size
    while search_end > 0:
        nl = rfind_newline(fd, search_end)
        if nl < 0:
            break
        start = rfind_newline(fd, nl) + 1
        if nl + 1 - start <= MAX_LINE_BYTES:
            line = os.pread(fd, nl + 1 - start, start)
            try:
                event = decode_event(line)
            except InvalidEvent:
                event = None
            if event is not None and event.run_id == run_id and event.sequence >= 1:
                return nl + 1, event
        # a complete line that is not an event (garbage after a crash): torn as well
        search_end = start
    return 0, None


def _quarantine(fd: int, path: Path, start: int, end: int) -> Path:
    """Copy bytes ``[start, end)`` of the log to a new ``<log>.torn-<n>`` file, fsynced."""
    taken = {
        int(p.name.rsplit("-", 1)[1])
        for p in path.parent.glob(f"{path.name}.torn-*")
        if p.name.rsplit("-", 1)[1].isdigit()
    }
    target = path.with_name(f"{path.name}.torn-{max(taken, default=0) + 1}")
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        position = start
        while position < end:
            data = os.pread(fd, min(1 << 20, end - position), position)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
            position += len(data)
        os.fsync(out)
    finally:
        os.close(out)
    return target


def recover_log(
    fd: int, path: Path, run_id: str, checkpoint: tuple[int, int] | None = None
) -> Recovered:
    """Find the last good line of the log open at ``fd``; quarantine and cut what follows."""
    try:
        size = os.fstat(fd).st_size
        end, event = _last_good_line(fd, size, run_id)
        quarantined = None
        if end < size:
            quarantined = _quarantine(fd, path, end, size)
            os.ftruncate(fd, end)
            os.fsync(fd)
    except OSError as exc:
        raise StorageError(f"cannot recover the log {path}: {exc}") from exc
    return Recovered(
        end=end,
        last_sequence=event.sequence if event is not None else 0,
        ended=event is not None and event.type == RUN_COMPLETED,
        quarantined=quarantined,
        torn_bytes=size - end,
    )


def _blocks(fd: int, end: int, size: int = 1 << 20) -> Iterator[bytes]:
    position = 0
    while position < end:
        data = os.pread(fd, min(size, end - position), position)
        if not data:
            return
        position += len(data)
        yield data


def _record_matches(fd: int, sequence: int, offset: int, end: int) -> bool:
    """Whether a line of ``sequence`` starts at ``offset`` (checked against the log)."""
    if offset >= end:
        return False
    if offset > 0 and os.pread(fd, 1, offset - 1) != b"\n":
        return False
    head = os.pread(fd, min(4096, end - offset), offset)
    nl = head.find(b"\n")
    found = line_sequence(head[: nl + 1] if nl >= 0 else head)
    return found == sequence


def recover_index(
    fd: int, index_path: Path, end: int, every_bytes: int = EVERY_BYTES
) -> tuple[SparseIndex, int | None]:
    """The log's index, consistent with ``end``, and the sidecar's fd (None: no sidecar yet).

    The sidecar is rewritten if it was unreadable or stale, and built by a scan
    if it is missing for a log longer than one index step. A shorter log needs
    no record, so it gets no file (the writer creates it with the first record).
    """
    try:
        data = index_path.read_bytes()
    except FileNotFoundError:
        data = b""
        if end <= every_bytes:
            return SparseIndex(), None
    except OSError as exc:
        raise StorageError(f"cannot read the index {index_path}: {exc}") from exc
    index = SparseIndex.from_bytes(data) if data else None
    if index is not None:
        index.truncate(end)
        if len(index) and not _record_matches(fd, *index.last, end):
            index = None
    rewrite = index is None or len(HEADER) + len(index) * RECORD.size != len(data)
    if index is None:
        index, _ = build_index(_blocks(fd, end), every_bytes)
    try:
        index_fd = os.open(index_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open the index {index_path}: {exc}") from exc
    if rewrite:
        try:
            body = index.to_bytes()
            os.pwrite(index_fd, body, 0)
            if len(data) > len(body):
                os.ftruncate(index_fd, len(body))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.close(index_fd)
            raise StorageError(f"cannot write the index {index_path}: {exc}") from exc
    return index, index_fd


def recovered_payload(r: Recovered) -> dict[str, object] | None:
    """The ``log.recovered`` payload for what recovery cut (None: nothing was cut)."""
    if not r.torn_bytes:
        return None
    return {"cut_bytes": r.torn_bytes, "cut_events": None, "reason": "torn or damaged tail"}
