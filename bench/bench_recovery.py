"""Crash recovery: how long checking a run's log takes before a writer appends to it.

Recovery (``runevents.eventlog.recovery.recover_log``, contract section 2.2)
reads the log forward from a known-durable checkpoint, or from offset 0 when
there is none, and checks every line (complete, no NUL byte, this run's next
sequence; see ``eventlog/verify.py``). Measured on one clean log of write units
of 1,000 events (the writer's unit markers included), lines averaging ~400
bytes like the rest of the suite: 1 GiB (64 MiB with ``--quick``), in the
page cache (it was just written), so this is the CPU cost of the check:

- full scan events/s and MB/s, and the seconds it takes for 1 GiB (measured
  on 1 GiB in full mode, extrapolated from 64 MiB with ``--quick``), vs the
  read limit (``pread`` of the same file in the same 1 MiB blocks, nothing
  checked);
- with a checkpoint 1 MiB before the end: what a writer that recorded one
  pays (milliseconds, whatever the log's size);
- a log damaged 8 MiB before its end (a zeroed 4 KiB block): full scan, cut,
  8 MiB quarantined and fsynced, log truncated and fsynced.

MB = 10^6 bytes. Best of 3 runs (1 with ``--quick``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from common import DEFAULT_RUN_ID, Row, iter_console_events, main, ratio, row

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from runevents.eventlog.index import line_sequence  # noqa: E402
from runevents.eventlog.recovery import recover_log  # noqa: E402
from runevents.events import UNIT_END, Event, encode_batch, mark_unit_end  # noqa: E402

SECTION = "recovery"
MiB = 1024 * 1024
GiB = 1024 * MiB
UNIT = 1000
TEMPLATE_EVENTS = 20_000


def _write_log(path: Path, target: int) -> tuple[int, int]:
    """A clean marker log of about ``target`` bytes; (events, bytes)."""
    template = [
        msgspec.convert(e, Event)
        for e in iter_console_events(TEMPLATE_EVENTS, run_id=DEFAULT_RUN_ID)
    ]
    replace = msgspec.structs.replace
    size = events = 0
    with path.open("wb", buffering=8 * MiB) as f:
        while size < target:
            base = events
            unit = [
                replace(template[(base + i) % TEMPLATE_EVENTS], sequence=base + i + 1)
                for i in range(UNIT)
            ]
            data = mark_unit_end(encode_batch(unit))
            f.write(data)
            size += len(data)
            events += UNIT
    return events, size


def _read_limit(path: Path) -> float:
    """Seconds to pread the whole file in 1 MiB blocks (nothing checked)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        start = time.perf_counter()
        position = 0
        while position < size:
            position += len(os.pread(fd, MiB, position))
        return time.perf_counter() - start
    finally:
        os.close(fd)


def _recover(
    path: Path, checkpoint: tuple[int, int] | None = None
) -> tuple[float, int, int, float]:
    """(wall seconds, kept bytes, cut bytes, CPU seconds) of one recovery of ``path``."""
    fd = os.open(path, os.O_RDWR)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        recovered = recover_log(fd, path, DEFAULT_RUN_ID, checkpoint)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        return wall, recovered.end, recovered.cut_bytes, cpu
    finally:
        os.close(fd)


def _checkpoint_near_end(path: Path, size: int) -> tuple[int, int]:
    """(sequence, offset) of the last unit end at least 1 MiB before the end of the log."""
    with path.open("rb") as f:
        window_start = max(0, size - 3 * MiB)
        f.seek(window_start)
        window = f.read()
    mark = window.rfind(UNIT_END, 0, len(window) - MiB) + len(UNIT_END)
    line_start = window.rfind(b"\n", 0, mark - 1) + 1
    sequence = line_sequence(window[line_start:mark])
    assert sequence is not None
    return sequence, window_start + mark


def collect(quick: bool) -> list[Row]:
    """Rows of the recovery section (see the module docstring)."""
    target = 64 * MiB if quick else GiB
    repeat = 1 if quick else 3
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rbench-recovery-") as tmp:
        path = Path(tmp) / "events.ndjson"
        events, size = _write_log(path, target)
        read_s = min(_read_limit(path) for _ in range(repeat))
        scans = [_recover(path) for _ in range(repeat)]
        assert all(kept == size and cut == 0 for _, kept, cut, _ in scans), "a clean log was cut"
        scan_s = min(scan[0] for scan in scans)
        scan_cpu = min(scan[3] for scan in scans)
        label = f"{size / GiB:.2f} GiB" if not quick else f"{size / MiB:.0f} MiB"
        rows.append(
            row(
                SECTION,
                f"full scan of a clean {label} log",
                events / scan_s,
                "events/s",
                "read limit",
                ratio(size / scan_s, size / read_s),
                f"{size / scan_s / 1e6:.0f} MB/s vs {size / read_s / 1e6:.0f} MB/s read; "
                f"{events:,} events of ~{size // events} B, units of {UNIT}, warm cache",
            )
        )
        rows.append(
            row(
                SECTION,
                "full scan, seconds per GiB" + (" (extrapolated)" if quick else ""),
                scan_s * GiB / size,
                "s",
                note="what a writer without a checkpoint pays on a 1 GiB log (wall clock)",
            )
        )
        rows.append(
            row(
                SECTION,
                "full scan, CPU seconds per GiB" + (" (extrapolated)" if quick else ""),
                scan_cpu * GiB / size,
                "s",
                note="the same in CPU time: what it costs on a machine that is not shared",
            )
        )
        checkpoint = _checkpoint_near_end(path, size)
        near = min(_recover(path, checkpoint)[0] for _ in range(repeat))
        rows.append(
            row(
                SECTION,
                "scan from a checkpoint 1 MiB before the end",
                near * 1000,
                "ms",
                "full scan",
                ratio(near, scan_s),
                "one line read to verify the checkpoint, then 1 MiB checked",
            )
        )
        # damage: a zeroed 4 KiB block 8 MiB before the end (the copy is restored each time)
        hole = size - 8 * MiB
        restore_from = hole - 4 * MiB  # the cut goes back to a unit end, < 1 MiB before
        with path.open("rb") as f:
            f.seek(restore_from)
            original = f.read()
        timings = []
        for _ in range(repeat):
            with path.open("r+b") as f:
                f.seek(restore_from)
                f.write(original)
                f.seek(hole)
                f.write(bytes(4096))
            seconds, kept, cut, _ = _recover(path)
            assert kept <= hole and cut >= size - hole, "the damage was not cut"
            timings.append(seconds)
            for torn in Path(tmp).glob("events.ndjson.torn-*"):
                torn.unlink()
        rows.append(
            row(
                SECTION,
                "damaged 8 MiB before the end: scan, quarantine, cut",
                min(timings),
                "s",
                "full scan",
                ratio(min(timings), scan_s),
                f"{cut / MiB:.1f} MiB quarantined and fsynced, the log truncated and fsynced",
            )
        )
    return rows


if __name__ == "__main__":
    main(collect)
