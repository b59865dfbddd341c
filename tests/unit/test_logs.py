"""logs.py: JSON lines parse and carry the request and run ids; text keeps them too."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from runevents import logs


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    logger = logging.getLogger("runevents.test_logs")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logs.make_handler("json", stream)
    logger.addHandler(handler)
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_parse_with_time_level_message(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = captured
    logger.info("hello %s", "world")
    logger.warning('quotes " and\nnewlines stay one line')
    lines = _lines(stream)
    assert len(lines) == 2  # the newline inside the message is escaped, not a second line
    first = lines[0]
    assert first["message"] == "hello world"
    assert first["level"] == "info"
    assert first["logger"] == "runevents.test_logs"
    assert str(first["time"]).endswith("+00:00")
    assert "request_id" not in first and "run_id" not in first  # absent, not null


def test_ids_come_from_the_context_and_follow_tasks(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = captured

    async def request() -> None:
        logs.REQUEST_ID.set("req-1")
        logs.bind_run("run_01HZZZZZZZZZZZZZZZZZZZZZZZ")
        # a task started by the request inherits both
        await asyncio.create_task(asyncio.to_thread(lambda: None))
        await asyncio.create_task(_log_later(logger))

    asyncio.run(request())
    logger.info("outside")
    inside, outside = _lines(stream)
    assert inside["request_id"] == "req-1"
    assert inside["run_id"] == "run_01HZZZZZZZZZZZZZZZZZZZZZZZ"
    assert "request_id" not in outside


async def _log_later(logger: logging.Logger) -> None:
    await asyncio.sleep(0)
    logger.info("inside")


def test_exceptions_are_one_json_line_with_the_traceback(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    (line,) = _lines(stream)
    assert line["level"] == "error"
    assert "ValueError: boom" in str(line["exception"])


def test_text_format_appends_the_ids() -> None:
    stream = io.StringIO()
    handler = logs.make_handler("text", stream)
    record = logging.LogRecord("runevents.x", logging.INFO, __file__, 1, "done", None, None)
    token = logs.REQUEST_ID.set("abc")
    try:
        handler.handle(record)
    finally:
        logs.REQUEST_ID.reset(token)
    assert stream.getvalue() == "INFO runevents.x: done [request_id=abc]\n"


def test_configure_routes_uvicorn_through_the_root_handler() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure("warning", "json")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        assert root.level == logging.WARNING
        assert logging.getLogger("uvicorn.access").propagate
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
