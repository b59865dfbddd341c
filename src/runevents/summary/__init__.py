"""The run summary (contract section 2.1): a pure reducer from a run's events to one object.

:class:`RunSummaryBuilder` is fed events in sequence order -- live, batch by
batch with :meth:`RunSummaryBuilder.add_events` as a run appends them, or from
a stored log with :meth:`RunSummaryBuilder.add_line` -- and
:meth:`RunSummaryBuilder.build` returns the summary. Its state is bounded (the
kept entries, counters and fixed-size sketches), never the events, so a log of
any size and any number of distinct names is summarized in constant memory.

Rules beyond the contract's words (each is a choice the contract leaves open):

- **Only payload fields the summary reads are type-checked.** A telemetry event
  whose read fields have the wrong type is skipped and counted in
  ``events.ignored`` (it still counts in ``events.total`` and ``by_type``).
  ``bool`` is never an integer count. Required fields: ``table_id`` and
  ``source_file`` of ``run.table.summary``, ``severity`` and ``code`` of
  ``run.validation.issue``, ``phase`` of phase events; a missing required field
  makes the event malformed, a missing optional one is read as null.
- **Integers are 64-bit signed** (the row's ``row_count`` is a BIGINT). A read
  integer outside -2**63 .. 2**63-1 is a wrong type: the event is malformed
  (``events.ignored``). Sums and counts (``row_count``, ``issues_total``, the
  counts by severity / code, ``console.masked``) are summed exactly and shown
  *saturated* at 2**63-1 (or -2**63): the contract asks for the sum, and the
  nearest value the row can hold is the one that keeps "the row's fields equal
  the summary's" and never fails a completion; exact sums make the result
  independent of the order tables are added in. The row's ``exit_code`` (a
  32-bit column) is ``execution.exit_code`` when it fits, else null.
- **A ``run.completed`` ``failure`` or ``execution`` that is not an object** is
  read as absent (so the last ``run.error`` may stand in for the failure); the
  rest of that run.completed still counts. Only a non-object payload or a
  non-string ``status`` makes it malformed.
- **No string of the summary holds U+0000**: it is replaced by U+FFFD as the
  string (or key) enters the summary, as ``db/rows.py`` would replace it in the
  row (Postgres cannot store it), so the row and the stored ``run.completed``
  hold the same object (``bounds.storable``). Names differing only there
  (``a\\x00``, ``a\\ufffd``) are one key, counted together.
- **``run.completed``'s own ``payload.summary`` is never read**: the server
  replaces it with this summary, so rebuilding from the stored log gives the
  same object as building before it was stored.
- **A log without ``run.completed``** (a live run, or a partial log) still
  builds: ``status``, ``failure`` and ``execution.completed_at`` are null and a
  phase that never completed and has no later phase start gets a null
  ``duration_ms``, because the run has no end yet.
- **Phase matching**: a completed event closes the latest still-open start of
  the same scope and phase name; a completed event with no open start adds no
  entry. Durations derived from timestamps are whole milliseconds, truncated,
  never negative (producers may supply skewed ``created_at`` values).
- **``max_severity``** is computed from ``issues_by_severity``; a producer's own
  ``max_severity`` is used only when it sent no ``issues_by_severity`` map, and
  only if it is one of the ranked names. A missing ``issues_total`` is the sum
  of ``issues_by_severity``.
- **``console.masked``** sums the ``payload.masked`` counts the server writes
  into every event in which it replaced a secret by ``***`` (any event type:
  console lines, structured events, a producer's ``run.completed``), so the
  count is read from the log like every other figure. Only positive ints
  count; the key is the server's (it drops a producer's own ``masked``).
- Maps in the output (``by_type``, ``by_stream``, ...) are sorted by key so the
  serialized summary is byte-for-byte deterministic.

Bounds (contract 2.1: at most 256 KiB; issue 13 defect 3):

- Every list or map keeps its first 1,000 entries in the order it is listed
  (``phases`` in start order; maps and ``by_file`` sorted by key) and the top-level
  ``truncated`` says how many were cut, by dotted field name (``{}`` if none).
  Counts of cut keys are exact up to 16,384 distinct keys, then HyperLogLog
  estimates (``bounds.py``); tables past the first 2,048 ids are folded as
  they come (``tables.py``). Memory stays bounded whatever the run produced.
- Names read from producers that become keys (type, stream, level, phase,
  code, severity, source_file) are counted by the whole name: one longer than
  256 characters is shown as its first 239 characters, ``…`` and 16 hex digits
  of a stable 64-bit hash of the whole name (``bounds.name_key``), so names
  sharing a long prefix stay distinct entries and every kept key is at most 256
  characters. Other strings are cut to 256 characters (status, stage, a
  failure's code) or 4,096 (a ``message``), ending in ``…``; a
  ``run.completed`` ``failure`` / ``execution`` over 4 KiB of JSON keeps only
  its pinned keys.
- A final guard measures the encoded summary and, while it exceeds 256 KiB,
  cuts the last entry of the field taking the most bytes (counted in
  ``truncated``), so the bound holds whatever the producer sent.
- Live runs fold each batch with ``add_events``; ``preview(pending)`` builds the
  summary as if ``pending`` were added without changing the builder.
"""

from runevents.summary.builder import (
    SUMMARY_SCHEMA,
    RunSummaryBuilder,
    row_exit_code,
    run_fields,
    summarize_lines,
)
from runevents.summary.snippet import SNIPPET_BYTES
from runevents.summary.telemetry import SEVERITY_RANK

__all__ = [
    "SEVERITY_RANK",
    "SNIPPET_BYTES",
    "SUMMARY_SCHEMA",
    "RunSummaryBuilder",
    "row_exit_code",
    "run_fields",
    "summarize_lines",
]
