"""The logging handler ships records to an external run; producers flush at process exit."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from runevents.client import Client, ConsoleLine, RunCompleted, RuneventsHandler
from tests.fixtures.thread_server import ThreadServer

SRC = str(Path(__file__).resolve().parents[3] / "src")


def test_log_records_become_console_lines_of_a_new_run(thread_server: ThreadServer) -> None:
    handler = RuneventsHandler.for_new_run(thread_server.url, "acme", "logging-job")
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("etl.load")
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        log.debug("starting %d files", 3)
        log.info("loaded a.xlsx")
        log.warning("sheet 2 is empty")
        try:
            raise ValueError("row 12: bad date")
        except ValueError:
            log.exception("could not load b.xlsx")
        logging.getLogger("httpx").info("HTTP Request: POST ... (never shipped)")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    assert handler.run is not None and handler.dropped == 0
    with Client(thread_server.url) as client:
        events = list(client.follow(handler.run))
    lines = [e for e in events if isinstance(e, ConsoleLine)]
    assert [(e.level, e.stream, e.logger) for e in lines] == [
        ("debug", "stdout", "etl.load"),
        ("info", "stdout", "etl.load"),
        ("warning", "stderr", "etl.load"),
        ("error", "stderr", "etl.load"),
    ]
    assert lines[0].message == "starting 3 files"
    assert lines[3].message.startswith("could not load b.xlsx\nTraceback")
    assert "ValueError: row 12: bad date" in lines[3].message
    assert isinstance(events[-1], RunCompleted) and events[-1].status == "succeeded"


def test_a_producer_flushes_when_the_process_exits(thread_server: ThreadServer) -> None:
    with Client(thread_server.url) as client:
        run = client.create_external_run("acme", "exit")
    script = textwrap.dedent(
        f"""
        from runevents.client import Client
        client = Client({thread_server.url!r})
        producer = client.producer({run.id!r}, linger=60)  # nothing would go before exit
        for i in range(500):
            producer.console(f"line {{i}}")
        # no flush, no close: the process just ends
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    with Client(thread_server.url) as client:
        deadline = time.monotonic() + 10
        while (page := client.events(run, limit=1000)).next_after_sequence < 501:
            assert time.monotonic() < deadline, page.next_after_sequence
            time.sleep(0.05)
    messages = [e.payload["message"] for e in page.events[1:]]
    assert messages == [f"line {i}" for i in range(500)]


def test_a_job_that_just_exits_still_ships_its_records_and_ends_its_run(
    thread_server: ThreadServer,
) -> None:
    script = textwrap.dedent(
        f"""
        import logging
        from runevents.client import RuneventsHandler
        handler = RuneventsHandler.for_new_run({thread_server.url!r}, "acme", "exiting-job")
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        print(handler.run.id)
        for i in range(100):
            logging.info("record %d", i)
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    with Client(thread_server.url) as client:
        events = list(client.follow(run_id))
    assert [e.payload.get("message") for e in events[1:-1]] == [f"record {i}" for i in range(100)]
    assert isinstance(events[-1], RunCompleted) and events[-1].status == "succeeded"


def test_a_crashed_job_ended_its_run_succeeded(thread_server: ThreadServer) -> None:
    script = textwrap.dedent(
        f"""
        import logging, sys
        from runevents.client import RuneventsHandler

        def earlier_hook(*exc_info):  # a hook installed before: it must still run
            print("earlier hook ran", file=sys.stderr)
            sys.__excepthook__(*exc_info)

        sys.excepthook = earlier_hook
        handler = RuneventsHandler.for_new_run({thread_server.url!r}, "acme", "crashing-job")
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        print(handler.run.id)
        logging.info("starting")
        raise RuntimeError("job crashed")
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "earlier hook ran" in done.stderr and "RuntimeError: job crashed" in done.stderr
    with Client(thread_server.url) as client:
        events = list(client.follow(done.stdout.strip()))
    lines = [e for e in events if isinstance(e, ConsoleLine)]
    assert lines[0].message == "starting"
    traceback = lines[1:]
    assert traceback[0].message == "Traceback (most recent call last):"
    assert traceback[-1].message == "RuntimeError: job crashed"
    assert {(e.stream, e.level) for e in traceback} == {("stderr", "error")}
    completed = events[-1]
    assert isinstance(completed, RunCompleted) and completed.status == "failed"
    assert completed.payload["failure"] == {
        "stage": "run",
        "code": "RuntimeError",
        "message": "job crashed",
    }
