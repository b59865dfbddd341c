"""Crash recovery of a live log before a writer appends to it (contract section 2.2).

A crash can leave three kinds of damage: a torn last line (kill -9 mid-write),
whole lines of a write unit that did not reach the disk whole (kill -9 between
the pages of one batch), and -- after a machine crash -- a block that never
reached the disk while later ones did (it reads back as zeros, mid-file).

:func:`recover_log` reads the log FORWARD from a known-durable checkpoint (or
from offset 0) and checks every line (``verify.py``). It cuts at the first
byte that is not a whole, valid event of this run with the next sequence and,
for a log written with unit markers, further back to the end of the last
write unit that is whole (the last line ending with ``b" \\n"``): an ingest
batch is never kept in part. The cut bytes are copied to a quarantine file
beside the log (``events.ndjson.torn-<n>``, fsynced, directory fsynced) and
only then is the log truncated and fsynced, so nothing is ever lost between
the two. A log whose first line has no marker was written before markers
(a *legacy* log): only its lines are checked, until a marker shows up.

The index sidecar is then made consistent with the recovered end: records
past the end are dropped; a sidecar that is missing (for a log larger than
one index step), unreadable, or whose last record disagrees with the log is
rebuilt by a scan.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runevents.eventlog.files import rfind_newline
from runevents.eventlog.index import (
    EVERY_BYTES,
    HEADER,
    RECORD,
    SparseIndex,
    build_index,
    line_sequence,
)
from runevents.eventlog.verify import MAX_LINE_BYTES, Scan, describe_line, scan_forward
from runevents.events import RUN_COMPLETED_PREFIX, UNIT_END
from runevents.exceptions import StorageError
from runevents.logstore.local import fsync_dir

__all__ = ["MAX_LINE_BYTES", "Recovered", "recover_index", "recover_log", "recovered_payload"]


@dataclass(frozen=True, slots=True)
class Recovered:
    """The state of a log after recovery."""

    #: offset just after the last good line (the file's size now)
    end: int
    #: sequence of the last good line (0: empty log)
    last_sequence: int
    #: the last good line is run.completed
    ended: bool
    #: quarantine file that received the cut bytes, if any
    quarantined: Path | None
    #: bytes cut from the log (and moved to quarantine)
    cut_bytes: int = 0
    #: whole, valid event lines cut because their write unit was not written whole; None
    #: when the cut part is not just such lines plus a torn last line (damaged bytes)
    cut_events: int | None = 0
    #: why, for people ("" when nothing was cut)
    reason: str = ""
    #: where the scan started: the checkpoint's offset when it was verified, else 0
    scanned_from: int = 0
    #: the cut is already marked by a ``log.recovered`` line written in its place
    marked: bool = False

    @property
    def torn_bytes(self) -> int:
        """The former name of :attr:`cut_bytes`."""
        return self.cut_bytes


def recovered_payload(recovered: Recovered) -> dict[str, Any] | None:
    """The payload of the ``log.recovered`` event that reports a cut; None if nothing was cut."""
    if not recovered.cut_bytes:
        return None
    return {
        "cut_bytes": recovered.cut_bytes,
        "cut_events": recovered.cut_events,
        "reason": recovered.reason,
    }


def _line_before(fd: int, offset: int) -> bytes | None:
    """The complete line that ends just before ``offset`` (None: no ``\\n`` there, or too long)."""
    if os.pread(fd, 1, offset - 1) != b"\n":
        return None
    start = rfind_newline(fd, offset - 1) + 1
    if offset - start > MAX_LINE_BYTES:
        return None
    return os.pread(fd, offset - start, start)


def _first_line_marked(fd: int, size: int) -> bool:
    """Whether the log's first line ends a write unit (the log was written with markers)."""
    position = 0
    while position < min(size, MAX_LINE_BYTES):
        data = os.pread(fd, min(64 * 1024, size - position), position)
        if not data:
            return False
        nl = data.find(b"\n")
        if nl >= 0:
            at = position + nl
            return at > 0 and os.pread(fd, 1, at - 1) == b" "
        position += len(data)
    return False


def _start(
    fd: int, size: int, run_id: str, checkpoint: tuple[int, int] | None
) -> tuple[int, int, bool, bool]:
    """``(offset, sequence, marked, ended)`` to scan from: the checkpoint if it holds, else 0.

    ``marked``: the line before the start ends a write unit; ``ended``: it is run.completed.
    """
    if checkpoint is None:
        return 0, 0, False, False
    sequence, offset = checkpoint
    if offset == 0 or offset > size or sequence < 1:
        return 0, 0, False, False
    line = _line_before(fd, offset)
    if line is None or describe_line(line, sequence, run_id, after_completed=False) is not None:
        return 0, 0, False, False
    return offset, sequence, line.endswith(UNIT_END), line.startswith(RUN_COMPLETED_PREFIX)


def _decide(scan: Scan, size: int, marked: bool) -> tuple[int, int, int | None, str]:
    """``(cut offset, last kept sequence, cut_events, reason)`` from what the scan found."""
    fail = scan.valid_end
    if scan.unit_end is not None:
        cut, kept = scan.unit_end, scan.unit_sequence
    elif marked:
        cut, kept = scan.start, scan.start_sequence  # no unit ended whole after the start
    else:
        cut, kept = fail, scan.valid_sequence  # legacy: no markers, lines only
    if cut == size:
        return cut, kept, 0, ""
    lines = scan.valid_sequence - kept  # whole valid lines of the incomplete unit
    plural = "s" if lines != 1 else ""
    unit = f"{lines} line{plural} of an incomplete write unit" if lines else ""
    if scan.problem is None:
        return cut, kept, lines, f"torn write: {unit}"
    if scan.partial:
        return cut, kept, lines, "torn write: " + (f"{unit} and " if unit else "") + scan.problem
    after = size - fail
    reason = f"damaged bytes at offset {fail} ({scan.problem})"
    if unit:
        reason += f"; the {unit} before it cut with it"
    return cut, kept, None, reason + f"; {after} bytes from there on quarantined"


#: builds the ``log.recovered`` line (a whole unit) for (sequence, payload)
MarkerLine = Callable[[int, dict[str, Any]], bytes]


def recover_log(
    fd: int,
    path: Path,
    run_id: str,
    checkpoint: tuple[int, int] | None = None,
    marker: MarkerLine | None = None,
) -> Recovered:
    """Check the log open at ``fd`` (read-write) and cut it after its last whole, valid unit.

    ``checkpoint`` is ``(sequence, offset)`` of a position known to be durable
    (the line ending just before ``offset`` holds ``sequence``; offset 0 is
    sequence 0). It is verified cheaply (one line is read) and the scan starts
    there; a checkpoint that does not hold is ignored and the whole log is
    scanned. Synchronous and possibly long (the whole log without a checkpoint):
    run it in a thread for a large file. Raises StorageError if the file cannot
    be read, quarantined or cut.

    With ``marker``, a cut is marked in the same step: the ``log.recovered`` line
    is written *at* the cut (over the damaged bytes, already quarantined) before
    the file is truncated after it, so no later failure can leave a cut that no
    event reports -- if the write fails, nothing was truncated and the next
    recovery finds the same damage.
    """
    try:
        size = os.fstat(fd).st_size
        start, sequence, marked, ended = _start(fd, size, run_id, checkpoint)
        if start and not marked:
            # a checkpoint inside a unit, or in a legacy log: the first line tells which
            marked = _first_line_marked(fd, size)
        scan = scan_forward(fd, start, sequence, run_id, size, ended=ended)
        cut, kept, cut_events, reason = _decide(scan, size, marked)
        ended = scan.completed_end == cut
        quarantined = None
        end, last, marked_cut = cut, kept, False
        if cut < size:
            quarantined = _quarantine(fd, path, cut, size)
            if marker is not None and not ended:
                payload = {"cut_bytes": size - cut, "cut_events": cut_events, "reason": reason}
                line = marker(kept + 1, payload)
                _pwrite_all(fd, line, cut)
                end, last, marked_cut = cut + len(line), kept + 1, True
            os.ftruncate(fd, end)
            os.fsync(fd)
    except OSError as exc:
        raise StorageError(f"cannot recover the log {path}: {exc}") from exc
    return Recovered(
        end=end,
        last_sequence=last,
        ended=ended,
        quarantined=quarantined,
        cut_bytes=size - cut,
        cut_events=cut_events,
        reason=reason,
        scanned_from=start,
        marked=marked_cut,
    )


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(5, "the write made no progress")
        view, offset = view[written:], offset + written


def _quarantine(fd: int, path: Path, start: int, end: int) -> Path:
    """Copy bytes ``[start, end)`` of the log to a new ``<log>.torn-<n>`` file, durably."""
    taken = {
        int(p.name.rsplit("-", 1)[1])
        for p in path.parent.glob(f"{path.name}.torn-*")
        if p.name.rsplit("-", 1)[1].isdigit()
    }
    target = path.with_name(f"{path.name}.torn-{max(taken, default=0) + 1}")
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
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
        # the name must be durable before the log is cut: the bytes live only here then
        fsync_dir(path.parent)
    except BaseException:
        # the log is untouched (it still holds the bytes): a failed attempt (a full disk)
        # leaves no empty or partial quarantine file, so each cut has exactly one
        with contextlib.suppress(OSError):
            target.unlink()
        raise
    return target


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
