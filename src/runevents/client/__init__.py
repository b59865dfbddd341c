"""The Python client of a runevents server: ``from runevents.client import Client``.

* :class:`Client` (sync) and :class:`AsyncClient`: create, list, get and cancel
  runs; read events (pages, long-poll, NDJSON download); ``follow()`` a run live
  with typed events, resuming after dropped connections (``Last-Event-ID``);
  ``append()`` a batch with an idempotency key and retries.
* :class:`Producer` / :class:`AsyncProducer` (``client.producer(run)``): emit
  events one by one; they are batched, retried (503 + ``Retry-After``) and
  flushed on exit.
* :class:`RuneventsHandler`: a ``logging.Handler`` that ships log records to an
  external run as ``console.line`` events.

Documented with runnable examples in ``docs/client.md``.
"""

from runevents.client.aio import AsyncClient, RetryPolicy
from runevents.client.errors import ClientError, ProducerError
from runevents.client.handler import RuneventsHandler
from runevents.client.models import (
    AppendResult,
    ConsoleLine,
    Event,
    EventPage,
    PhaseEvent,
    Run,
    RunCompleted,
    RunError,
    RunPage,
    parse_event,
)
from runevents.client.producer import AsyncProducer
from runevents.client.sse import SSEParser
from runevents.client.sync import Client
from runevents.client.sync_producer import Producer

__all__ = [
    "AppendResult",
    "AsyncClient",
    "AsyncProducer",
    "Client",
    "ClientError",
    "ConsoleLine",
    "Event",
    "EventPage",
    "PhaseEvent",
    "Producer",
    "ProducerError",
    "RetryPolicy",
    "Run",
    "RunCompleted",
    "RunError",
    "RunPage",
    "RuneventsHandler",
    "SSEParser",
    "parse_event",
]
