"""A ``logging.Handler`` that ships a Python job's log records to an external run.

    handler = RuneventsHandler.for_new_run("http://127.0.0.1:8000", "acme", "nightly-etl")
    logging.getLogger().addHandler(handler)

Each record becomes one ``console.line`` (contract section 2): ``message`` is
the formatted record (with the exception's traceback when there is one),
``level`` the record's level (``debug``/``info``/``warning``/``error``; CRITICAL is
``error``), ``logger`` the logger's name, ``stream`` ``stderr`` from WARNING up.
Records go through a batching :class:`~runevents.client.Producer`, so logging
never waits for the network; ``close()`` (called at exit) flushes, and with
``finish_run=True`` also ends the run.

A job that dies of an uncaught exception must not end ``succeeded``: the
handler chains itself into ``sys.excepthook`` (the hook found before is still
called), ships the traceback as ``console.line`` events (``stderr``,
``error``) and ends the run ``failed`` with the exception's type and text,
unless :meth:`RuneventsHandler.set_outcome` chose an outcome already.

Records of the client's own machinery (``httpx``, ``httpcore``,
``runevents.client``, and anything logged on the client's loop thread) are
skipped: shipping them would log the shipping, without end.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
import threading
import traceback
import weakref
from types import TracebackType
from typing import Any

from runevents.client.errors import ClientError
from runevents.client.models import Run
from runevents.client.sync import Client
from runevents.client.sync_producer import Producer

#: loggers whose records are never shipped (they log the shipping itself)
SKIPPED_LOGGERS = ("httpx", "httpcore", "runevents.client", "asyncio")


def level_name(levelno: int) -> str:
    """The contract's console level of a logging level."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


class RuneventsHandler(logging.Handler):
    """Ships log records as ``console.line`` events through ``producer``."""

    def __init__(
        self,
        producer: Producer,
        *,
        level: int = logging.NOTSET,
        finish_run: bool = False,
        owns_client: bool = False,
    ) -> None:
        super().__init__(level)
        self.producer = producer
        self.finish_run = finish_run
        self._owns_client = owns_client
        self._closed = False
        #: records that could not be queued (the producer failed)
        self.dropped = 0
        #: the run, when the handler created it (``for_new_run``)
        self.run: Run | None = None
        #: how ``close`` ends the run when ``finish_run`` (see :meth:`set_outcome`)
        self.outcome: tuple[str, dict[str, Any] | None] = ("succeeded", None)
        self._outcome_set = False
        # At exit the handler, not its producer, shuts down: it may still have to
        # end the run, which a producer closed first could no longer send.
        atexit.unregister(producer._exit_hook)
        self._exit_hook = _close_at_exit(weakref.ref(self))
        atexit.register(self._exit_hook)
        _install_excepthook()
        _HANDLERS.add(self)

    def set_outcome(self, status: str, failure: dict[str, Any] | None = None) -> None:
        """How the run ends at ``close`` (``finish_run``): ``failed`` with ``{stage, code,
        message}``, or ``cancelled``; ``succeeded`` when never called (and no uncaught
        exception ended the process)."""
        self.outcome = (status, failure)
        self._outcome_set = True

    def uncaught(self, exc: BaseException, tb: TracebackType | None) -> None:
        """Ship an uncaught exception's traceback, end the run ``failed`` (``sys.excepthook``)."""
        if self._closed:
            return
        text = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n")
        try:
            for line in text.split("\n"):
                self.producer.console(line, stream="stderr", level="error")
        except ClientError:
            self.dropped += 1
        if not self._outcome_set:
            failure = {"stage": "run", "code": type(exc).__name__, "message": str(exc)}
            self.set_outcome("failed", failure)

    @classmethod
    def for_new_run(
        cls,
        server: str,
        workspace_id: str,
        configuration_id: str,
        *,
        token: str | None = None,
        level: int = logging.NOTSET,
        finish_run: bool = True,
        **producer_options: Any,
    ) -> RuneventsHandler:
        """A handler on a new external run (``handler.run`` tells which)."""
        client = Client(server, token)
        try:
            run = client.create_external_run(workspace_id, configuration_id)
            producer = client.producer(run, **producer_options)
        except BaseException:
            client.close()
            raise
        handler = cls(producer, level=level, finish_run=finish_run, owns_client=True)
        handler.run = run
        return handler

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(SKIPPED_LOGGERS) or self._closed:
            return
        if threading.current_thread().name == "runevents-client":
            return
        try:
            message = self.format(record)
            self.producer.console(
                message,
                stream="stderr" if record.levelno >= logging.WARNING else "stdout",
                level=level_name(record.levelno),
                logger=record.name,
            )
        except ClientError:
            self.dropped += 1
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Wait until every record shipped so far is in the run's log."""
        if self._closed:
            return
        # a failure is reported by close(); logging must not raise from flush
        with contextlib.suppress(ClientError):
            self.producer.flush()

    def close(self) -> None:
        """Flush, end the run if ``finish_run``, and release the client."""
        if self._closed:
            super().close()
            return
        self._closed = True
        atexit.unregister(self._exit_hook)
        try:
            try:
                if self.finish_run:
                    self.producer.complete(*self.outcome)
            finally:
                self.producer.close()  # also when complete() failed: it stops the sender
        except ClientError as exc:
            self.dropped += 1
            logging.getLogger("runevents.client").warning("log records were lost: %s", exc)
        finally:
            if self._owns_client:
                # its producer is closed and its failure reported just above
                with contextlib.suppress(ClientError):
                    self.producer.client.close()
            super().close()


#: the handlers alive, for the excepthook
_HANDLERS: weakref.WeakSet[RuneventsHandler] = weakref.WeakSet()
_hook_lock = threading.Lock()
_hook_installed = False


def _install_excepthook() -> None:
    """Chain the handlers into ``sys.excepthook`` once; the hook before is called after them."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        _hook_installed = True
        previous = sys.excepthook

        def excepthook(
            exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
        ) -> None:
            for handler in list(_HANDLERS):
                with contextlib.suppress(Exception):  # the previous hook must still run
                    handler.uncaught(exc, tb)
            previous(exc_type, exc, tb)

        sys.excepthook = excepthook


def _close_at_exit(ref: weakref.ReferenceType[RuneventsHandler]) -> Any:
    def close() -> None:
        handler = ref()
        if handler is not None:
            handler.close()

    return close
