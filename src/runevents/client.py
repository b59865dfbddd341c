"""A small async HTTP client for a runevents server (used by the CLI).

It speaks only the contract's routes (plus ``GET /api/v1/runs/{run_id}`` to
find a run by id alone) and turns transport and HTTP errors into
``ClientError`` with a message a person can act on.

SSE is parsed from bytes, split on ``\\n`` only (contract section 5): a
console message may hold U+2028, U+2029 or other characters that
``str.splitlines()`` (and httpx's ``aiter_lines``) would treat as line breaks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from runevents.exceptions import InvalidInput
from runevents.ids import check_run_id

#: how long to wait before reconnecting a dropped SSE stream (seconds)
RECONNECT_DELAY = 1.0
#: consecutive failed reconnects before giving up
MAX_RECONNECTS = 30
#: a stream that sends nothing (not even the server's 15 s keepalive) for this
#: long is taken as dropped and reconnected (seconds)
STREAM_READ_TIMEOUT = 60.0
#: answers of a server (or proxy) that is restarting: the stream is retried
RETRY_STATUSES = frozenset({502, 503, 504})


class ClientError(Exception):
    """The server could not be reached or answered with an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class SSEParser:
    """Incremental SSE decoder: bytes in, ``(event_id, data)`` of each complete event out.

    Lines end at ``\\n`` (a ``\\r`` before it is dropped); only that byte splits,
    so JSON in ``data`` arrives intact whatever Unicode it holds. Comments
    (``: keepalive``) and ``retry:`` are skipped.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._id: bytes | None = None

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        """The events completed by ``chunk``."""
        out: list[tuple[str | None, bytes]] = []
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    event_id = None if self._id is None else self._id.decode("utf-8", "replace")
                    out.append((event_id, b"\n".join(self._data)))
                self._data = []
                self._id = None
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"id":
                self._id = value
        return out


class Client:
    """Async client for one server.

    ``transport``: an httpx transport to use instead of the network (tests).
    """

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            self._http = httpx.AsyncClient(
                base_url=self.server,
                headers=headers,
                timeout=httpx.Timeout(timeout),
                transport=transport,
            )
        except (httpx.InvalidURL, ValueError) as exc:
            raise ClientError(
                f"invalid server URL {server!r} ({exc}); use a form like http://127.0.0.1:8000"
            ) from exc

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ plumbing
    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            error = response.json()["error"]
            message = f"{error['message']} ({error['code']}, HTTP {response.status_code})"
        except Exception:
            message = f"HTTP {response.status_code}: {response.text[:200]}"
        if response.status_code == 401:
            message += "; pass --token or set RUNEVENTS_TOKEN"
        raise ClientError(message, response.status_code)

    def _unreachable(self, exc: Exception) -> ClientError:
        return ClientError(
            f"cannot reach the server at {self.server} ({exc.__class__.__name__}: {exc}); "
            "is `runevents serve` running? (--server / RUNEVENTS_SERVER)"
        )

    async def _request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kw)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._raise_for(response)
        return response

    # ------------------------------------------------------------------ routes
    async def create_run(
        self, workspace_id: str, configuration_id: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        r = await self._request(
            "POST",
            f"/api/v1/workspaces/{workspace_id}/configurations/{configuration_id}/runs",
            json={"mode": "execute", "options": options},
        )
        body: dict[str, Any] = r.json()
        return body

    async def lookup(self, run_id: str) -> dict[str, Any]:
        """``{"run": ..., "summary": ...}`` of a run found by its id alone."""
        try:
            check_run_id(run_id)
        except InvalidInput as exc:
            raise ClientError(f"{run_id!r}: {exc.message}") from exc
        r = await self._request("GET", f"/api/v1/runs/{run_id}")
        body: dict[str, Any] = r.json()
        return body

    @staticmethod
    def run_path(run: dict[str, Any]) -> str:
        return (
            f"/api/v1/workspaces/{run['workspace_id']}/configurations/"
            f"{run['configuration_id']}/runs/{run['id']}"
        )

    async def list_runs(self, workspace_id: str, params: dict[str, Any]) -> dict[str, Any]:
        r = await self._request("GET", f"/api/v1/workspaces/{workspace_id}/runs", params=params)
        body: dict[str, Any] = r.json()
        return body

    async def cancel(self, run: dict[str, Any]) -> dict[str, Any]:
        r = await self._request("POST", self.run_path(run) + "/cancel")
        body: dict[str, Any] = r.json()
        return body

    async def download(self, run: dict[str, Any], after: int = 0) -> AsyncIterator[bytes]:
        """The log as NDJSON bytes, streamed (byte for byte as stored)."""
        url = self.run_path(run) + "/events"
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
                    self._raise_for(response)
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    async def search(
        self, workspace_id: str, params: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """One search request (contract section 12): each hit, then the done record."""
        try:
            async with self._http.stream(
                "GET",
                f"/api/v1/workspaces/{workspace_id}/search",
                params=params,
                timeout=httpx.Timeout(30.0, read=None),  # a long search sends nothing meanwhile
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._raise_for(response)
                pending = b""
                async for chunk in response.aiter_bytes():
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        if line:
                            yield orjson.loads(line)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    async def follow(self, run: dict[str, Any], after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Events over SSE until run.completed, reconnecting after a dropped connection.

        Reconnects send ``Last-Event-ID`` (the last sequence received), so
        nothing is repeated or missed. Ends without an event when the position
        is already past ``run.completed`` (the server answers 204).
        """
        url = self.run_path(run) + "/events"
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
                        self._raise_for(response)
                    failures = 0
                    parser = SSEParser()
                    async for chunk in response.aiter_bytes():
                        for _, data in parser.feed(chunk):
                            event: dict[str, Any] = orjson.loads(data)
                            sequence = int(event["sequence"])
                            if sequence <= last:
                                continue  # never twice, whatever the server resends
                            last = sequence
                            yield event
                            if event.get("type") == "run.completed":
                                return
                # the server closed without run.completed: reconnect from `last`
            except httpx.TransportError as exc:
                failures += 1
                if failures > MAX_RECONNECTS:
                    raise ClientError(
                        f"lost the event stream of {run['id']} and could not reconnect "
                        f"to {self.server}: {exc.__class__.__name__}"
                    ) from exc
            await asyncio.sleep(RECONNECT_DELAY)
