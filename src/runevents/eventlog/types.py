"""The small value types of the event log engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from runevents.events import RUN_COMPLETED_PREFIX

LogForm = Literal["live", "plain", "compressed"]


@dataclass(frozen=True)
class RunRef:
    """Which run's log. The storage key uses only ``workspace_id`` and ``run_id``."""

    workspace_id: str
    configuration_id: str
    run_id: str


@dataclass(slots=True)
class Chunk:
    """Complete NDJSON lines of one log, in order, with no gap.

    ``data`` holds the lines of sequences ``first_sequence..last_sequence``,
    each ending with ``\\n`` (sequences are positional: the k-th line is
    ``first_sequence + k``). ``ends_run``: the last line is ``run.completed``.
    ``cache`` lets consumers memoize what they derive from ``data`` (SSE
    frames, ...): live subscribers that are caught up share one Chunk object.
    """

    first_sequence: int
    last_sequence: int
    data: bytes
    ends_run: bool
    cache: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SealInfo:
    """Where a sealed log is and how big it is."""

    #: local absolute path (file://) or URL (s3://bucket/prefix/key) of the log
    events_path: str
    event_count: int
    bytes: int


@dataclass(frozen=True, slots=True)
class CompactInfo:
    """The compressed form written by :meth:`EventLog.compact` (the plain log is still there)."""

    #: local path or URL of the compressed log
    events_path: str
    event_count: int
    #: size of the compressed log
    bytes: int
    #: size of the plain log it replaces
    source_bytes: int
    frames: int


@dataclass(frozen=True, slots=True)
class LogStats:
    """What storage holds for one run's log."""

    event_count: int
    bytes: int
    #: live: being written (or not yet ended); plain: ended NDJSON; compressed: zstd frames;
    #: None: no log at all
    form: LogForm | None


def ends_with_completed(data: bytes | bytearray, end: int | None = None) -> bool:
    """Whether the last line of ``data[:end]`` (complete lines) is a ``run.completed``.

    The envelope's first field is ``type``, so no decoding is needed.
    """
    stop = len(data) if end is None else end
    if stop == 0:
        return False
    start = data.rfind(b"\n", 0, stop - 1) + 1
    return data.startswith(RUN_COMPLETED_PREFIX, start)
