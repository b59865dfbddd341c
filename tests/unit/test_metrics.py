"""metrics.py: hooks move the right series, off means off, every pinned name, multi-process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runevents import metrics
from runevents.models import LogState, Run, RunStatus
from tests.fixtures.metrics import families, parse, run_counts, state_collector, value

#: names contract section 13 pins
PINNED = {
    "runevents_events_appended_total",
    "runevents_ingest_batches_total",
    "runevents_fsync_seconds_bucket",
    "runevents_sse_followers",
    "runevents_write_failures_total",
    "runevents_runs",
    "runevents_runs_completed_total",
}


@pytest.fixture(autouse=True)
def _enabled() -> Iterator[None]:
    metrics.set_enabled(True)
    yield
    metrics.set_enabled(True)


def test_hooks_move_their_series() -> None:
    before = parse(metrics.render())
    token = metrics.APPEND_SOURCE.set("ingest")
    metrics.events_appended(7)
    metrics.APPEND_SOURCE.reset(token)

    async def executor() -> None:
        metrics.bind_source("executor")
        metrics.events_appended(2)

    asyncio.run(executor())
    metrics.events_appended(1)  # outside both: the server's own
    metrics.fsync_observed(0.003)
    metrics.write_failed("fsync")
    metrics.ingest_answered(422, 0.01)
    metrics.sse_follower(+1)
    after = parse(metrics.render())
    metrics.sse_follower(-1)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("runevents_events_appended_total", source="ingest") == 7
    assert moved("runevents_events_appended_total", source="executor") == 2
    assert moved("runevents_events_appended_total", source="server") == 1
    assert moved("runevents_fsync_seconds_count") == 1
    assert moved("runevents_fsync_seconds_bucket", le="0.005") == 1
    assert moved("runevents_fsync_seconds_bucket", le="0.0025") == 0
    assert moved("runevents_write_failures_total", operation="fsync") == 1
    assert moved("runevents_ingest_batches_total", outcome="422") == 1
    assert moved("runevents_sse_followers") == 1


def _ours() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    # process_* (CPU, memory) move on their own
    return {k: v for k, v in parse(metrics.render()).items() if k[0].startswith("runevents_")}


def test_switched_off_hooks_change_nothing() -> None:
    before = _ours()
    metrics.set_enabled(False)
    metrics.events_appended(1000)
    metrics.fsync_observed(1.0)
    metrics.ingest_answered(200, 0.1)
    metrics.write_failed("write")
    metrics.set_enabled(True)
    assert _ours() == before


def _finished_run() -> Run:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    return Run(
        id="run_01HZZZZZZZZZZZZZZZZZZZZZZZ",
        workspace_id="acme",
        configuration_id="ext",
        status=RunStatus.CANCELLED,
        external=True,
        mode="execute",
        options={},
        created_at=created,
        updated_at=created,
        started_at=created + timedelta(seconds=10),
        completed_at=created + timedelta(seconds=100),
        log_state=LogState.PLAIN,
    )


def test_run_finished_counts_status_and_duration() -> None:
    run = _finished_run()
    before = parse(metrics.render())
    metrics.run_finished(run)
    after = parse(metrics.render())
    name = "runevents_run_duration_seconds"
    assert value(after, "runevents_runs_completed_total", status="cancelled") == (
        value(before, "runevents_runs_completed_total", status="cancelled") + 1
    )
    # 90 s from start to end: in the 120 s bucket, not in the 60 s one
    assert (
        value(after, name + "_bucket", status="cancelled", le="120.0")
        - value(before, name + "_bucket", status="cancelled", le="120.0")
        == 1
    )
    assert value(after, name + "_bucket", status="cancelled", le="60.0") == value(
        before, name + "_bucket", status="cancelled", le="60.0"
    )


def test_every_pinned_name_is_exported() -> None:
    # a labelled family or a histogram shows no series before its first sample: give
    # each one (run alone, or first on an xdist worker, this test saw none)
    metrics.fsync_observed(0.001)
    metrics.events_appended(1)
    metrics.write_failed("fsync")
    metrics.ingest_answered(200, 0.01)
    metrics.run_finished(_finished_run())
    state = state_collector(run_counts())
    state_ready = metrics.render(state)
    assert families(state_ready) >= PINNED


def test_multiprocess_mode_sums_followers_over_processes(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, one process's scrape shows every process's numbers."""
    script = textwrap.dedent(
        """
        import os, sys
        from prometheus_client import multiprocess
        from runevents import metrics
        assert metrics.multiprocess_mode()
        metrics.sse_follower(+1)
        metrics.APPEND_SOURCE.set("ingest")
        metrics.events_appended(5)
        if sys.argv[1] == "count":
            print(os.getpid())
        else:
            # what a process manager's exit hook does (gunicorn child_exit)
            multiprocess.mark_process_dead(int(sys.argv[2]))
            sys.stdout.write(metrics.render().decode())
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    outputs = []
    for argv in (["count"], ["render", "PID"]):
        argv = [outputs[0].strip() if a == "PID" else a for a in argv]
        done = subprocess.run(
            [sys.executable, "-c", script, *argv], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    samples = parse(outputs[1])
    # counters add up over every process that ever counted...
    assert value(samples, "runevents_events_appended_total", source="ingest") == 10
    # ...live gauges over the processes still alive
    assert value(samples, "runevents_sse_followers") == 1
