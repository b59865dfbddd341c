"""The server's own log lines: text or JSON, with the request and run they belong to.

Two context variables carry who a line is about: :data:`REQUEST_ID` (set by
the HTTP edge, ``api/context.py``, for the whole of a request) and
:data:`RUN_ID` (set by the HTTP edge for run routes and by the worker for the
run it executes). ``asyncio`` copies the context into every task a request or
a run starts, so lines logged anywhere below -- the manager, the writer, the
database layer -- carry them without being passed along.

``--log-format json`` prints one JSON object per line with ``time`` (RFC 3339,
UTC), ``level``, ``logger``, ``message``, ``request_id`` and ``run_id`` (when
there is one) and ``exception`` (a formatted traceback, when there is one);
``text`` is the human form with the same ids appended. uvicorn's own loggers
(errors, access lines) are routed through the same handler.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

#: the id of the HTTP request being handled (``X-Request-ID``)
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "runevents_request_id", default=None
)
#: the run a request or a worker task is about
RUN_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "runevents_run_id", default=None
)

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


def bind_run(run_id: str) -> None:
    """Log lines of the current task (and the tasks it starts) name ``run_id``."""
    RUN_ID.set(run_id)


class ContextFilter(logging.Filter):
    """Stamps ``request_id`` and ``run_id`` from the context onto every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        # a record may carry them already (``extra=``); the context fills the gaps
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        if getattr(record, "run_id", None) is None:
            record.run_id = RUN_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; keys absent rather than null when there is no id."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "run_id"):
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        # default=str: a message argument that is not JSON (a Path, an exception) is
        # already in "message"; this only guards exotic extras
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message`` plus ``[request_id=... run_id=...]`` when known."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = [
            f"{key}={value}"
            for key in ("request_id", "run_id")
            if (value := getattr(record, key, None)) is not None
        ]
        if not ids:
            return text
        head, newline, rest = text.partition("\n")  # ids on the first line, before a traceback
        return f"{head} [{' '.join(ids)}]{newline}{rest}"


def make_handler(fmt: LogFormat, stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) in ``fmt``, with the context filter."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure(level: str = "info", fmt: LogFormat = "text") -> None:
    """Route every log line of the process (uvicorn's included) through one handler.

    Replaces the root logger's handlers (idempotent). uvicorn must then be run
    with ``log_config=None`` so it leaves its loggers to propagate here.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(make_handler(fmt))
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
