"""The cluster launcher (issue 14): `python3 dev.py cluster` and the tests' :class:`Cluster`.

Real processes on one machine, each with its own data dir, sharing only a
fresh Postgres database and a SeaweedFS bucket: 3 replicas (``serve
--workers 0``) and 2 standalone workers. Checked here: every replica is ready;
a run created through replica 1 is listed by replicas 2 and 3; a demo run is
executed (by a worker: no replica executes) to a terminal status; a replica
restarted with an empty data dir comes back ready and lists the runs; the
fault helpers (kill -9, SIGSTOP/SIGCONT, restart) do what they say; the
command line stops everything on Ctrl-C and removes what it made.

Without Postgres or SeaweedFS these tests skip with the reason
(RUNEVENTS_TEST_STRICT=1: fail).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.acceptance.conftest import poll
from tests.fixtures.cluster import Cluster, ClusterUnavailable
from tests.fixtures.services import PG_HOST, PG_PORT, PG_USER, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.s3]

ROOT = Path(__file__).resolve().parents[2]
ENDED = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One cluster for the module (starting one costs ~20 s on this machine)."""
    launcher = Cluster(replicas=3, workers=2)
    try:
        launcher.start()
    except ClusterUnavailable as exc:
        unavailable(f"the cluster launcher needs Postgres and SeaweedFS: {exc}")
    try:
        yield launcher
    finally:
        launcher.stop()


def ready(url: str) -> int:
    try:
        return httpx.get(f"{url}/api/v1/ready", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def create_demo_run(url: str, **options: Any) -> dict[str, Any]:
    r = httpx.post(
        f"{url}/api/v1/workspaces/demo/configurations/extract/runs",
        json={"mode": "execute", "options": options},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return dict(r.json()["run"])


def listed_ids(url: str) -> set[str]:
    r = httpx.get(f"{url}/api/v1/workspaces/demo/runs", params={"limit": 200}, timeout=30)
    assert r.status_code == 200, r.text
    return {item["id"] for item in r.json()["items"]}


def status_of(url: str, run: dict[str, Any]) -> str:
    r = httpx.get(
        f"{url}/api/v1/workspaces/demo/configurations/extract/runs/{run['id']}", timeout=30
    )
    assert r.status_code == 200, r.text
    return str(r.json()["run"]["status"])


def test_every_replica_is_ready_on_its_own_data_dir(cluster: Cluster) -> None:
    assert len(cluster.replicas) == 3 and len(cluster.workers) == 2
    assert [ready(url) for url in cluster.urls] == [200, 200, 200]
    assert all(m.alive() for m in cluster.members)
    dirs = {m.data_dir for m in cluster.members}
    assert len(dirs) == 5  # nothing shared but the database and the bucket
    for m in cluster.members:
        assert m.env["RUNEVENTS_DATABASE_URL"] == cluster.database_url
        assert m.env["RUNEVENTS_STORAGE_URL"].startswith("s3://")
        assert m.env["AWS_ENDPOINT_URL"].startswith("http://")
        assert "AWS_ALLOW_HTTP" not in m.env  # contract 10: no further setting
    assert [r.env["RUNEVENTS_ADVERTISE_URL"] for r in cluster.replicas] == cluster.urls


def test_run_created_on_one_replica_is_listed_by_the_others(cluster: Cluster) -> None:
    first, second, third = cluster.urls
    run = create_demo_run(first, speed=5, fail=False)
    assert run["id"] in listed_ids(second)
    assert run["id"] in listed_ids(third)


def test_demo_run_is_executed_by_a_worker_to_the_end(cluster: Cluster) -> None:
    # the replicas run `serve --workers 0`: only a standalone worker executes runs
    assert all(r.argv[r.argv.index("--workers") + 1] == "0" for r in cluster.replicas)
    run = create_demo_run(cluster.urls[0], speed=5, fail=False)
    final = poll(
        f"run {run['id']} to end",
        lambda: (s := status_of(cluster.urls[1], run)) in ENDED and s,
        timeout=180,
    )
    assert final == "succeeded"


def test_replica_restarted_with_an_empty_data_dir_is_ready(cluster: Cluster) -> None:
    run = create_demo_run(cluster.urls[0], speed=5, fail=False)
    replica = cluster.replicas[2]
    marker = replica.data_dir / "left-by-the-old-process"
    marker.write_text("x")
    old_pid = replica.pid
    cluster.restart(replica, empty_data_dir=True)
    assert replica.pid != old_pid
    assert not marker.exists()
    assert ready(replica.url) == 200
    assert run["id"] in listed_ids(replica.url)


def test_fault_helpers(cluster: Cluster) -> None:
    replica, worker = cluster.replicas[1], cluster.workers[1]
    cluster.pause(replica)
    try:
        assert ready(replica.url) == 0  # stopped: no answer within the timeout
    finally:
        cluster.resume(replica)
    poll("the resumed replica to answer", lambda: ready(replica.url) == 200, timeout=30)
    cluster.kill9(worker)
    assert not worker.alive() and worker.popen is not None
    assert worker.popen.returncode == -signal.SIGKILL
    cluster.restart(worker)
    assert worker.alive()


def _databases(like: str) -> list[str]:
    async def query() -> list[str]:
        conn = await asyncpg.connect(f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres")
        try:
            rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", like)
            return [r["datname"] for r in rows]
        finally:
            await conn.close()

    return asyncio.run(query())


def test_command_line_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "cluster.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fixtures.cluster", "--replicas", "1", "--workers", "1"],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:

        def started() -> re.Match[str] | None:
            text = out.read_text(errors="replace")
            if proc.poll() is not None:
                if "PostgreSQL is not reachable" in text or "SeaweedFS" in text:
                    unavailable(f"dev.py cluster could not start: {text[-500:]}")
                pytest.fail(f"dev.py cluster exited with {proc.returncode}:\n{text}")
            return re.search(r"database\s+postgresql://\S+/(runevents_cluster_\S+)", text)

        found = poll("dev.py cluster to print its URLs", started, timeout=150)
        text = out.read_text()
        url = re.search(r"replica-1\s+(http://127\.0\.0\.1:\d+)/", text)
        root = re.search(r"under (/\S+) \.\.\.", text)
        assert url and root, text
        assert ready(url.group(1)) == 200
        assert _databases(found.group(1)) == [found.group(1)]
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0, out.read_text()
        assert ready(url.group(1)) == 0
        assert not Path(root.group(1)).exists()
        assert _databases(found.group(1)) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_hosts_compact_at_once_each_run_once(cluster: Cluster, tmp_path: Path) -> None:
    """`runevents compact` on two "hosts" (own data dirs, the cluster's database and bucket)
    at the same moment: every plain ended run is compacted by exactly one of them."""
    url = cluster.urls[0]
    runs = [create_demo_run(url, speed=5, fail=False) for _ in range(3)]
    for run in runs:
        poll(f"run {run['id']} to end", lambda r=run: status_of(url, r) in ENDED, timeout=180)

    def plain_ended() -> set[str]:
        r = httpx.get(f"{url}/api/v1/workspaces/demo/runs", params={"limit": 200}, timeout=30)
        return {
            item["id"]
            for item in r.json()["items"]
            if item["status"] in ENDED and item["log_state"] == "plain"
        }

    candidates = plain_ended()
    assert {run["id"] for run in runs} <= candidates
    hosts = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runevents",
                "compact",
                "--older-than",
                "0s",
                "--json",
                "--data-dir",
                str(tmp_path / f"host-{i}"),
            ],
            env=cluster.common_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (1, 2)
    ]
    outputs = [host.communicate(timeout=300) for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0], outputs
    reports = [json.loads(out) for out, _ in outputs]
    assert [r["errors"] for r in reports] == [[], []]
    done = [set(r["run_ids"]) for r in reports]
    assert not done[0] & done[1], "a run was compacted by both hosts"
    # runs that ended meanwhile (another test's) may be compacted too, never twice
    assert candidates <= done[0] | done[1]
    assert not plain_ended() & candidates
    for run in runs:  # and they read through any replica
        r = httpx.get(
            f"{cluster.urls[2]}/api/v1/workspaces/demo/configurations/extract/runs/{run['id']}/events",
            headers={"Accept": "application/json"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json()["events"][-1]["type"] == "run.completed"
