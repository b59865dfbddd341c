"""The state gauges of ``GET /metrics``: database rows, pool and disk, read at scrape time.

Separate from ``metrics.py`` because it is a different kind of metric: the
hooks there count what this process did as it happens, while
:class:`StateCollector` asks the database, the connection pool and the file
system when Prometheus scrapes, so it has a cache, a timeout and a failure
mode of its own. ``metrics.render`` adds it to the exposition; it is
re-exported as ``metrics.StateCollector``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from runevents.db.stats import RunCounts

# the logger of metrics.py, where this lived: operators' log filters keep matching
log = logging.getLogger("runevents.metrics")


class StateCollector(Collector):
    """Gauges read from the database, the pool and the disk when Prometheus scrapes.

    Row counts are a scan: :meth:`refresh` reruns the query at most every
    ``refresh_seconds`` (concurrent scrapes share one query) and ``collect``
    only reads the last result. If the query fails the database gauges are left
    out of that scrape (absent means unknown; ``/api/v1/ready`` says why).
    """

    def __init__(
        self,
        *,
        count_runs: Callable[[], Awaitable[RunCounts]],
        pool: Any,
        data_dir: Path,
        refresh_seconds: float,
        timeout: float = 5.0,
    ) -> None:
        self._count_runs = count_runs
        self._pool = pool
        self._data_dir = data_dir
        self._refresh_seconds = refresh_seconds
        self._timeout = timeout
        self._counts: RunCounts | None = None
        self._taken = -float("inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Recount the rows if the last count is older than ``refresh_seconds``."""
        async with self._lock:
            now = time.monotonic()
            if now - self._taken < self._refresh_seconds:
                return
            try:
                async with asyncio.timeout(self._timeout):
                    self._counts = await self._count_runs()
            except Exception as exc:
                log.warning("metrics: cannot count runs: %s: %s", type(exc).__name__, exc)
                self._counts = None
            self._taken = time.monotonic()

    def describe(self) -> Iterable[Metric]:
        return []  # registered only into a scrape's own registry: no clash checks needed

    def collect(self) -> Iterable[Metric]:
        yield from self._run_metrics()
        yield from self._pool_metrics()
        try:
            usage = shutil.disk_usage(self._data_dir)
        except OSError:
            return
        free = GaugeMetricFamily(
            "runevents_data_dir_free_bytes", "Free bytes on the data directory's file system"
        )
        free.add_metric([], usage.free)
        size = GaugeMetricFamily(
            "runevents_data_dir_size_bytes", "Size of the data directory's file system"
        )
        size.add_metric([], usage.total)
        yield from (free, size)

    def _run_metrics(self) -> Iterable[Metric]:
        counts = self._counts
        if counts is None:
            return
        runs = GaugeMetricFamily("runevents_runs", "Run rows by status", labels=["status"])
        degraded = GaugeMetricFamily(
            "runevents_runs_degraded",
            "Run rows flagged logging_degraded (a log write failed), by status",
            labels=["status"],
        )
        for status, count in counts.by_status.items():
            runs.add_metric([status], count)
            degraded.add_metric([status], counts.degraded.get(status, 0))
        age = GaugeMetricFamily(
            "runevents_queue_oldest_age_seconds",
            "Age of the oldest queued run (0 when the queue is empty)",
        )
        oldest = counts.oldest_queued
        age.add_metric([], (counts.taken_at - oldest).total_seconds() if oldest else 0.0)
        held = GaugeMetricFamily("runevents_leases_held", "Live runs with a worker lease")
        held.add_metric([], counts.leases_held)
        expired = GaugeMetricFamily(
            "runevents_leases_expired",
            "Live runs whose worker lease ran out and that no reaper finished yet",
        )
        expired.add_metric([], counts.leases_expired)
        yield from (runs, degraded, age, held, expired)

    def _pool_metrics(self) -> Iterable[Metric]:
        pool = self._pool
        checked_out = getattr(pool, "checkedout", None)
        checked_in = getattr(pool, "checkedin", None)
        if checked_out is None or checked_in is None:
            return  # a pool kind without counters
        connections = GaugeMetricFamily(
            "runevents_db_pool_connections",
            "Database connections of this process's pool: in use or idle",
            labels=["state"],
        )
        connections.add_metric(["in_use"], checked_out())
        connections.add_metric(["idle"], checked_in())
        yield connections
