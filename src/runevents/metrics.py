"""Every Prometheus metric of runevents, and the one-line hooks that move them.

All metrics are defined here, with the official ``prometheus-client``, in one
registry of our own (:data:`REGISTRY`; the library's default registry is left
to the embedding program). Code elsewhere never touches a metric object: it
calls a hook below (``metrics.fsync_observed(seconds)``), so the write path
carries one line per measurement point and metrics can be switched off
(``RUNEVENTS_METRICS_ENABLED=false``: every hook returns at once).

Cost: hooks run per batch, per flush or per request, never per event; a
counter increment is a lock and an add (well under a microsecond), so ingest
with metrics on stays within a few percent of off (measured in
``bench/bench_metrics.py``).

Processes. Each ``runevents serve`` replica serves its own ``/metrics`` and
is its own scrape target; a standalone ``runevents worker`` serves its
counters with ``--metrics-port``. That is the deployment the client library
calls single-process, and it needs nothing more. Several processes behind
*one* port (gunicorn with uvicorn workers) need the client's multi-process
mode: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before start;
counters and histograms then live in memory-mapped files and
:func:`render` aggregates them (gauges below say how: followers are summed
over live processes). The database-derived gauges (:class:`StateCollector`,
``metrics_state.py``) are computed by the process that answers the scrape in
either mode, since they count rows, not process activity.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)

# re-exported: callers build it as ``metrics.StateCollector``
from runevents.metrics_state import StateCollector as StateCollector

if TYPE_CHECKING:
    from runevents.models import Run

#: the Prometheus text format the route answers with
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: the registry of every metric below (not the library's global default)
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
# the ``*_created`` series double the output and no alert or panel here uses them
disable_created_metrics()  # type: ignore[no-untyped-call]

_enabled = True


def set_enabled(enabled: bool) -> None:
    """Switch every hook on or off (``Settings.metrics_enabled``; the bench's baseline)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


def multiprocess_mode() -> bool:
    """True when the client keeps values in ``PROMETHEUS_MULTIPROC_DIR`` (decided at import)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


# Buckets in seconds, chosen per what is measured: an fsync takes 0.1 ms on a
# good SSD and seconds on a struggling network disk; a run takes seconds to days.
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 7200, 21600, 86400)

# ---------------------------------------------------------------------------- write path
EVENTS_APPENDED = Counter(
    "runevents_events_appended_total",
    "Events committed to run logs, by who produced them (ingest, executor, server)",
    ["source"],
    registry=REGISTRY,
)
#: who is appending in this context: "ingest" (set by the HTTP edge for the length of a
#: producer's request), "executor" (set by the worker for the task that executes a run),
#: else "server" (run.queued, cancels, reaped and timed-out runs). A context variable,
#: because one writer serves several of them (an external run's writer is opened by
#: create_run and then takes the producer's batches).
APPEND_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar(
    "runevents_append_source", default="server"
)
_APPENDED_BY_SOURCE = {s: EVENTS_APPENDED.labels(s) for s in ("ingest", "executor", "server")}
BYTES_APPENDED = Counter(
    "runevents_bytes_appended_total",
    "Bytes written to live run logs (the events' NDJSON lines)",
    registry=REGISTRY,
)
FSYNC_SECONDS = Histogram(
    "runevents_fsync_seconds",
    "Time of one fsync of a live log (fsync=flush or batch)",
    buckets=FSYNC_BUCKETS,
    registry=REGISTRY,
)
WRITE_FAILURES = Counter(
    "runevents_write_failures_total",
    "Log writes or fsyncs that failed (each retry counts); the run is flagged degraded",
    ["operation"],
    registry=REGISTRY,
)
_WRITE_FAILED = {op: WRITE_FAILURES.labels(op) for op in ("write", "fsync")}

# ---------------------------------------------------------------------------- ingest
INGEST_BATCHES = Counter(
    "runevents_ingest_batches_total",
    "Producer ingest requests (POST .../events), by HTTP status",
    ["outcome"],
    registry=REGISTRY,
)
INGEST_SECONDS = Histogram(
    "runevents_ingest_seconds",
    "Time from an ingest request's arrival to its answer's start",
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
INGEST_FORWARDED = Counter(
    "runevents_ingest_forwarded_total",
    "Ingest batches that met another process's writer, by what became of them: answered "
    "(relayed to the owner, its answer returned), unreachable, no_owner, not_again (503). "
    "A relayed batch is also in runevents_ingest_batches_total of both replicas",
    ["outcome"],
    registry=REGISTRY,
)

# ---------------------------------------------------------------------------- runs
RUNS_COMPLETED = Counter(
    "runevents_runs_completed_total",
    "Runs finished by this process, by final status",
    ["status"],
    registry=REGISTRY,
)
RUN_DURATION = Histogram(
    "runevents_run_duration_seconds",
    "Run duration (started, or created if it never started, to completed), by final status",
    ["status"],
    buckets=RUN_BUCKETS,
    registry=REGISTRY,
)
RUNS_REAPED = Counter(
    "runevents_runs_reaped_total",
    "Runs whose worker lease expired, finished failed (worker_lost) by this process",
    registry=REGISTRY,
)
REPAIR_FINDINGS = Counter(
    "runevents_repair_findings_total",
    "Runs a crash or an outage left half done, finished by the repair loop, by kind",
    ["kind"],
    registry=REGISTRY,
)
WRITER_LEASES_LOST = Counter(
    "runevents_writer_leases_lost_total",
    "Writer leases this process found taken over (its writer was fenced out)",
    registry=REGISTRY,
)
LEASE_RENEWALS = Counter(
    "runevents_lease_renewals_total",
    "Worker lease renewals (heartbeats) by this process",
    registry=REGISTRY,
)

# ---------------------------------------------------------------------------- tail path
SSE_FOLLOWERS = Gauge(
    "runevents_sse_followers",
    "Open SSE streams of run events",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
LONGPOLL_WAITERS = Gauge(
    "runevents_longpoll_waiters",
    "Long-poll reads waiting for events (GET .../events?wait=S, Durable Streams long-poll)",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
SSE_SEND_TIMEOUTS = Counter(
    "runevents_sse_send_timeouts_total",
    "SSE clients dropped because they took no data for sse_send_timeout_seconds",
    registry=REGISTRY,
)
FOLLOWERS_BEHIND_RING = Counter(
    "runevents_followers_behind_ring_total",
    "Times a follower fell behind the in-memory ring and read the log file instead",
    registry=REGISTRY,
)
NOTIFY_WAKEUPS = Counter(
    "runevents_notify_wakeups_total",
    "Wake-ups of live readers: local (a writer here) or postgres (LISTEN/NOTIFY)",
    ["origin"],
    registry=REGISTRY,
)
_WAKE_LOCAL = NOTIFY_WAKEUPS.labels("local")
_WAKE_POSTGRES = NOTIFY_WAKEUPS.labels("postgres")
POLL_FALLBACKS = Counter(
    "runevents_notify_poll_fallbacks_total",
    "New log data found by the poll timer, not by a notification (a writer elsewhere)",
    registry=REGISTRY,
)

# ---------------------------------------------------------------------------- storage
LOGSTORE_SECONDS = Histogram(
    "runevents_logstore_request_seconds",
    "Log store operations (a read: until its first chunk), by backend and operation",
    ["backend", "operation"],
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
LOGSTORE_ERRORS = Counter(
    "runevents_logstore_errors_total",
    "Log store operations that failed (a missing object is an answer, not an error)",
    ["backend", "operation"],
    registry=REGISTRY,
)
MAINTENANCE_RUNS = Counter(
    "runevents_maintenance_runs_total",
    "Runs compacted or expired by maintenance passes in this process",
    ["action"],
    registry=REGISTRY,
)
MAINTENANCE_BYTES_IN = Counter(
    "runevents_maintenance_bytes_in_total",
    "Log bytes before compaction / freed by retention",
    ["action"],
    registry=REGISTRY,
)
MAINTENANCE_BYTES_OUT = Counter(
    "runevents_maintenance_bytes_out_total",
    "Log bytes after compaction (0 for retention: the body is gone)",
    ["action"],
    registry=REGISTRY,
)
MAINTENANCE_ERRORS = Counter(
    "runevents_maintenance_errors_total",
    "Runs a maintenance pass failed to compact or expire",
    ["action"],
    registry=REGISTRY,
)


# ---------------------------------------------------------------------------- hooks
# One call per measurement point; each returns at once when metrics are off.


def bind_source(source: str) -> None:
    """Events committed by the current task (and tasks it starts) come from ``source``."""
    APPEND_SOURCE.set(source)


def events_appended(count: int) -> None:
    """A writer committed ``count`` events (one call per batch)."""
    if _enabled:
        source = APPEND_SOURCE.get()
        (_APPENDED_BY_SOURCE.get(source) or EVENTS_APPENDED.labels(source)).inc(count)


def bytes_written(count: int) -> None:
    """``count`` bytes of a live log reached the file."""
    if _enabled:
        BYTES_APPENDED.inc(count)


def fsync_observed(seconds: float) -> None:
    """One fsync of a live log took ``seconds``."""
    if _enabled:
        FSYNC_SECONDS.observe(seconds)


def write_failed(operation: str) -> None:
    """A log ``write`` or ``fsync`` failed."""
    if _enabled:
        (_WRITE_FAILED.get(operation) or WRITE_FAILURES.labels(operation)).inc()


def ingest_answered(status: int, seconds: float) -> None:
    """An ingest request was answered with ``status`` after ``seconds``."""
    if _enabled:
        INGEST_BATCHES.labels(str(status)).inc()
        INGEST_SECONDS.observe(seconds)


def ingest_forwarded(outcome: str) -> None:
    """A batch met another process's writer (``api/forward.py``'s outcomes)."""
    if _enabled:
        INGEST_FORWARDED.labels(outcome).inc()


def run_finished(run: Run) -> None:
    """``run``'s row was finished: count it by status, with its duration."""
    if not _enabled:
        return
    status = run.status.value
    RUNS_COMPLETED.labels(status).inc()
    began = run.started_at or run.created_at
    if run.completed_at is not None:
        seconds = (run.completed_at - began).total_seconds()
        RUN_DURATION.labels(status).observe(max(0.0, seconds))


def run_reaped() -> None:
    """A run whose lease expired was finished failed (worker_lost)."""
    if _enabled:
        RUNS_REAPED.inc()


def repair_found(kind: str, count: int = 1) -> None:
    """The repair loop finished ``count`` runs of ``kind`` (repair.py's table)."""
    if _enabled:
        REPAIR_FINDINGS.labels(kind).inc(count)


def writer_lease_lost() -> None:
    if _enabled:
        WRITER_LEASES_LOST.inc()


def lease_renewed() -> None:
    if _enabled:
        LEASE_RENEWALS.inc()


def sse_follower(delta: int) -> None:
    """An SSE stream opened (+1) or closed (-1)."""
    if _enabled:
        SSE_FOLLOWERS.inc(delta)


@contextlib.contextmanager
def sse_following() -> Iterator[None]:
    """Count one open SSE stream while the block runs, and no more once it ends, however
    it ends (the run's end, the client gone, an error): the body of every SSE route,
    the events stream and the Durable Streams ``live=sse`` alike."""
    sse_follower(+1)
    try:
        yield
    finally:
        sse_follower(-1)


def longpoll_waiter(delta: int) -> None:
    """A long-poll read started waiting (+1) or answered (-1)."""
    if _enabled:
        LONGPOLL_WAITERS.inc(delta)


def sse_send_timeout() -> None:
    if _enabled:
        SSE_SEND_TIMEOUTS.inc()


def follower_behind_ring() -> None:
    if _enabled:
        FOLLOWERS_BEHIND_RING.inc()


def notify_wakeup(origin: str, count: int = 1) -> None:
    """Readers were woken: ``local`` (a writer in this process) or ``postgres``."""
    if _enabled:
        (_WAKE_LOCAL if origin == "local" else _WAKE_POSTGRES).inc(count)


def poll_fallback() -> None:
    """The tail's poll timer found new data no notification announced."""
    if _enabled:
        POLL_FALLBACKS.inc()


def logstore_observed(backend: str, operation: str, seconds: float, *, failed: bool) -> None:
    if _enabled:
        LOGSTORE_SECONDS.labels(backend, operation).observe(seconds)
        if failed:
            LOGSTORE_ERRORS.labels(backend, operation).inc()


def logstore_failed(backend: str, operation: str) -> None:
    """An operation failed after its latency was observed (a read broken mid-way)."""
    if _enabled:
        LOGSTORE_ERRORS.labels(backend, operation).inc()


def maintenance_done(action: str, *, runs: int, bytes_in: int, bytes_out: int, errors: int) -> None:
    """What one (not dry) compaction or retention pass did."""
    if _enabled:
        MAINTENANCE_RUNS.labels(action).inc(runs)
        MAINTENANCE_BYTES_IN.labels(action).inc(bytes_in)
        MAINTENANCE_BYTES_OUT.labels(action).inc(bytes_out)
        MAINTENANCE_ERRORS.labels(action).inc(errors)


def render(state: StateCollector | None = None) -> bytes:
    """The Prometheus text exposition: this process's (or all processes') metrics, plus state."""
    if multiprocess_mode():
        registry: CollectorRegistry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if state is not None:
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(state)
        text += generate_latest(scrape)
    return text


def serve_metrics(host: str, port: int) -> None:
    """Serve this process's metrics over HTTP from a daemon thread (``runevents worker``).

    A worker has no API to put ``/metrics`` on; the client library's small
    server answers any path with the exposition.
    """
    start_http_server(port, addr=host, registry=REGISTRY)
