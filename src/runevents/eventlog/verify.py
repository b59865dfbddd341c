"""Forward verification of a plain log: where its valid lines and its whole write units end.

Recovery (``recovery.py``) decides what to cut; this module only reads. From a
position whose sequence is known it reads the log forward in 1 MiB blocks and
checks every line: it is complete (ends with ``\\n``), holds no NUL byte (a
block that never reached the disk reads back as zeros), is a JSON object
whose ``type`` is a string and whose ``run_id`` and ``sequence`` are this
run's and the next number, and no line follows ``run.completed``. It stops at
the first line that fails and says why.

It also remembers where the last line ending with :data:`~runevents.events.UNIT_END`
(``b" \\n"``) ends: the writer ends every write unit (an ingest batch, an
executor emit, a server event) that way, so whole lines after the last marker
belong to a unit that did not reach the disk whole.

Speed: a clean block is checked with one ``msgspec`` ``decode_lines`` call into a
two-field struct plus a few ``bytes.count``/``find`` calls (all in C); the
sequence and run checks run over the decoded list with ``map``. Only a block
that fails the fast check is walked line by line, to find the culprit and the
reason. See ``bench/bench_recovery.py`` for the measured rate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from operator import attrgetter

import msgspec

from runevents.events import RUN_COMPLETED_PREFIX, UNIT_END

#: read size of the scan
BLOCK_BYTES = 1024 * 1024
#: a "line" longer than this cannot be an event: it is garbage, not worth decoding
MAX_LINE_BYTES = 64 * 1024 * 1024
#: how every encoded envelope starts (``type`` is the first field, a string)
LINE_HEAD = b'{"type":"'
_NEXT_HEAD = b"\n" + LINE_HEAD
_NEXT_COMPLETED = b"\n" + RUN_COMPLETED_PREFIX


class _Head(msgspec.Struct, gc=False):
    """The two fields recovery checks; msgspec still parses (and so validates) the rest."""

    sequence: int
    run_id: str


_decoder = msgspec.json.Decoder(_Head)
_sequence_of = attrgetter("sequence")
_run_of = attrgetter("run_id")


@dataclass(slots=True)
class Scan:
    """What a forward scan found, from ``start`` (whose line before holds ``start_sequence``)."""

    start: int
    start_sequence: int
    #: end of the last valid line (== the file size when everything is valid)
    valid_end: int
    #: sequence of the last valid line
    valid_sequence: int
    #: end of the last valid line that ends a write unit (None: no marker seen)
    unit_end: int | None = None
    #: sequence of that line
    unit_sequence: int = 0
    #: end of the run.completed line, if one was seen (it is then the last valid line)
    completed_end: int | None = None
    #: why the line at ``valid_end`` is not valid (None: every byte to EOF is valid)
    problem: str | None = None
    #: the failing line is the last one and has no newline (a torn write)
    partial: bool = False


def describe_line(line: bytes, expected: int, run_id: str, after_completed: bool) -> str | None:
    """Why ``line`` (a complete line) is not event ``expected`` of ``run_id``; None if it is."""
    zeros = line.count(0)
    if zeros:
        return f"a zeroed block: {zeros} NUL bytes" if zeros >= 16 else f"{zeros} NUL bytes"
    if after_completed:
        return "a line after run.completed"
    if not line.startswith(LINE_HEAD):
        return "not an event line"
    try:
        head = _decoder.decode(line)
    except msgspec.ValidationError as exc:
        return f"not an event: {exc}"
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return f"not a JSON line: {exc}"
    if head.run_id != run_id:
        return f"an event of another run ({head.run_id[:40]!r})"
    if head.sequence != expected:
        return f"sequence {head.sequence} where {expected} was expected"
    return None


class _Scanner:
    """The state of one scan, advanced one block of complete lines at a time."""

    def __init__(self, scan: Scan, run_id: str) -> None:
        self.scan = scan
        self.run_id = run_id

    def feed(self, body: bytes) -> bool:
        """Check ``body`` (complete lines at ``scan.valid_end``); False once a line fails."""
        return self._fast(body) or self._slow(body)

    def _fast(self, body: bytes) -> bool:
        """The whole of ``body`` is valid (checked in C); False means "look line by line"."""
        scan = self.scan
        n = body.count(b"\n")
        if (
            scan.completed_end is not None
            or body.find(0) >= 0
            or not body.startswith(LINE_HEAD)
            or body.count(_NEXT_HEAD) != n - 1
        ):
            return False
        try:
            heads = _decoder.decode_lines(body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return False
        # every line starts an object, so n objects means exactly one per line
        first = scan.valid_sequence + 1
        if (
            len(heads) != n
            or list(map(_sequence_of, heads)) != list(range(first, first + n))
            or any(run != self.run_id for run in set(map(_run_of, heads)))
        ):
            return False
        completed = body.startswith(RUN_COMPLETED_PREFIX) + body.count(_NEXT_COMPLETED)
        if completed:
            last_start = body.rfind(b"\n", 0, len(body) - 1) + 1
            if completed > 1 or not body.startswith(RUN_COMPLETED_PREFIX, last_start):
                return False  # a line follows run.completed: find it below
            scan.completed_end = scan.valid_end + len(body)
        marker = body.rfind(UNIT_END)
        if marker >= 0:
            scan.unit_end = scan.valid_end + marker + len(UNIT_END)
            scan.unit_sequence = scan.valid_sequence + body.count(b"\n", 0, marker + len(UNIT_END))
        scan.valid_end += len(body)
        scan.valid_sequence += n
        return True

    def _slow(self, body: bytes) -> bool:
        scan = self.scan
        pos = 0
        while pos < len(body):
            nl = body.index(b"\n", pos)
            line = body[pos : nl + 1]
            problem = describe_line(
                line, scan.valid_sequence + 1, self.run_id, scan.completed_end is not None
            )
            if problem is not None:
                scan.problem = problem
                return False
            scan.valid_end += len(line)
            scan.valid_sequence += 1
            if line.endswith(UNIT_END):
                scan.unit_end, scan.unit_sequence = scan.valid_end, scan.valid_sequence
            if line.startswith(RUN_COMPLETED_PREFIX):
                scan.completed_end = scan.valid_end
            pos = nl + 1
        return True


def scan_forward(
    fd: int,
    start: int,
    start_sequence: int,
    run_id: str,
    size: int,
    *,
    ended: bool = False,
    block: int = BLOCK_BYTES,
) -> Scan:
    """Check the lines of ``[start, size)`` of the log open at ``fd``.

    ``start`` must be the start of a line (0, or just after a ``\\n``) and the
    line before it must hold ``start_sequence`` (0 at offset 0); ``ended``: that
    line is run.completed (so any line after it is damage). Raises OSError.
    """
    scan = Scan(start, start_sequence, start, start_sequence)
    if ended:
        scan.completed_end = start
    scanner = _Scanner(scan, run_id)
    pieces: list[bytes] = []  # a partial line carried into the next block
    carried = 0
    position = start
    while position < size:
        data = os.pread(fd, min(block, size - position), position)
        if not data:
            break  # the file shrank under us: what is left is checked as the tail
        position += len(data)
        last_nl = data.rfind(b"\n")
        if last_nl < 0:
            pieces.append(data)
            carried += len(data)
            if carried > MAX_LINE_BYTES:
                scan.problem = f"a line longer than {MAX_LINE_BYTES} bytes"
                return scan
            continue
        body = data[: last_nl + 1]
        if pieces:
            body = b"".join([*pieces, body])
            pieces, carried = [], 0
        if not scanner.feed(body):
            return scan
        if last_nl + 1 < len(data):
            pieces.append(data[last_nl + 1 :])
            carried = len(data) - last_nl - 1
    if pieces:
        tail = b"".join(pieces)
        zeros = tail.count(0)
        scan.problem = f"a partial last line of {len(tail)} bytes" + (
            f" ({zeros} of them NUL)" if zeros else ""
        )
        scan.partial = True
    return scan
