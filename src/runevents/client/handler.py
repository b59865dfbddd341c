"""A ``logging.Handler`` that ships a Python job's log records to an external run.

    handler = RuneventsHandler.for_new_run("http://127.0.0.1:8000", "acme", "nightly-etl")
    logging.getLogger().addHandler(handler)

Each record becomes one ``console.line`` (contract section 2): ``message`` is
the formatted record (with the exception's traceback when there is one),
``level`` the record's level (``debug``/``info``/``warning``/``error``; CRITICAL is
``error``), ``logger`` the logger's name, ``stream`` ``stderr`` from WARNING up.
Records go through a batching :class:`~runevents.client.Producer`, so logging
never waits for the network; ``close()`` (called by ``logging.shutdown`` at
exit) flushes, and with ``finish_run=True`` also ends the run.

Records of the client's own machinery (``httpx``, ``httpcore``,
``runevents.client``, and anything logged on the client's loop thread) are
skipped: shipping them would log the shipping, without end.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import weakref
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
        # At exit the handler, not its producer, shuts down: it may still have to
        # end the run, which a producer closed first could no longer send.
        atexit.unregister(producer._exit_hook)
        self._exit_hook = _close_at_exit(weakref.ref(self))
        atexit.register(self._exit_hook)

    def set_outcome(self, status: str, failure: dict[str, Any] | None = None) -> None:
        """How the run ends at ``close`` (``finish_run``): ``failed`` with ``{stage, code,
        message}``, or ``cancelled``; ``succeeded`` when never called."""
        self.outcome = (status, failure)

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
            if self.finish_run:
                self.producer.complete(*self.outcome)
            self.producer.close()
        except ClientError as exc:
            self.dropped += 1
            logging.getLogger("runevents.client").warning("log records were lost: %s", exc)
        finally:
            if self._owns_client:
                self.producer.client.close()
            super().close()


def _close_at_exit(ref: weakref.ReferenceType[RuneventsHandler]) -> Any:
    def close() -> None:
        handler = ref()
        if handler is not None:
            handler.close()

    return close
