"""Contract section 10 with real processes: 3 replicas and 2 workers, each with its own
data dir, sharing one Postgres database and one SeaweedFS bucket (``tests/fixtures/cluster.py``,
the launcher ``python3 dev.py cluster`` uses).

Each test is named after what issue 14 says must hold; the processes are killed
with SIGKILL, as a machine dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import Cluster, ClusterUnavailable, Member
from tests.fixtures.services import unavailable

pytestmark = [pytest.mark.s3, pytest.mark.timeout(300)]

WS, CFG = "acme", "ext"
#: a short worker lease, so a dead worker's run ends within the test
LEASE_SECONDS = 3
#: the contract's bound for a retried batch (section 10)
ACCEPT_WITHIN = 10.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(
        replicas=3,
        workers=2,
        env={
            "RUNEVENTS_LEASE_SECONDS": str(LEASE_SECONDS),
            "RUNEVENTS_WRITER_LEASE_SECONDS": "4",
        },
    )
    try:
        c.start()
    except ClusterUnavailable as exc:
        unavailable(str(exc))
    try:
        yield c
    finally:
        c.stop()


def run_path(run_id: str, cfg: str = CFG, ws: str = WS) -> str:
    return f"/api/v1/workspaces/{ws}/configurations/{cfg}/runs/{run_id}"


def client(member: Member) -> httpx.Client:
    return httpx.Client(base_url=member.url, timeout=15.0, headers={"Host": "127.0.0.1"})


def create_external(member: Member) -> str:
    with client(member) as c:
        r = c.post(f"/api/v1/workspaces/{WS}/configurations/{CFG}/runs", json={"external": True})
        assert r.status_code == 201, r.text
        body = r.json()
        return str(body["run"]["id"] if "run" in body else body["id"])


def batch(tag: str, n: int = 20) -> bytes:
    lines = [
        json.dumps(
            {
                "type": "console.line",
                "payload": {"scope": "run", "stream": "stdout", "level": "info",
                            "message": f"{tag} line {i}"},
            }
        )
        for i in range(n)
    ]  # fmt: skip
    return ("\n".join(lines) + "\n").encode()


def send(
    members: list[Member], run_id: str, body: bytes, key: str, start: int = 0
) -> dict[str, Any]:
    """POST one batch, trying the replicas from ``start`` on; retries 503 and dropped
    connections (same key) for at most ACCEPT_WITHIN seconds, as a producer would."""
    deadline = time.monotonic() + ACCEPT_WITHIN
    attempt = start
    last = ""
    while time.monotonic() < deadline:
        member = members[attempt % len(members)]
        attempt += 1
        if not member.alive():
            continue
        try:
            with client(member) as c:
                r = c.post(
                    run_path(run_id) + "/events",
                    content=body,
                    headers={"Content-Type": "application/x-ndjson", "Idempotency-Key": key},
                )
        except httpx.TransportError as exc:
            last = repr(exc)
            time.sleep(0.2)
            continue
        if r.status_code == 200:
            return dict(r.json())
        assert r.status_code == 503, f"{member.name}: {r.status_code} {r.text}"
        retry_after = float(r.headers.get("Retry-After", "1"))
        assert retry_after <= 2, r.headers
        last = r.text
        time.sleep(min(retry_after, 0.5))
    raise AssertionError(f"batch {key} not accepted within {ACCEPT_WITHIN} s: {last}")


def ndjson(member: Member, run_id: str, cfg: str = CFG, ws: str = WS) -> bytes:
    with client(member) as c:
        r = c.get(run_path(run_id, cfg, ws) + "/events", headers={"Accept": "application/x-ndjson"})
        assert r.status_code == 200, r.text
        return r.content


def sequences(data: bytes) -> list[int]:
    return [json.loads(line)["sequence"] for line in data.splitlines()]


def messages(data: bytes) -> list[str]:
    events = [json.loads(line) for line in data.splitlines()]
    return [e["payload"]["message"] for e in events if e["type"] == "console.line"]


def complete(members: list[Member], run_id: str, key: str) -> None:
    body = (
        json.dumps({"type": "run.completed", "payload": {"status": "succeeded"}}) + "\n"
    ).encode()
    send(members, run_id, body, key)


def test_any_replica_accepts_any_batch_round_robin_one_gap_free_log(cluster: Cluster) -> None:
    replicas = cluster.replicas
    run_id = create_external(replicas[0])
    answers = [send(replicas, run_id, batch(f"b{i}"), f"k{i}", start=i % 3) for i in range(30)]
    complete(replicas, run_id, "k-end")
    firsts = [a["first_sequence"] for a in answers]
    assert firsts == sorted(firsts) and len(set(firsts)) == 30
    logs = [ndjson(r, run_id) for r in replicas]
    assert logs[0] == logs[1] == logs[2]  # byte-identical from every replica
    assert sequences(logs[0]) == list(range(1, len(logs[0].splitlines()) + 1))
    got = messages(logs[0])
    assert got == [f"b{i} line {j}" for i in range(30) for j in range(20)]  # each batch once


def test_a_follower_on_one_replica_gets_what_another_appended_within_a_second(
    cluster: Cluster,
) -> None:
    a, b = cluster.replicas[0], cluster.replicas[1]
    run_id = create_external(a)
    send([a], run_id, batch("warm", 1), "w")
    delays: list[float] = []
    with (
        httpx.Client(base_url=b.url, timeout=20.0, headers={"Host": "127.0.0.1"}) as c,
        c.stream(
            "GET",
            run_path(run_id) + "/events",
            params={"stream": "true", "after_sequence": 2},
            headers={"Accept": "text/event-stream"},
        ) as stream,
    ):
        lines = stream.iter_lines()
        for i in range(5):
            sent = time.monotonic()
            send([a], run_id, batch(f"live{i}", 1), f"l{i}")
            for line in lines:
                if line.startswith("data:") and f"live{i} line 0" in line:
                    delays.append(time.monotonic() - sent)
                    break
    assert len(delays) == 5 and max(delays) < 1.0, delays
    complete([a], run_id, "end")


def test_kill9_of_the_writing_replica_mid_stream_loses_nothing_acknowledged(
    cluster: Cluster,
) -> None:
    a, b, c = cluster.replicas
    run_id = create_external(a)
    acked: list[str] = []
    for i in range(10):
        send([a], run_id, batch(f"before{i}"), f"k{i}")
        acked.append(f"before{i}")
    cluster.kill9(a)
    try:
        # the producer goes on through the others (its own retry loop; same keys)
        for i in range(10):
            send([b, c], run_id, batch(f"after{i}"), f"a{i}", start=i)
            acked.append(f"after{i}")
        complete([b, c], run_id, "end")
        data = ndjson(c, run_id)
        assert ndjson(b, run_id) == data
        assert sequences(data) == list(range(1, len(data.splitlines()) + 1))
        got = messages(data)
        assert got == [f"{tag} line {j}" for tag in acked for j in range(20)]
    finally:
        cluster.restart(a)


def test_a_replica_with_an_empty_data_dir_serves_every_run_live_or_ended(
    cluster: Cluster,
) -> None:
    a, _, c = cluster.replicas
    ended = create_external(a)
    send([a], ended, batch("ended"), "e1")
    complete([a], ended, "e-end")
    live = create_external(a)
    send([a], live, batch("live"), "l1")
    cluster.restart(c, empty_data_dir=True)
    assert ndjson(c, ended) == ndjson(a, ended)
    assert ndjson(c, live) == ndjson(a, live)
    with client(c) as http:
        page = http.get(run_path(live) + "/events", params={"after_sequence": 0}).json()
    assert [e["sequence"] for e in page["events"]] == list(range(1, 22))
    complete([a], live, "l-end")


def test_kill9_of_a_worker_ends_its_run_worker_lost_keeping_every_served_event(
    cluster: Cluster,
) -> None:
    """An executed run whose worker died ends ``failed`` / ``worker_lost`` within
    lease_seconds + 10 s, by a surviving process, its log holding every served event."""
    replica = cluster.replicas[1]
    with client(replica) as http:
        r = http.post(
            "/api/v1/workspaces/demo/configurations/extract/runs",
            json={"mode": "execute", "options": {"speed": 1, "fail": False}},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        run_id = body["run"]["id"] if "run" in body else body["id"]
        path = run_path(run_id, "extract", "demo")
        served: list[int] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(served) < 15:
            page = http.get(path + "/events", params={"after_sequence": 0}).json()
            served = [e["sequence"] for e in page["events"]]
            time.sleep(0.3)
        assert len(served) >= 15, "the demo run did not get going"
        row = http.get(path).json()["run"]
        assert row["status"] == "running"
    owner = _worker_of(cluster, run_id)
    owner.signal(signal.SIGKILL)  # the worker and its job: the machine is gone
    died = time.monotonic()
    with client(replica) as http:
        while True:
            row = http.get(path).json()["run"]
            if row["status"] not in ("queued", "building", "running"):
                break
            assert time.monotonic() - died < LEASE_SECONDS + 10, "not ended in time"
            time.sleep(0.3)
        assert row["status"] == "failed", row
        detail = http.get(path).json()
    assert detail["summary"]["failure"]["code"] == "worker_lost"
    data = ndjson(cluster.replicas[2], run_id, "extract", "demo")
    stored = sequences(data)
    assert stored == list(range(1, len(stored) + 1))
    assert set(served) <= set(stored)
    last = json.loads(data.splitlines()[-1])
    assert last["type"] == "run.completed" and last["payload"]["failure"]["code"] == "worker_lost"
    with contextlib.suppress(Exception):
        cluster.restart(owner)


def test_a_run_whose_only_worker_died_is_failed_worker_lost_by_a_replica_without_workers(
    cluster: Cluster,
) -> None:
    """C2: only worker processes reaped, so with the run's worker killed and no other
    worker running, the run stayed ``running`` (54 s and more) until a worker started
    again. The replicas (``--workers 0``) must end it within lease_seconds + 10 s."""
    replica = cluster.replicas[0]
    with client(replica) as http:
        r = http.post(
            "/api/v1/workspaces/demo/configurations/extract/runs",
            json={"mode": "execute", "options": {"speed": 1, "fail": False}},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        run_id = body["run"]["id"] if "run" in body else body["id"]
        path = run_path(run_id, "extract", "demo")
        deadline = time.monotonic() + 60
        while http.get(path).json()["run"]["status"] != "running":
            assert time.monotonic() < deadline, "the demo run did not get going"
            time.sleep(0.3)
        deadline = time.monotonic() + 30
        while True:  # its job started (a process to kill)
            with contextlib.suppress(AssertionError):
                owner = _worker_of(cluster, run_id)
                break
            assert time.monotonic() < deadline, "no worker process runs the job"
            time.sleep(0.3)
    others = [w for w in cluster.workers if w is not owner]
    for other in others:
        cluster.pause(other)  # no other worker reaps: only the replicas are left
    try:
        owner.signal(signal.SIGKILL)  # the worker and its job
        died = time.monotonic()
        with client(cluster.replicas[2]) as http:
            while True:
                row = http.get(path).json()["run"]
                if row["status"] not in ("queued", "building", "running"):
                    break
                assert time.monotonic() - died < LEASE_SECONDS + 10, "not ended in time"
                time.sleep(0.3)
            assert row["status"] == "failed", row
            detail = http.get(path).json()
        assert detail["summary"]["failure"]["code"] == "worker_lost"
    finally:
        for other in others:
            cluster.resume(other)
        with contextlib.suppress(Exception):
            cluster.restart(owner)


def _worker_of(cluster: Cluster, run_id: str) -> Member:
    """The worker process executing ``run_id`` (its job is among its descendants)."""
    for member in cluster.workers:
        for proc in member.processes():
            with contextlib.suppress(Exception):
                if proc.environ().get("RUNEVENTS_RUN_ID") == run_id:
                    return member
    raise AssertionError(f"no worker runs {run_id} ({[os.getpid()]})")
