"""A 200 means durable, checked on real processes: kill -9 loops under keyed load,
SIGSTOP/SIGCONT of a worker, and a real tmpfs filled to ENOSPC.

Regression tests of the durability issue:

- defect 14: a kill -9 during a batch's write left its first lines in the log,
  recovery kept them, and the keyed retry appended the whole batch again;
- defect 5: a worker whose heartbeat stalled past its lease was reaped while
  alive, and killed its own child;
- defect 1: a full disk acknowledged a batch that was only in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import Processes, Server, clean_env, poll, run_path
from tests.acceptance.worker_support import ENDED, ENV, LEASE_SECONDS, demo_children, start_pair

pytestmark = pytest.mark.slow

BATCH = 200


def batch_body(producer: int, number: int) -> bytes:
    lines = [
        json.dumps(
            {
                "type": "console.line",
                "payload": {
                    "scope": "run",
                    "stream": "stdout",
                    "level": "info",
                    "message": f"p{producer} b{number} l{i} " + "x" * 300,
                },
            }
        )
        for i in range(BATCH)
    ]
    return ("\n".join(lines) + "\n").encode()


def post_until_accepted(
    url: str, path: str, body: bytes, key: str, stop: threading.Event, deadline: float
) -> dict[str, Any]:
    """Post a keyed batch until it gets 200 (servers die and come back meanwhile)."""
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.post(
                url + path,
                content=body,
                headers={"Content-Type": "application/x-ndjson", "Idempotency-Key": key},
                timeout=10,
            )
            if r.status_code == 200:
                return dict(r.json())
            assert r.status_code in (503,), r.text  # never a 4xx for a retry, never a 500
            assert "Retry-After" in r.headers
        time.sleep(0.05)
    raise AssertionError(f"batch {key} never accepted")


def test_kill9_loop_under_keyed_load_never_duplicates_or_tears(
    processes: Processes, tmp_path: Path, database_url: str
) -> None:
    data = tmp_path / "data"
    args = ["--database-url", database_url, "--workers", "0"]
    env = {"RUNEVENTS_WRITER_LEASE_SECONDS": "2", "RUNEVENTS_MAINTENANCE_INTERVAL_SECONDS": "0"}
    server = processes.serve(*args, data_dir=data, env=env)
    r = server.http.post("/api/v1/workspaces/acme/configurations/ext/runs", json={"external": True})
    assert r.status_code == 201, r.text
    run = r.json()["run"]
    path = run_path(run) + "/events"
    url = server.url
    stop = threading.Event()
    answers: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def producer(n: int) -> None:
        try:
            for b in range(1000):
                if stop.is_set():
                    return
                key = f"p{n}-b{b}"
                answers[key] = post_until_accepted(
                    url, path, batch_body(n, b), key, stop, time.monotonic() + 120
                )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    rng = random.Random(14)
    kills = 0
    try:
        for _ in range(8):
            time.sleep(rng.uniform(0.3, 1.5))
            server.kill9()
            kills += 1
            # the same port: producers keep posting to the URL they know
            server = restart_on(processes, server, args, data, env)
    finally:
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=180)
    assert not errors, errors
    assert kills == 8
    r = httpx.get(url + path, headers={"Accept": "application/x-ndjson"}, timeout=60)
    assert r.status_code == 200, r.text
    events = [json.loads(line) for line in r.text.splitlines()]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    lines: dict[str, list[int]] = {}
    for e in events:
        if e["type"] == "console.line":
            p, b = e["payload"]["message"].split(" ")[:2]
            lines.setdefault(f"{p}-{b}", []).append(e["sequence"])
    for key, answer in answers.items():
        seqs = lines[key]
        # exactly the batch, once, contiguous, where its answer says
        assert seqs == list(range(answer["first_sequence"], answer["last_sequence"] + 1)), key
    # every batch in the log was acknowledged, and no partial batch is left
    assert all(len(s) == BATCH for s in lines.values())
    recovered = [e for e in events if e["type"] == "log.recovered"]
    print(f"\n{kills} kills, {len(answers)} batches, {len(recovered)} recoveries")


def restart_on(
    processes: Processes, old: Server, args: list[str], data: Path, env: dict[str, str]
) -> Server:
    """A new ``serve`` on the old one's port and data."""
    port = old.url.rsplit(":", 1)[1]
    argv = [
        sys.executable, "-m", "runevents", "serve", "--host", "127.0.0.1", "--port", port,
        "--data-dir", str(data), "--log-level", "warning", *args,
    ]  # fmt: skip
    server: Server = processes.spawn(
        f"serve-{len(processes.started)}", argv, clean_env(**env), cls=Server,
        url=old.url, data_dir=data,
    )  # fmt: skip

    def healthy() -> bool:
        if not server.alive():
            pytest.fail(f"restart exited:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{server.url}/api/v1/health", timeout=2).status_code == 200
        return False

    poll("the restarted server", healthy, 90, interval=0.1)
    return server


def test_a_stopped_worker_keeps_its_run_and_finishes_it_after_sigcont(
    processes: Processes, tmp_path: Path, database_url: str
) -> None:
    server, worker, _, common = start_pair(processes, tmp_path, database_url, concurrency=1)
    run = server.create_run("demo", "extract", speed=3, fail=False, seed=7)
    server.wait_running(run)
    processes.remember(worker.descendants())
    # a second worker: its reaper sees the expired lease while the first is stopped
    processes.worker(
        *common, "--concurrency", "1", name="reaper", data_dir=tmp_path / "data", env=ENV
    )
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        time.sleep(LEASE_SECONDS * 3 + 2)
        assert server.get(run)["run"]["status"] == "running"
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    done = server.wait_status(run, ENDED, timeout=180)
    assert done["run"]["status"] == "succeeded", (done["run"].get("failure"), worker.log())
    assert demo_children(worker) == []


def test_a_full_disk_answers_503_and_a_keyed_retry_appends_once(
    processes: Processes, tmp_path: Path, small_tmpfs: Path
) -> None:
    data = small_tmpfs / "data"
    server = processes.serve(
        "--workers", "0",
        "--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}",
        data_dir=data, env={"RUNEVENTS_MAINTENANCE_INTERVAL_SECONDS": "0"},
    )  # fmt: skip
    r = server.http.post("/api/v1/workspaces/acme/configurations/ext/runs", json={"external": True})
    run = r.json()["run"]
    path = run_path(run) + "/events"
    headers = {"Content-Type": "application/x-ndjson"}
    assert server.http.post(path, content=batch_body(0, 0), headers=headers).status_code == 200
    # fill the disk
    filler = small_tmpfs / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * (1 << 20))
            f.flush()
    keyed = {**headers, "Idempotency-Key": "full-1"}
    refused = server.http.post(path, content=batch_body(0, 1), headers=keyed)
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "storage_error"
    filler.unlink()
    accepted = server.http.post(path, content=batch_body(0, 1), headers=keyed)
    assert accepted.status_code == 200, accepted.text
    again = server.http.post(path, content=batch_body(0, 1), headers=keyed)
    assert (
        again.json()
        == accepted.json()
        == {
            "first_sequence": BATCH + 2,
            "last_sequence": 2 * BATCH + 1,
        }
    )
    events = server.events(run)
    assert [e["sequence"] for e in events] == list(range(1, 2 * BATCH + 2))
    messages = [e["payload"].get("message", "") for e in events[1:]]
    assert sum(m.startswith("p0 b1 ") for m in messages) == BATCH
