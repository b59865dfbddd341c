"""Forwarding a producer's batch to the replica that owns the run's writer (contract 10).

Any replica accepts any run's batches, but a run has one writer: the process
holding its writer lease keeps the writer state and the summary fold. A batch
that reaches another replica while the owner is alive is relayed to the owner
here, and the owner's answer is returned as it is; only a dead or idle owner's
run is taken over (its lease expired or given up: ``Ownership.acquire``).

The ingest route asks :meth:`Forwarder.relay_early` first, for a run this
process does not hold: if another live replica holds its writer (the hint of
the last relay, else one database read), the batch goes there before this
replica parses it. Otherwise it appends the batch itself; if taking the run
then meets another writer after all (a race, or a holder that is not a
registered replica), the manager raises
:class:`~runevents.exceptions.WriterMoving` and :meth:`Forwarder.forward`
decides again. The decision (:func:`decide`):

* a request that was itself forwarded (``X-Runevents-Forwarded-By``) is never
  forwarded again: it answers 503 + ``Retry-After: 1``. Two replicas that each
  think the other owns the run (a lease moving) cannot bounce a batch forever;
* no live lease holder, a holder that is this process, or one that is not a
  registered replica seen within ``replicas.stale_after`` (a worker; a
  process killed without a goodbye): 503 + ``Retry-After: 1``. The lease of a
  dead owner expires within ``writer_lease_seconds``; a retry then takes the run;
* otherwise the request goes to the owner's advertised URL: same method, path,
  query and body bytes; the headers the owner needs to judge it
  (``Content-Type``, ``Authorization``, ``Cookie``, ``Idempotency-Key``,
  ``X-Request-ID``, ``User-Agent``, ``Accept``) plus
  ``X-Runevents-Forwarded-By: <this process's owner id>``. ``Host`` is the
  owner's (its open-mode guard answers 421 to a foreign one). An owner that
  cannot be reached (refused, timed out) gives 503 + ``Retry-After: 1``.

An owner that is frozen (SIGSTOP, a hung VM: its kernel still accepts the
connection and the body, nothing answers) is told from one that is only slow
with a large batch by a liveness probe: a relay not answered within
``PROBE_AFTER`` seconds is joined by ``GET /api/v1/health`` to the owner,
again each ``PROBE_AFTER`` seconds while the relay waits. A live owner answers
that at once (the relay then waits up to ``TIMEOUT_SECONDS``, a 16 MiB batch
included); an owner that does not answer it within ``PROBE_SECONDS`` is given
up: the relay is dropped, the batch gets 503 + ``Retry-After: 1``, and the
owner is marked unresponsive for ``unresponsive_seconds`` (the writer lease:
a frozen owner renews nothing, so its leases are gone by then). While marked,
no batch is relayed to it: the retries take the run once its lease expires,
or get an immediate 503 before. So a retried batch is accepted within the
lease plus about one retry (contract 10: within 10 s), not a relay timeout
after it. An owner that comes back (SIGCONT) refreshes its registry row
(``seen_at``) within a refresh interval; a row read after the mark that is
newer than the first one read after it ends the mark early.

A relay dropped this way may still be appended by the owner if it wakes
before its lease is taken (as with any lost answer: the producer's retry with
the same ``Idempotency-Key`` gets that answer); once another process took the
run, the woken owner's write is fenced by the writer epoch.

Authorization: the owner authenticates the request again, with its own tokens
file, so every replica of a deployment must be given the same tokens file (the
tokens are not in the database). A cookie-signed request passed this
replica's ``Origin`` check; its ``Origin`` is rewritten to the owner's, since
the owner compares it with its own ``Host`` (the session key is in the
database, shared: the owner accepts the cookie itself).

One ``httpx.AsyncClient`` per process (a pooled, kept-alive connection per
peer); it ignores ``HTTP_PROXY`` and friends (replica-to-replica traffic stays
inside the deployment). A batch the owner appended but whose answer was lost
on the way back (a timeout past the body) gets 503 here: as with any lost
answer, the producer's retry with the same ``Idempotency-Key`` appends
nothing twice (the client library always sends one).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import urlsplit

import httpx
from fastapi import Request
from fastapi.responses import Response

from runevents import metrics
from runevents.db.replicas import Replica, ReplicaRepository
from runevents.exceptions import WriterMoving
from runevents.logs import REQUEST_ID
from runevents.models import utcnow

log = logging.getLogger(__name__)

#: set on a forwarded request: the owner id of the replica that forwarded it
FORWARDED_BY = "X-Runevents-Forwarded-By"
#: request headers the owner needs to judge the batch as if it came directly
PASSED_REQUEST_HEADERS = (
    "content-type",
    "authorization",
    "cookie",
    "idempotency-key",
    "x-request-id",
    "user-agent",
    "accept",
)
#: owner answer headers not copied: hop-by-hop, recomputed here, or set by our own middleware
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "date",
        "server",
        "x-request-id",
    }
)
#: seconds a whole forwarded request may take (the owner's group commit included)
TIMEOUT_SECONDS = 10.0
#: seconds to connect to the owner (a dead machine should not hold the batch long)
CONNECT_SECONDS = 2.0
#: seconds a relay may wait for its answer before the owner's liveness is probed
PROBE_AFTER = 1.0
#: seconds the owner has to answer the liveness probe (``GET /api/v1/health``)
PROBE_SECONDS = 2.0
#: the path of the liveness probe (no token needed; the owner's event loop answers it)
PROBE_PATH = "/api/v1/health"
#: seconds an owner that did not answer the probe is not relayed to (the default writer lease)
UNRESPONSIVE_SECONDS = 8.0
#: seconds a run's owner, once relayed to, is trusted without asking the database
HINT_SECONDS = 2.0
#: runs whose owner is remembered at most (the oldest hints go first)
MAX_HINTS = 10_000


class Outcome(enum.StrEnum):
    """What became of a batch that met another process's writer (the metric's label)."""

    #: relayed; the owner answered (its status, whatever it is, went back)
    ANSWERED = "answered"
    #: the owner did not answer (refused, timed out): 503
    UNREACHABLE = "unreachable"
    #: no live holder, the holder is this process, or not a registered live replica: 503
    NO_OWNER = "no_owner"
    #: the batch was already forwarded to us: never forwarded again, 503
    NOT_AGAIN = "not_again"


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """Forward to ``url``, or (``url`` None) answer 503 for ``outcome``'s reason."""

    outcome: Outcome
    replica: Replica | None = None
    owner: str | None = None

    @property
    def url(self) -> str | None:
        return None if self.replica is None else self.replica.url.rstrip("/")


def decide(
    *,
    forwarded_by: str | None,
    me: str,
    owner: str | None,
    replica: Replica | None,
    stale_after: float,
    now: datetime | None = None,
    my_url: str | None = None,
) -> Decision:
    """Where a batch that met another writer goes (pure: the module doc's rules).

    ``my_url``: the address this process is registered at. An owner registered at
    that very address is an earlier process that listened there -- this one was
    restarted after it died (kill -9) -- so it is gone: relaying to it would send
    the batch back to this process (once, a restarted server did exactly that and
    answered its own relay "forwarded here, and not forwarded again")."""
    if forwarded_by is not None:
        return Decision(Outcome.NOT_AGAIN, owner=owner)
    if owner is None or owner == me:
        return Decision(Outcome.NO_OWNER, owner=owner)
    if replica is None or replica.owner != owner or not replica.fresh(stale_after, now):
        return Decision(Outcome.NO_OWNER, owner=owner)
    if my_url is not None and replica.url.rstrip("/") == my_url.rstrip("/"):
        return Decision(Outcome.NO_OWNER, owner=owner)
    return Decision(Outcome.ANSWERED, replica=replica, owner=owner)


def request_headers(headers: Mapping[str, str], *, me: str, owner_url: str) -> dict[str, str]:
    """The headers of the forwarded request (module doc)."""
    out = {name: headers[name] for name in PASSED_REQUEST_HEADERS if name in headers}
    request_id = REQUEST_ID.get()
    if request_id is not None:
        # the id this replica logs the request under (the client's, or one it made up)
        out["x-request-id"] = request_id
    if "origin" in headers:
        # this replica checked Origin against its own Host; the owner checks it
        # against the Host it is reached at
        parts = urlsplit(owner_url)
        out["origin"] = f"{parts.scheme}://{parts.netloc}"
    out[FORWARDED_BY.lower()] = me
    return out


def response_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The owner's answer headers worth passing on (repeated ones kept)."""
    return [(k, v) for k, v in headers.multi_items() if k.lower() not in DROPPED_RESPONSE_HEADERS]


class Forwarder:
    """Relays batches to the owner of a run's writer; one per serving process."""

    def __init__(
        self,
        replicas: ReplicaRepository,
        me: str,
        *,
        stale_after: float,
        hint_seconds: float = HINT_SECONDS,
        unresponsive_seconds: float = UNRESPONSIVE_SECONDS,
        probe_after: float = PROBE_AFTER,
        probe_seconds: float = PROBE_SECONDS,
        client: httpx.AsyncClient | None = None,
        url: str | None = None,
    ) -> None:
        self.replicas = replicas
        self.me = me
        #: the address this process is registered at (``decide``'s ``my_url``)
        self.url = url
        self.stale_after = stale_after
        #: how long a relayed run's owner is trusted without asking the database
        self.hint_seconds = hint_seconds
        #: run id -> (its owner's replica, monotonic time the hint expires), oldest first
        self._owners: dict[str, tuple[Replica, float]] = {}
        #: how long an owner that did not answer the liveness probe is not relayed to
        self.unresponsive_seconds = unresponsive_seconds
        self.probe_after = probe_after
        self.probe_seconds = probe_seconds
        #: owner id -> (monotonic time until which it is not relayed to, as it did not
        #: answer; its registry row's ``seen_at`` first read after that, None before)
        self._unresponsive: dict[str, tuple[float, datetime | None]] = {}
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(TIMEOUT_SECONDS, connect=CONNECT_SECONDS),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            trust_env=False,
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def where(self, run_id: str, moving: WriterMoving, forwarded_by: str | None) -> Decision:
        """The decision for a batch of ``run_id`` that met ``moving``."""
        if forwarded_by is not None:
            return decide(
                forwarded_by=forwarded_by, me=self.me, owner=moving.owner, replica=None,
                stale_after=self.stale_after, my_url=self.url,
            )  # fmt: skip
        if moving.owner is not None:
            owner: str | None = moving.owner
            replica = await self.replicas.lookup(moving.owner)
        else:
            # a local guard said no (another writer's file lock on a shared data dir):
            # the database still names the lease holder, if any
            owner, replica = await self.replicas.writer_replica(run_id)
        return decide(
            forwarded_by=None, me=self.me, owner=owner, replica=replica,
            stale_after=self.stale_after, now=utcnow(), my_url=self.url,
        )  # fmt: skip

    # ------------------------------------------------------------------ the known owners
    def known(self, run_id: str) -> Replica | None:
        """The replica a batch of ``run_id`` was last relayed to, while the hint is young."""
        hint = self._owners.get(run_id)
        if hint is None:
            return None
        replica, until = hint
        if time.monotonic() >= until:
            del self._owners[run_id]
            return None
        return replica

    def _remember(self, run_id: str, replica: Replica) -> None:
        self._owners.pop(run_id, None)
        self._owners[run_id] = (replica, time.monotonic() + self.hint_seconds)
        while len(self._owners) > MAX_HINTS:
            del self._owners[next(iter(self._owners))]  # the oldest

    def forget(self, run_id: str) -> None:
        self._owners.pop(run_id, None)

    def unresponsive(self, replica: Replica) -> bool:
        """Whether ``replica`` (its row just read from the database) did not answer a
        liveness probe lately and has not refreshed its row since (module doc)."""
        mark = self._unresponsive.get(replica.owner)
        if mark is None:
            return False
        until, seen_at = mark
        if time.monotonic() >= until or (seen_at is not None and replica.seen_at > seen_at):
            del self._unresponsive[replica.owner]  # its lease is gone, or it is back
            return False
        if seen_at is None:
            # the first row read after the probe failed: a frozen owner's stays as it is
            self._unresponsive[replica.owner] = (until, replica.seen_at)
        return True

    async def relay_early(self, request: Request, body: bytes, run_id: str) -> Response | None:
        """The usual path, for a run this process does not hold: relay the batch before
        parsing it if another live replica holds the writer (None: it does not; the
        caller appends the batch itself, taking the run).

        The owner comes from the hint of the last relay, else from one read of the
        run's row joined with the registry. The owner judges every batch anyway
        (it parses, authenticates and may refuse): a hint gone stale costs one
        503 (the owner refuses a forwarded batch it cannot take) and is dropped.
        """
        if FORWARDED_BY.lower() in request.headers:
            return None  # a relayed batch is this process's to take or refuse
        replica = self.known(run_id)
        if replica is not None and replica.owner in self._unresponsive:
            self.forget(run_id)  # its row is read again below
            replica = None
        if replica is None:
            owner, found = await self.replicas.writer_replica(run_id)
            decision = decide(
                forwarded_by=None, me=self.me, owner=owner, replica=found,
                stale_after=self.stale_after, my_url=self.url,
            )  # fmt: skip
            if decision.replica is None:
                return None
            replica = decision.replica
            if self.unresponsive(replica):
                # the owner is frozen: this process tries the run itself (it takes it
                # once the owner's lease expired; until then ``forward`` answers 503)
                return None
        return await self._relay(request, body, run_id, replica)

    # ------------------------------------------------------------------ the slow path
    async def forward(
        self, request: Request, body: bytes, run_id: str, moving: WriterMoving
    ) -> Response:
        """The owner's answer to this batch; raises WriterMoving (503 + Retry-After) if none."""
        self.forget(run_id)
        decision = await self.where(run_id, moving, request.headers.get(FORWARDED_BY))
        if decision.replica is None:
            metrics.ingest_forwarded(decision.outcome.value)
            raise _unavailable(run_id, decision)
        if self.unresponsive(decision.replica):
            metrics.ingest_forwarded(Outcome.UNREACHABLE.value)
            raise WriterMoving(_NO_ANSWER.format(run_id=run_id), owner=decision.owner)
        return await self._relay(request, body, run_id, decision.replica)

    async def _relay(
        self, request: Request, body: bytes, run_id: str, replica: Replica
    ) -> Response:
        base = replica.url.rstrip("/")
        url = base + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        headers = request_headers(request.headers, me=self.me, owner_url=base)
        try:
            answer = await self._request(request.method, url, body, headers, base)
        except (httpx.HTTPError, _Unresponsive) as exc:
            self.forget(run_id)
            if isinstance(exc, _Unresponsive | httpx.ConnectTimeout):
                # frozen, or a machine gone without a reset: not relayed to for a lease
                until = time.monotonic() + self.unresponsive_seconds
                self._unresponsive[replica.owner] = (until, None)
            metrics.ingest_forwarded(Outcome.UNREACHABLE.value)
            log.warning(
                "run %s: the writer's replica %s at %s did not answer (%s: %s)",
                run_id, replica.owner, base, type(exc).__name__, exc,
            )  # fmt: skip
            raise WriterMoving(_NO_ANSWER.format(run_id=run_id), owner=replica.owner) from exc
        self._unresponsive.pop(replica.owner, None)
        metrics.ingest_forwarded(Outcome.ANSWERED.value)
        if answer.status_code == 503:
            self.forget(run_id)  # the owner is moving on: the next batch asks the database
        else:
            self._remember(run_id, replica)
        response = Response(content=answer.content, status_code=answer.status_code)
        # raw headers: a repeated one (Set-Cookie, Vary) stays repeated
        response.raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in response_headers(answer.headers)
        ] + [(b"content-length", str(len(answer.content)).encode("ascii"))]
        return response

    async def _request(
        self, method: str, url: str, body: bytes, headers: dict[str, str], base: str
    ) -> httpx.Response:
        """The owner's answer; raises _Unresponsive if the owner stops answering a probe."""
        sending = asyncio.ensure_future(
            self.client.request(method, url, content=body, headers=headers)
        )
        probe: asyncio.Future[bool] | None = None
        try:
            while True:
                await asyncio.wait({sending}, timeout=self.probe_after)
                if sending.done():
                    return sending.result()
                # no answer yet: a slow batch, or an owner that answers nothing at all
                probe = asyncio.ensure_future(self._alive(base))
                await asyncio.wait({sending, probe}, return_when=asyncio.FIRST_COMPLETED)
                if sending.done():
                    return sending.result()
                if not probe.result():
                    raise _Unresponsive(f"{base} did not answer {PROBE_PATH}")
                probe = None
        finally:
            for pending in (sending, probe):
                if pending is not None and not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                        await pending

    async def _alive(self, base: str) -> bool:
        """Whether the owner's server answers anything at all within ``probe_seconds``."""
        try:
            # httpx's timeouts are per operation; the probe has probe_seconds in all
            async with asyncio.timeout(self.probe_seconds):
                await self.client.get(base + PROBE_PATH, timeout=self.probe_seconds)
        except (httpx.HTTPError, TimeoutError):
            return False
        return True


class _Unresponsive(Exception):
    """The owner accepted the relay but did not answer the liveness probe."""


_NO_ANSWER = "the replica holding the writer of run {run_id} does not answer; retry shortly"


def _unavailable(run_id: str, decision: Decision) -> WriterMoving:
    if decision.outcome is Outcome.NOT_AGAIN:
        message = (
            f"this replica does not hold the writer of run {run_id} (the batch was "
            "forwarded here, and is not forwarded again); retry shortly"
        )
    else:
        message = f"the writer of run {run_id} is moving between processes; retry shortly"
    return WriterMoving(message, owner=decision.owner)
