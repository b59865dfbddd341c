"""The async client: every contract route a pipeline or an agent needs, over httpx.

Transport errors and HTTP errors become :class:`ClientError` with a message a
person can act on. Appends retry what is safe to retry: a batch carries an
``Idempotency-Key`` (one per batch, the same on every attempt), so a retry
after a lost answer appends nothing twice (contract section 6); 503 (and 502,
504, 429) are retried after the server's ``Retry-After``.

Nothing is sent before the ids that go into a path are checked (``checks.py``),
and no message shows the credentials a server URL may carry.
"""

from __future__ import annotations

import asyncio
import random
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import orjson

from runevents.client.checks import check_token, checked_name, checked_run_id
from runevents.client.errors import ClientError, ProducerError, redact
from runevents.client.models import (
    AppendResult,
    Event,
    EventPage,
    Run,
    RunCompleted,
    RunPage,
    parse_event,
    run_path,
)
from runevents.client.sse import SSEParser

if TYPE_CHECKING:
    from runevents.client.producer import AsyncProducer

#: how long to wait before reconnecting a dropped SSE stream (seconds)
RECONNECT_DELAY = 1.0
#: consecutive failed reconnects before giving up
MAX_RECONNECTS = 30
#: a stream that sends nothing (not even the server's 15 s keepalive) for this
#: long is taken as dropped and reconnected (seconds)
STREAM_READ_TIMEOUT = 60.0
#: answers of a server (or proxy) that is busy or restarting: retried
RETRY_STATUSES = frozenset({429, 502, 503, 504})

#: what a run argument may be: a Run, the server's run object, or a run id
RunRef = Run | Mapping[str, Any] | str

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How appends are retried: up to ``attempts`` tries within ``deadline`` seconds.

    The wait before a retry is the server's ``Retry-After`` when it sent one,
    else exponential backoff from ``base_delay`` to ``max_delay`` with jitter.
    """

    attempts: int = 10
    deadline: float = 120.0
    base_delay: float = 0.2
    max_delay: float = 10.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before try number ``attempt + 1``."""
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after.strip()), self.max_delay * 6)
        backoff: float = min(self.max_delay, self.base_delay * 2**attempt)
        return backoff * (0.5 + random.random() / 2)


class AsyncClient:
    """Async client of one server. ``async with AsyncClient(...) as client:`` closes it.

    ``transport``: an httpx transport to use instead of the network (tests).
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
        self.server = server.rstrip("/")
        #: the server URL as messages show it: without credentials
        self.shown_server = redact(self.server, self.server)
        self.retry = retry or RetryPolicy()
        self.reconnect_delay = reconnect_delay
        #: producers made from this client: ``aclose`` flushes the ones still open
        self._producers: weakref.WeakSet[AsyncProducer] = weakref.WeakSet()
        headers = {"Authorization": f"Bearer {check_token(token)}"} if token else {}
        try:
            self._http = httpx.AsyncClient(
                base_url=self.server,
                headers=headers,
                timeout=httpx.Timeout(timeout),
                transport=transport,
            )
        except (httpx.InvalidURL, ValueError) as exc:
            shown = redact(f"invalid server URL {server!r} ({exc})", server)
            raise ClientError(f"{shown}; use a form like http://127.0.0.1:8000") from None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Flush and close the producers still open, then close the connections.

        Raises a producer's ProducerError (after closing everything) if one could
        not deliver its events and never said so yet.
        """
        failure: ProducerError | None = None
        for producer in list(self._producers):
            if producer.closed or not producer.runs_here():
                continue
            reported = producer.error_reported
            try:
                await producer.aclose()
            except ProducerError as exc:
                if not reported:
                    failure = failure or exc
        await self._http.aclose()
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ plumbing
    def _error(self, response: httpx.Response) -> ClientError:
        code = None
        try:
            error = response.json()["error"]
            code = str(error["code"])
            message = f"{error['message']} ({code}, HTTP {response.status_code})"
        except Exception:
            message = f"HTTP {response.status_code}: {response.text[:200]}"
        if response.status_code == 401:
            message += "; pass a token (--token / RUNEVENTS_TOKEN)"
        return ClientError(message, response.status_code, code)

    def _unreachable(self, exc: Exception) -> ClientError:
        reason = redact(f"{exc.__class__.__name__}: {exc}", self.server)
        return ClientError(
            f"cannot reach the server at {self.shown_server} ({reason}); "
            "is `runevents serve` running? (--server / RUNEVENTS_SERVER)"
        )

    def _unreadable(self, what: str, exc: Exception, status: int | None = None) -> ClientError:
        # a proxy's HTML page, a truncated body, another service on that port...
        reason = redact(f"{exc.__class__.__name__}: {exc}", self.server)
        return ClientError(
            f"the server at {self.shown_server} sent {what} this client cannot read "
            f"({reason}); is it a runevents server?",
            status,
        )

    def _read(self, response: httpx.Response, build: Callable[[Any], T]) -> T:
        """``build(the answer's JSON)``; ClientError when it is not the JSON expected."""
        try:
            return build(orjson.loads(response.content))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            kind = response.headers.get("content-type", "no content type")
            start = response.text[:100]
            raise self._unreadable(
                f"an answer (HTTP {response.status_code}, {kind}: {start!r})",
                exc,
                response.status_code,
            ) from exc

    def _read_line(self, data: bytes | str, build: Callable[[Any], T]) -> T:
        """``build(one NDJSON line or SSE data)``; ClientError when it is not JSON."""
        try:
            return build(orjson.loads(data))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._unreadable(f"a line ({data[:100]!r})", exc) from exc

    async def _request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kw)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise self._error(response)
        return response

    async def _json(
        self, method: str, url: str, build: Callable[[dict[str, Any]], T], **kw: Any
    ) -> T:
        return self._read(await self._request(method, url, **kw), build)

    async def run_of(self, run: RunRef) -> Run:
        """``run`` as a :class:`Run` (a run id is looked up on the server)."""
        if isinstance(run, Run):
            return run
        if isinstance(run, str):
            return await self.get_run(run)
        return Run.from_json(run)

    async def _path(self, run: RunRef) -> str:
        if isinstance(run, Mapping):
            return run_path(run["workspace_id"], run["configuration_id"], run["id"])
        return (await self.run_of(run)).path

    # ------------------------------------------------------------------ runs
    async def create_run(
        self,
        workspace_id: str,
        configuration_id: str,
        *,
        options: Mapping[str, Any] | None = None,
        mode: str = "execute",
    ) -> Run:
        """Queue a run of a registered configuration."""
        return await self._json(
            "POST",
            _runs_path(workspace_id, configuration_id),
            _run_answer,
            json={"mode": mode, "options": dict(options or {})},
        )

    async def create_external_run(self, workspace_id: str, configuration_id: str) -> Run:
        """Create a run whose events this program produces (``append`` / ``producer``)."""
        return await self._json(
            "POST", _runs_path(workspace_id, configuration_id), _run_answer, json={"external": True}
        )

    async def get_run(self, run: RunRef) -> Run:
        """The run now, with its summary once it ended."""
        if isinstance(run, str):
            return await self._json("GET", f"/api/v1/runs/{checked_run_id(run)}", _run_answer)
        return await self._json("GET", await self._path(run), _run_answer)

    async def list_runs(
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
        url = f"/api/v1/workspaces/{checked_name(workspace_id, 'workspace_id')}/runs"
        if configuration_id is not None:
            checked_name(configuration_id, "configuration_id")
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = [status] if isinstance(status, str) else list(status)
        for key, value in (
            ("configuration_id", configuration_id),
            ("created_after", created_after),
            ("created_before", created_before),
            ("cursor", cursor),
        ):
            if value is not None:
                params[key] = value
        return await self._json(
            "GET",
            url,
            lambda body: RunPage(
                [Run.from_json(r) for r in body["items"]], body.get("next_cursor")
            ),
            params=params,
        )

    async def cancel(self, run: RunRef) -> Run:
        """Cancel a run (ClientError with status 409 if it already ended)."""
        return await self._json(
            "POST",
            await self._path(run) + "/cancel",
            lambda body: Run.from_json(body.get("run", body)),
        )

    # ------------------------------------------------------------------ events
    async def events(
        self, run: RunRef, *, after: int = 0, limit: int = 500, wait: float | None = None
    ) -> EventPage:
        """A JSON page of events after ``after``; with ``wait`` a long-poll (at most 60 s)."""
        params: dict[str, Any] = {"after_sequence": after, "limit": limit}
        timeout = None
        if wait is not None:
            params["wait"] = wait
            timeout = httpx.Timeout(30.0, read=wait + 30.0)
        path = await self._path(run) + "/events"
        kw: dict[str, Any] = {"params": params}
        if timeout is not None:
            kw["timeout"] = timeout
        return await self._json(
            "GET",
            path,
            lambda body: EventPage(
                [parse_event(e) for e in body["events"]],
                int(body["next_after_sequence"]),
                bool(body["has_more"]),
            ),
            **kw,
        )

    async def download(self, run: RunRef, after: int = 0) -> AsyncIterator[bytes]:
        """The log as NDJSON bytes, streamed (byte for byte as stored)."""
        url = await self._path(run) + "/events"
        try:
            async with self._http.stream(
                "GET",
                url,
                params={"after_sequence": after},
                headers={"Accept": "application/x-ndjson"},
                timeout=httpx.Timeout(30.0, read=STREAM_READ_TIMEOUT),
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._error(response)
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    async def follow(
        self,
        run: RunRef,
        after: int = 0,
        on_retry: Callable[[int, str], None] | None = None,
    ) -> AsyncIterator[Event]:
        """Typed events over SSE until ``run.completed``, resuming after dropped connections.

        ``on_retry(attempt, reason)`` is called before each reconnect (the CLI says
        "reconnecting...").

        Each reconnect sends ``Last-Event-ID`` (the last sequence received), so
        nothing is repeated or missed. Ends without an event when ``after`` is
        already past ``run.completed`` (the server answers 204).
        """
        url = await self._path(run) + "/events"
        last = after
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
            try:
                async with self._http.stream(
                    "GET",
                    url,
                    params={"stream": "true", "after_sequence": after},
                    headers=headers,
                    timeout=httpx.Timeout(30.0, read=STREAM_READ_TIMEOUT),
                ) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code in RETRY_STATUSES:
                        raise httpx.TransportError(f"HTTP {response.status_code}")
                    if response.status_code >= 400:
                        await response.aread()
                        raise self._error(response)
                    failures = 0
                    parser = SSEParser()
                    async for chunk in response.aiter_bytes():
                        for _, data in parser.feed(chunk):
                            event = self._read_line(data, parse_event)
                            if event.sequence <= last:
                                continue  # never twice, whatever the server resends
                            last = event.sequence
                            yield event
                            if isinstance(event, RunCompleted):
                                return
                # the server closed without run.completed: reconnect from `last`
            except httpx.TransportError as exc:
                failures += 1
                if failures > MAX_RECONNECTS:
                    raise ClientError(
                        f"lost the event stream of {url} and could not reconnect "
                        f"to {self.shown_server}: {exc.__class__.__name__}"
                    ) from exc
                if on_retry is not None:
                    on_retry(failures, str(exc) or exc.__class__.__name__)
            await asyncio.sleep(self.reconnect_delay)

    async def search(
        self, workspace_id: str, params: Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """One search request (contract section 12): each hit, then the ``done`` record."""
        try:
            async with self._http.stream(
                "GET",
                f"/api/v1/workspaces/{checked_name(workspace_id, 'workspace_id')}/search",
                params=dict(params),
                timeout=httpx.Timeout(30.0, read=None),  # a long search sends nothing meanwhile
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._error(response)
                pending = b""
                async for chunk in response.aiter_bytes():
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        if line:
                            yield self._read_line(line, _json_object)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    async def append(
        self,
        run: RunRef,
        events: Sequence[Mapping[str, Any]] | bytes,
        *,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        """Append one batch atomically; retried safely (one ``Idempotency-Key`` for all tries).

        ``events``: ``{"type": ..., "payload": {...}}`` mappings, or an NDJSON body.
        """
        body = events if isinstance(events, bytes) else encode_batch(events)
        return await self._append_body(
            await self._path(run) + "/events", body, idempotency_key or new_key()
        )

    async def _append_body(self, url: str, body: bytes, key: str) -> AppendResult:
        headers = {"Content-Type": "application/x-ndjson", "Idempotency-Key": key}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry.deadline
        attempt = 0
        while True:
            retry_after: str | None = None
            try:
                response = await self._http.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                failure: ClientError = self._unreachable(exc)
            else:
                if response.status_code < 400:
                    return self._read(
                        response,
                        lambda answer: AppendResult(
                            answer["first_sequence"], answer["last_sequence"]
                        ),
                    )
                failure = self._error(response)
                if response.status_code not in RETRY_STATUSES:
                    raise failure
                retry_after = response.headers.get("retry-after")
            attempt += 1
            delay = self.retry.delay(attempt - 1, retry_after)
            if attempt >= self.retry.attempts or loop.time() + delay > deadline:
                raise failure
            await asyncio.sleep(delay)

    def producer(self, run: RunRef, **options: Any) -> AsyncProducer:
        """A batching producer for ``run`` (see :class:`~runevents.client.AsyncProducer`)."""
        from runevents.client.producer import AsyncProducer

        return AsyncProducer(self, run, **options)


def encode_batch(events: Sequence[Mapping[str, Any]]) -> bytes:
    """The NDJSON body of ``events``."""
    return b"".join(orjson.dumps(dict(e)) + b"\n" for e in events)


def new_key() -> str:
    """A fresh idempotency key (one batch, all its tries)."""
    return uuid.uuid4().hex


def _runs_path(workspace_id: str, configuration_id: str) -> str:
    workspace_id = checked_name(workspace_id, "workspace_id")
    configuration_id = checked_name(configuration_id, "configuration_id")
    return f"/api/v1/workspaces/{workspace_id}/configurations/{configuration_id}/runs"


def _run_answer(body: dict[str, Any]) -> Run:
    return Run.from_json(body["run"], body.get("summary"))


def _json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"a JSON object was expected, not {type(value).__name__}")
    return value
