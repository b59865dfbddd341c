"""metrics_state.py: the state gauges come from the counts, are cached, and fail soft."""

from __future__ import annotations

from pathlib import Path

from runevents import metrics
from runevents.db.stats import RunCounts
from runevents.metrics_state import StateCollector
from tests.fixtures.metrics import families, parse, run_counts, state_collector, value


async def test_state_gauges_come_from_the_counts_and_are_cached() -> None:
    calls: list[int] = []
    collector = state_collector(run_counts(), calls)
    collector._counts = None
    assert "runevents_runs" not in families(metrics.render(collector))  # not counted yet
    await collector.refresh()
    await collector.refresh()  # within refresh_seconds: no second query
    assert calls == [1]
    samples = parse(metrics.render(collector))
    assert value(samples, "runevents_runs", status="queued") == 3
    assert value(samples, "runevents_runs", status="succeeded") == 10
    assert value(samples, "runevents_runs", status="failed") == 0
    assert value(samples, "runevents_runs_degraded", status="running") == 1
    assert value(samples, "runevents_queue_oldest_age_seconds") == 42
    assert value(samples, "runevents_leases_held") == 2
    assert value(samples, "runevents_leases_expired") == 1
    assert value(samples, "runevents_db_pool_connections", state="in_use") == 3
    assert value(samples, "runevents_data_dir_free_bytes") > 0


async def test_a_failing_count_leaves_the_database_gauges_out() -> None:
    async def broken() -> RunCounts:
        raise OSError("connection refused")

    collector = StateCollector(count_runs=broken, pool=None, data_dir=Path("."), refresh_seconds=0)
    await collector.refresh()
    names = families(metrics.render(collector))
    assert "runevents_runs" not in names
    assert "runevents_data_dir_free_bytes" in names  # what does not need the database stays
