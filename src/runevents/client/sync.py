"""The sync client: the async client driven from a private event loop thread.

One implementation serves both APIs: :class:`Client` runs an
:class:`~runevents.client.aio.AsyncClient` on an event loop in a daemon thread
of its own (the "portal") and waits for each call. So it works the same from
plain scripts, from threads, and from code that already runs an event loop
(where a blocking ``asyncio.run`` would not). Iterators (``follow``,
``download``, ``search``) step the async generator one item per call.

Every method delegates to the async client's, so the two flavours cannot
drift apart (``tests/unit/client/test_client_defects.py`` compares them).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from runevents.client.aio import RECONNECT_DELAY, AsyncClient, RetryPolicy, RunRef
from runevents.client.models import AppendResult, Event, EventPage, Run, RunPage
from runevents.client.sync_producer import Producer

T = TypeVar("T")


class Portal:
    """An event loop in a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.closed = False
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="runevents-client", daemon=True
        )
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception)."""
        if self.closed:
            coro.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """The items of an async iterator, one ``call`` each; closes it when left early."""

        async def step() -> T:
            return await anext(iterator)

        async def close() -> None:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

        try:
            while True:
                try:
                    yield self.call(step())
                except StopAsyncIteration:
                    return
        finally:
            if not self.closed:
                self.call(close())

    def close(self) -> None:
        """Cancel what still runs (a thread waiting on it gets CancelledError), then stop."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_others(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class Client:
    """Sync client of one server; ``with Client(...) as client:`` closes it.

    The same methods as :class:`~runevents.client.AsyncClient`, blocking.
    """

    def __init__(
        self,
        server: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        reconnect_delay: float = RECONNECT_DELAY,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._portal = Portal()
        try:
            self._async = self._portal.call(
                _make(
                    server,
                    token,
                    timeout=timeout,
                    retry=retry,
                    reconnect_delay=reconnect_delay,
                    transport=transport,
                )
            )
        except BaseException:
            self._portal.close()
            raise
        self.server = self._async.server
        self.shown_server = self._async.shown_server

    @property
    def retry(self) -> RetryPolicy:
        """How appends are retried (the async client's policy)."""
        return self._async.retry

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self._async.retry = policy

    @property
    def reconnect_delay(self) -> float:
        """Seconds before ``follow`` reconnects a dropped stream."""
        return self._async.reconnect_delay

    @reconnect_delay.setter
    def reconnect_delay(self, seconds: float) -> None:
        self._async.reconnect_delay = seconds

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the producers still open, then the connections and the loop thread.

        Raises a producer's ProducerError (after closing everything) if one
        could not deliver its events and never said so yet.
        """
        if not self._portal.closed:
            try:
                self._portal.call(self._async.aclose())
            finally:
                self._portal.close()

    def create_run(
        self,
        workspace_id: str,
        configuration_id: str,
        *,
        options: Mapping[str, Any] | None = None,
        mode: str = "execute",
    ) -> Run:
        """Queue a run of a registered configuration."""
        return self._portal.call(
            self._async.create_run(workspace_id, configuration_id, options=options, mode=mode)
        )

    def create_external_run(self, workspace_id: str, configuration_id: str) -> Run:
        """Create a run whose events this program produces."""
        return self._portal.call(self._async.create_external_run(workspace_id, configuration_id))

    def get_run(self, run: RunRef) -> Run:
        """The run now, with its summary once it ended."""
        return self._portal.call(self._async.get_run(run))

    def run_of(self, run: RunRef) -> Run:
        """``run`` as a :class:`Run` (a run id is looked up on the server)."""
        return self._portal.call(self._async.run_of(run))

    def list_runs(
        self,
        workspace_id: str,
        *,
        status: str | Sequence[str] | None = None,
        configuration_id: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """A page of a workspace's runs, newest first."""
        return self._portal.call(
            self._async.list_runs(
                workspace_id,
                status=status,
                configuration_id=configuration_id,
                created_after=created_after,
                created_before=created_before,
                limit=limit,
                cursor=cursor,
            )
        )

    def cancel(self, run: RunRef) -> Run:
        """Cancel a run (ClientError with status 409 if it already ended)."""
        return self._portal.call(self._async.cancel(run))

    def events(
        self, run: RunRef, *, after: int = 0, limit: int = 500, wait: float | None = None
    ) -> EventPage:
        """A JSON page of events after ``after``; with ``wait`` a long-poll."""
        return self._portal.call(self._async.events(run, after=after, limit=limit, wait=wait))

    def download(self, run: RunRef, after: int = 0) -> Iterator[bytes]:
        """The log as NDJSON bytes, streamed."""
        return self._portal.iterate(self._async.download(run, after))

    def follow(
        self,
        run: RunRef,
        after: int = 0,
        on_retry: Callable[[int, str], None] | None = None,
    ) -> Iterator[Event]:
        """Typed events live until ``run.completed``, resuming after dropped connections.

        ``on_retry(attempt, reason)`` is called before each reconnect, on the
        client's loop thread: it must not call this client.
        """
        return self._portal.iterate(self._async.follow(run, after, on_retry))

    def search(self, workspace_id: str, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """One search request (contract section 12): each hit, then the ``done`` record."""
        return self._portal.iterate(self._async.search(workspace_id, params))

    def append(
        self,
        run: RunRef,
        events: Sequence[Mapping[str, Any]] | bytes,
        *,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        """Append one batch atomically, retried safely with one idempotency key."""
        return self._portal.call(self._async.append(run, events, idempotency_key=idempotency_key))

    def producer(self, run: RunRef, **options: Any) -> Producer:
        """A batching producer for ``run`` (see :class:`~runevents.client.Producer`)."""
        return Producer(self, run, **options)


async def _cancel_others() -> None:
    me = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not me]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def _make(server: str, token: str | None, **options: Any) -> AsyncClient:
    # built inside the loop thread: httpx's pool belongs to the loop that uses it
    return AsyncClient(server, token, **options)
