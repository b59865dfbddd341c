"""The sync Client against a real server: runs, events, follow, append, cancel, errors."""

from __future__ import annotations

import threading
import time

import pytest

from runevents.client import (
    Client,
    ClientError,
    ConsoleLine,
    Event,
    Run,
    RunCompleted,
)
from tests.fixtures.thread_server import ThreadServer


def test_external_run_lifecycle_with_typed_events(thread_server: ThreadServer) -> None:
    with Client(thread_server.url) as client:
        run = client.create_external_run("acme", "sync")
        assert isinstance(run, Run) and run.status == "queued" and not run.ended
        answer = client.append(
            run,
            [
                {"type": "console.line", "payload": {"message": "hello", "level": "info"}},
                {"type": "run.phase.started", "payload": {"phase": "load"}},
            ],
        )
        assert (answer.first_sequence, answer.last_sequence) == (2, 3)
        client.append(run, b'{"type":"run.completed","payload":{"status":"succeeded"}}\n')
        events = list(client.follow(run))
        assert [e.sequence for e in events] == [1, 2, 3, 4]
        line = events[1]
        assert isinstance(line, ConsoleLine) and line.message == "hello" and line.level == "info"
        assert line["payload"]["message"] == "hello"  # the raw envelope, as before
        done = events[-1]
        assert isinstance(done, RunCompleted) and done.status == "succeeded"
        assert done.summary is not None and done.summary["events"]["total"] == 4
        deadline = time.monotonic() + 10
        while not (got := client.get_run(run.id)).ended:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert got.status == "succeeded" and got.summary is not None
        assert client.get_run(run) == got  # by Run as well as by id
        page = client.list_runs("acme", configuration_id="sync", status="succeeded")
        assert run.id in [r.id for r in page.items]


def test_follow_resumes_after_a_sequence_and_pages_are_typed(
    thread_server: ThreadServer,
) -> None:
    with Client(thread_server.url) as client:
        run = client.create_external_run("acme", "pages")
        client.append(
            run, [{"type": "console.line", "payload": {"message": f"m{i}"}} for i in range(5)]
        )
        client.append(run, [{"type": "run.completed", "payload": {"status": "failed"}}])
        resumed = [e.sequence for e in client.follow(run, after=4)]
        assert resumed == [5, 6, 7]
        assert list(client.follow(run, after=7)) == []  # past run.completed: nothing
        page = client.events(run, after=1, limit=2)
        assert [e.sequence for e in page.events] == [2, 3] and page.has_more
        assert all(isinstance(e, Event) for e in page.events)
        ndjson = b"".join(client.download(run))
        assert ndjson.count(b"\n") == 7


def test_long_poll_returns_what_arrives(thread_server: ThreadServer) -> None:
    with Client(thread_server.url) as client:
        run = client.create_external_run("acme", "poll")

        def later() -> None:
            time.sleep(0.5)
            client.append(run, [{"type": "console.line", "payload": {"message": "late"}}])

        appender = threading.Thread(target=later)
        appender.start()
        started = time.monotonic()
        page = client.events(run, after=1, wait=20)
        appender.join()  # the answer may come before the append's own answer
        assert [e.sequence for e in page.events] == [2]
        assert 0.3 < time.monotonic() - started < 15


def test_cancel_and_errors_carry_status_and_code(thread_server: ThreadServer) -> None:
    with Client(thread_server.url) as client:
        run = client.create_external_run("acme", "cancel")
        assert client.cancel(run).status == "cancelled"
        with pytest.raises(ClientError) as ended:
            client.cancel(run)
        assert ended.value.status == 409
        with pytest.raises(ClientError) as missing:
            client.create_run("acme", "no-such-configuration")
        assert missing.value.status == 404 and missing.value.code == "configuration_not_found"
        with pytest.raises(ClientError, match="not-a-run"):
            client.get_run("not-a-run")


def test_unreachable_server_is_a_client_error() -> None:
    with Client("http://127.0.0.1:9", timeout=2) as client:
        with pytest.raises(ClientError, match="cannot reach the server") as error:
            client.list_runs("acme")
        assert error.value.status is None
