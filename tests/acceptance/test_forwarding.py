"""Issue 14: a batch that reaches a replica not holding the run's writer is forwarded to
the owner (``api/forward.py``); real ``runevents serve`` processes on one Postgres.

- round-robin ingest through replicas A and B (separate data dirs, one shared
  ``file://`` store): every batch answered 200 at once, the log gap-free with
  every batch exactly once, B's batches relayed (B's forwarding metric);
- the same with a shared data dir (the writer's file lock is shared too);
- batches sent to A and B at once (4 producers): one gap-free log, each batch
  once and whole;
- an idle writer let go by A is taken by B with the next batch, and A then
  relays to B;
- with tokens: the owner authenticates a relayed batch with its own tokens file
  (a token only B knows gets the owner's 401: give every replica the same file);
- a request that was itself forwarded, reaching a non-owner, answers 503 +
  ``Retry-After: 1`` and is never forwarded again (no loop);
- ``kill -9`` of the owner: B answers 503 with ``Retry-After`` <= 2 until the
  lease expires, then takes the run over and the log keeps everything (a
  shared ``file://`` store, and ``s3://`` with separate data dirs, where the
  live log is in the shared live tier).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.acceptance.conftest import Processes, Server, poll, run_path
from tests.fixtures.db import run_in_thread
from tests.fixtures.metrics import parse, value
from tests.fixtures.s3 import SeaweedFS

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEASE = 2
ENV = {
    "RUNEVENTS_WRITER_LEASE_SECONDS": str(LEASE),
    "RUNEVENTS_MAINTENANCE_INTERVAL_SECONDS": "0",
    "RUNEVENTS_REPAIR_INTERVAL_SECONDS": "0",
}
FORWARDED = "runevents_ingest_forwarded_total"
NDJSON = {"Content-Type": "application/x-ndjson"}


def body(batch: int, events: int = 20) -> bytes:
    lines = [
        json.dumps(
            {"type": "console.line", "payload": {"stream": "stdout", "message": f"b{batch} l{i}"}}
        )
        for i in range(events)
    ]
    return ("\n".join(lines) + "\n").encode()


def start(
    processes: Processes,
    tmp: Path,
    database_url: str,
    *,
    shared_data: bool = False,
    s3: SeaweedFS | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[Server, Server]:
    """Replicas A and B on one database; a shared ``file://`` store, or ``s3`` (SeaweedFS)."""
    env = {**ENV, **(extra_env or {})}
    if s3 is None:
        store = (tmp / "store").resolve()
        store.mkdir()
        storage = store.as_uri()
    else:
        storage = s3.url(f"forwarding-{tmp.name}")
        env.update(
            AWS_ENDPOINT_URL=s3.endpoint_url,
            AWS_ACCESS_KEY_ID=s3.access_key_id,
            AWS_SECRET_ACCESS_KEY=s3.secret_access_key,
            AWS_REGION=s3.region,
            AWS_ALLOW_HTTP="true",
        )
    common = ["--database-url", database_url, "--storage-url", storage, "--workers", "0"]
    a = processes.serve(*common, name="a", data_dir=tmp / "a", env=env)
    b = processes.serve(*common, name="b", data_dir=tmp / ("a" if shared_data else "b"), env=env)
    return a, b


def create_external(server: Server) -> dict[str, Any]:
    r = server.http.post("/api/v1/workspaces/acme/configurations/ext/runs", json={"external": True})
    assert r.status_code == 201, r.text
    return dict(r.json()["run"])


def forwarded(server: Server, outcome: str) -> float:
    return value(parse(server.http.get("/metrics").text), FORWARDED, outcome=outcome)


def events_of(server: Server, run: dict[str, Any]) -> list[dict[str, Any]]:
    r = server.http.get(
        run_path(run) + "/events", params={"limit": 5000}, headers={"Accept": "application/json"}
    )
    assert r.status_code == 200, r.text
    return list(r.json()["events"])


def check_batches(events: list[dict[str, Any]], batches: int, per_batch: int = 20) -> None:
    """Sequences 1..N; every batch's lines exactly once, in order, after run.queued."""
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    messages = [e["payload"]["message"] for e in events if e["type"] == "console.line"]
    assert messages == [f"b{b} l{i}" for b in range(batches) for i in range(per_batch)]


def registered(database_url: str) -> dict[str, str]:
    async def rows() -> dict[str, str]:
        conn = await asyncpg.connect(database_url)
        try:
            return {
                r["owner"]: r["url"] for r in await conn.fetch("SELECT owner, url FROM replicas")
            }
        finally:
            await conn.close()

    return run_in_thread(rows)


def writer_owner(database_url: str, run: dict[str, Any]) -> str | None:
    async def owner() -> str | None:
        conn = await asyncpg.connect(database_url)
        try:
            found = await conn.fetchval("SELECT writer_owner FROM runs WHERE id = $1", run["id"])
            return None if found is None else str(found)
        finally:
            await conn.close()

    return run_in_thread(owner)


def round_robin(a: Server, b: Server, run: dict[str, Any], batches: int) -> None:
    path = run_path(run) + "/events"
    last = 1  # run.queued
    for n in range(batches):
        server = (a, b)[n % 2]
        r = server.http.post(path, content=body(n), headers={**NDJSON, "Idempotency-Key": f"k{n}"})
        assert r.status_code == 200, (server.name, r.status_code, r.text)
        assert r.json() == {"first_sequence": last + 1, "last_sequence": last + 20}
        last += 20


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_round_robin_through_two_replicas_forms_one_log(
    processes: Processes,
    tmp_path: Path,
    pg_database_url: str,
    storage: str,
    request: pytest.FixtureRequest,
) -> None:
    s3 = request.getfixturevalue("seaweedfs") if storage == "s3" else None
    a, b = start(processes, tmp_path, pg_database_url, s3=s3)
    # both announced themselves, at the loopback address they are bound to
    urls = registered(pg_database_url)
    assert sorted(urls.values()) == sorted([a.url, b.url])

    run = create_external(a)
    round_robin(a, b, run, 20)
    assert forwarded(b, "answered") == 10
    assert forwarded(a, "answered") == 0
    check_batches(events_of(a, run), 20)
    assert events_of(b, run) == events_of(a, run)  # the live log, from either replica

    # the end, sent to B, is relayed too; the sealed log is then read from either replica
    done = b"".join(
        [json.dumps({"type": "run.completed", "payload": {"status": "succeeded"}}).encode(), b"\n"]
    )
    r = b.http.post(run_path(run) + "/events", content=done, headers=NDJSON)
    assert r.status_code == 200, r.text
    assert forwarded(b, "answered") == 11
    ended = a.get(run)["run"]
    assert ended["status"] == "succeeded"
    log_a, log_b = events_of(a, run), events_of(b, run)
    assert log_a == log_b
    check_batches(log_a[:-1], 20)

    # a clean shutdown removes the replica's row
    processes.started.remove(b)
    b.http.close()
    b.popen.terminate()
    b.popen.wait(timeout=30)
    assert sorted(registered(pg_database_url).values()) == [a.url]


def test_round_robin_with_a_shared_data_dir(
    processes: Processes, tmp_path: Path, pg_database_url: str
) -> None:
    a, b = start(processes, tmp_path, pg_database_url, shared_data=True)
    run = create_external(a)
    round_robin(a, b, run, 10)
    assert forwarded(b, "answered") == 5
    check_batches(events_of(a, run), 10)
    assert events_of(b, run) == events_of(a, run)


def test_a_forwarded_batch_reaching_a_non_owner_is_refused_not_forwarded_again(
    processes: Processes, tmp_path: Path, pg_database_url: str
) -> None:
    a, b = start(processes, tmp_path, pg_database_url)
    run = create_external(a)
    path = run_path(run) + "/events"
    r = b.http.post(
        path, content=body(0), headers={**NDJSON, "X-Runevents-Forwarded-By": "elsewhere:1:x"}
    )
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "1"
    assert r.json()["error"]["code"] == "writer_moving"
    assert forwarded(b, "not_again") == 1
    assert forwarded(b, "answered") == 0
    assert forwarded(a, "answered") + forwarded(a, "not_again") == 0
    assert [e["type"] for e in events_of(a, run)] == ["run.queued"]
    # the same batch without the header is relayed
    r = b.http.post(path, content=body(0), headers=NDJSON)
    assert r.status_code == 200, r.text
    check_batches(events_of(a, run), 1)


def test_batches_sent_to_both_replicas_at_once_form_one_log(
    processes: Processes, tmp_path: Path, pg_database_url: str
) -> None:
    a, b = start(processes, tmp_path, pg_database_url)
    run = create_external(a)
    path = run_path(run) + "/events"
    statuses: list[int] = []

    def producer(server: Server, batches: range) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for n in batches:
                r = http.post(path, content=body(n), headers={**NDJSON, "Idempotency-Key": f"k{n}"})
                statuses.append(r.status_code)

    threads = [
        threading.Thread(target=producer, args=(server, range(first, 40, 4)))
        for first, server in enumerate((a, b, a, b))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert statuses == [200] * 40
    events = events_of(a, run)
    assert [e["sequence"] for e in events] == list(range(1, 802))
    # every batch once, its 20 lines together and in order (batches in any order)
    lines = [e["payload"]["message"] for e in events[1:]]
    starts = lines[::20]
    assert sorted(starts) == sorted(f"b{n} l0" for n in range(40))
    for first in range(0, 800, 20):
        n = lines[first].split()[0]
        assert lines[first : first + 20] == [f"{n} l{i}" for i in range(20)]
    assert forwarded(b, "answered") == 20


def test_an_idle_writer_moves_to_the_replica_of_the_next_batch_and_the_other_follows(
    processes: Processes, tmp_path: Path, pg_database_url: str
) -> None:
    a, b = start(
        processes,
        tmp_path,
        pg_database_url,
        extra_env={"RUNEVENTS_EXTERNAL_WRITER_RELEASE_SECONDS": "1"},
    )
    run = create_external(a)
    path = run_path(run) + "/events"
    assert a.http.post(path, content=body(0), headers=NDJSON).status_code == 200
    # A lets the idle writer go (after 1 s without a batch, checked every 0.5 s)
    poll("A to let the idle writer go", lambda: writer_owner(pg_database_url, run) is None)
    r = b.http.post(path, content=body(1), headers=NDJSON)
    assert r.status_code == 200, r.text
    assert forwarded(b, "answered") == 0  # B took the run: nobody held it
    r = a.http.post(path, content=body(2), headers=NDJSON)
    assert r.status_code == 200, r.text
    assert forwarded(a, "answered") == 1  # A now relays to B
    check_batches(events_of(b, run), 3)


def _tokens_file(path: Path, tokens: dict[str, tuple[str, str]]) -> Path:
    """A tokens file: token -> (name, role), every one on workspace acme."""
    entries = [
        f'[[token]]\nname = "{name}"\nhash = "sha256:{hashlib.sha256(token.encode()).hexdigest()}"'
        f'\nrole = "{role}"\nworkspaces = ["acme"]\n'
        for token, (name, role) in tokens.items()
    ]
    path.write_text("\n".join(entries))
    return path


def test_the_owner_authenticates_a_relayed_batch_with_its_own_tokens(
    processes: Processes, tmp_path: Path, pg_database_url: str
) -> None:
    """Every replica needs the same tokens file: the owner checks the token again."""
    writer, reader, only_b = "rev_writer_token_1", "rev_reader_token_1", "rev_only_on_b_token"
    admin = "rev_admin_token_1"
    shared = {writer: ("producer", "write"), reader: ("viewer", "read"), admin: ("ops", "admin")}
    store = (tmp_path / "store").resolve()
    store.mkdir()
    common = ["--database-url", pg_database_url, "--storage-url", store.as_uri(), "--workers", "0"]
    a = processes.serve(
        *common, "--tokens", str(_tokens_file(tmp_path / "a.toml", shared)),
        name="a", data_dir=tmp_path / "a", env=ENV, token=writer,
    )  # fmt: skip
    b_tokens = _tokens_file(tmp_path / "b.toml", {**shared, only_b: ("stray", "write")})
    b = processes.serve(
        *common, "--tokens", str(b_tokens), name="b", data_dir=tmp_path / "b", env=ENV,
        token=writer,
    )  # fmt: skip
    run = create_external(a)
    path = run_path(run) + "/events"
    r = b.http.post(path, content=body(0), headers=NDJSON)
    assert r.status_code == 200, r.text  # relayed with its Authorization
    # a read token is refused by B itself, before any relay
    r = b.http.post(path, content=body(1), headers={**NDJSON, "Authorization": f"Bearer {reader}"})
    assert r.status_code == 403, r.text
    # a token only B knows passes B and is refused by the owner
    r = b.http.post(path, content=body(1), headers={**NDJSON, "Authorization": f"Bearer {only_b}"})
    assert r.status_code == 401, r.text
    metrics_text = b.http.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    assert value(parse(metrics_text), FORWARDED, outcome="answered") == 2
    check_batches(events_of(a, run), 1)


def _kill_owner_then_take_over(a: Server, b: Server) -> None:
    run = create_external(a)
    round_robin(a, b, run, 4)
    a.kill9()
    path = run_path(run) + "/events"
    started = time.monotonic()
    refusals = 0

    def accepted() -> bool:
        nonlocal refusals
        r = b.http.post(path, content=body(4), headers={**NDJSON, "Idempotency-Key": "k4"})
        if r.status_code == 503:
            assert 1 <= int(r.headers["Retry-After"]) <= 2, r.headers
            refusals += 1
            return False
        assert r.status_code == 200, r.text
        assert r.json() == {"first_sequence": 82, "last_sequence": 101}
        return True

    poll("B to take the run over", accepted, timeout=30, interval=0.5)
    took = time.monotonic() - started
    assert took <= 10, took
    assert refusals >= 1  # A's lease was live when it died
    assert forwarded(b, "unreachable") >= 1
    check_batches(events_of(b, run), 5)


def test_kill9_of_the_owner_503_until_its_lease_expires_then_taken_over(
    processes: Processes, tmp_path: Path, pg_database_url: str
) -> None:
    """Separate data dirs, a shared ``file://`` store: the live log is in the shared dir."""
    _kill_owner_then_take_over(*start(processes, tmp_path, pg_database_url))


def test_kill9_of_the_owner_on_s3_then_taken_over_with_the_whole_log(
    processes: Processes, tmp_path: Path, pg_database_url: str, seaweedfs: SeaweedFS
) -> None:
    """s3:// and separate data dirs: the live log is in the shared live tier (Postgres)."""
    _kill_owner_then_take_over(*start(processes, tmp_path, pg_database_url, s3=seaweedfs))


def test_a_batch_sent_while_the_writer_replica_is_frozen_is_accepted_within_10_seconds(
    processes: Processes, tmp_path: Path, pg_database_url: str, seaweedfs: SeaweedFS
) -> None:
    """C3: A holds the run's writer and is SIGSTOPped (its kernel still accepts the
    connection and the body; nothing answers). The producer sends the next batch to B
    with the default writer lease and retries per ``Retry-After``: B answers 503 with
    ``Retry-After`` <= 2 quickly (not after its 10 s relay timeout) and takes the run
    once A's lease expired, within 10 s of the first attempt (contract 10)."""
    default_lease = {"RUNEVENTS_WRITER_LEASE_SECONDS": "8"}
    a, b = start(processes, tmp_path, pg_database_url, s3=seaweedfs, extra_env=default_lease)
    run = create_external(a)
    round_robin(a, b, run, 2)  # A holds the writer; B has relayed to it
    path = run_path(run) + "/events"
    os.kill(a.pid, signal.SIGSTOP)
    answers: list[tuple[float, float, int, str | None]] = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < 30:
            sent = time.monotonic()
            r = httpx.post(
                b.url + path, content=body(2), timeout=60,
                headers={**NDJSON, "Idempotency-Key": "k2"},
            )  # fmt: skip
            answers.append(
                (
                    sent - started,
                    time.monotonic() - sent,
                    r.status_code,
                    r.headers.get("Retry-After"),
                )
            )
            if r.status_code != 503:
                break
            assert 1 <= int(r.headers["Retry-After"]) <= 2, r.headers
            time.sleep(int(r.headers["Retry-After"]))
        took = time.monotonic() - started
    finally:
        os.kill(a.pid, signal.SIGCONT)
    print(f"frozen owner: accepted {took:.2f} s after the first attempt: {answers}")
    assert r.status_code == 200, (r.text, answers)
    assert r.json() == {"first_sequence": 42, "last_sequence": 61}
    assert answers[0][1] <= 4, f"B's first answer took {answers[0][1]:.1f} s: {answers}"
    assert took <= 10, f"accepted {took:.1f} s after the first attempt: {answers}"
    check_batches(events_of(b, run), 3)


def test_a_16_mib_batch_is_relayed_to_a_healthy_owner(
    processes: Processes, tmp_path: Path, pg_database_url: str, seaweedfs: SeaweedFS
) -> None:
    """The owner's liveness probe (forward.py) does not give up on an owner that is only
    slow with a large batch: a batch at the size limit goes through B to A whole."""
    a, b = start(processes, tmp_path, pg_database_url, s3=seaweedfs)
    run = create_external(a)
    round_robin(a, b, run, 1)  # A holds the writer
    line = json.dumps({"type": "console.line", "payload": {"stream": "stdout", "message": "x"}})
    filler = "y" * (60 * 1024)
    big = (line.replace('"x"', f'"big {filler}"') + "\n").encode() * 270
    assert 16 * 1024 * 1024 - 300_000 < len(big) <= 16 * 1024 * 1024
    started = time.monotonic()
    r = b.http.post(
        run_path(run) + "/events", content=big, timeout=60,
        headers={**NDJSON, "Idempotency-Key": "big"},
    )  # fmt: skip
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert r.json() == {"first_sequence": 22, "last_sequence": 291}
    assert forwarded(b, "answered") == 1 and forwarded(b, "unreachable") == 0
    print(f"a 16 MiB batch relayed through B took {took:.2f} s")
