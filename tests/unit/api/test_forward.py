"""Forwarding a batch to the run's writer (api/forward.py): the decisions, the headers, and
the relay against an in-memory owner (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import timedelta
from typing import Any, cast

import httpx
import pytest
from starlette.requests import Request

from runevents import metrics
from runevents.api.forward import (
    FORWARDED_BY,
    PROBE_PATH,
    Forwarder,
    Outcome,
    decide,
    request_headers,
    response_headers,
)
from runevents.db.replicas import Replica, ReplicaRepository
from runevents.exceptions import WriterMoving
from runevents.logs import REQUEST_ID
from runevents.models import utcnow

ME = "host-b:2:bbbb"
OWNER = "host-a:1:aaaa"
PATH = "/api/v1/workspaces/ws/configurations/cfg/runs/run_01HZZZZZZZZZZZZZZZZZZZZZZZ/events"
RUN = "run_01HZZZZZZZZZZZZZZZZZZZZZZZ"


def replica(owner: str = OWNER, *, age: float = 0.0, url: str = "http://10.0.0.1:8000") -> Replica:
    return Replica(owner=owner, url=url, seen_at=utcnow() - timedelta(seconds=age))


# ---------------------------------------------------------------------------- decide


def test_a_live_registered_owner_gets_the_batch() -> None:
    d = decide(forwarded_by=None, me=ME, owner=OWNER, replica=replica(), stale_after=12)
    assert (d.outcome, d.url, d.owner) == (Outcome.ANSWERED, "http://10.0.0.1:8000", OWNER)


def test_a_forwarded_batch_is_never_forwarded_again() -> None:
    d = decide(forwarded_by="host-c:3:cccc", me=ME, owner=OWNER, replica=replica(), stale_after=12)
    assert (d.outcome, d.url) == (Outcome.NOT_AGAIN, None)


@pytest.mark.parametrize(
    ("owner", "found"),
    [
        pytest.param(None, None, id="no live lease"),
        pytest.param(ME, replica(ME), id="the holder is this process"),
        pytest.param(OWNER, None, id="a holder that never registered (a worker)"),
        pytest.param(OWNER, replica(age=13), id="a holder not seen for too long"),
        pytest.param(OWNER, replica("host-x:9:xxxx"), id="another replica's row"),
    ],
)
def test_no_live_owner_to_forward_to(owner: str | None, found: Replica | None) -> None:
    d = decide(forwarded_by=None, me=ME, owner=owner, replica=found, stale_after=12)
    assert (d.outcome, d.url) == (Outcome.NO_OWNER, None)


def test_a_restarted_server_forwarded_batches_to_itself_an_owner_at_its_own_address() -> None:
    """An owner registered at this process's own address is the dead process this one
    replaced there (tests/acceptance/test_restart.py): never relayed to."""
    d = decide(
        forwarded_by=None, me=ME, owner=OWNER, replica=replica(), stale_after=12,
        my_url="http://10.0.0.1:8000/",
    )  # fmt: skip
    assert (d.outcome, d.url) == (Outcome.NO_OWNER, None)


# ---------------------------------------------------------------------------- headers


def test_request_headers_pass_what_the_owner_judges_and_mark_the_hop() -> None:
    incoming = httpx.Headers(
        {
            "Host": "lb.example:443",
            "Content-Type": "application/x-ndjson",
            "Content-Length": "12",
            "Authorization": "Bearer rev_x",
            "Idempotency-Key": "k1",
            "X-Request-ID": "req-1",
            "User-Agent": "producer/1",
            "Accept": "application/json",
            "Cookie": "runevents_session=abc",
            "Origin": "https://lb.example",
            "X-Unrelated": "no",
            "Accept-Encoding": "br",
        }
    )
    out = request_headers(incoming, me=ME, owner_url="http://10.0.0.1:8000")
    assert out == {
        "content-type": "application/x-ndjson",
        "authorization": "Bearer rev_x",
        "idempotency-key": "k1",
        "x-request-id": "req-1",
        "user-agent": "producer/1",
        "accept": "application/json",
        "cookie": "runevents_session=abc",
        # checked here against our Host; the owner checks it against its own
        "origin": "http://10.0.0.1:8000",
        FORWARDED_BY.lower(): ME,
    }


def test_response_headers_drop_hop_by_hop_and_our_own() -> None:
    answer = httpx.Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", "40"),
            ("Retry-After", "1"),
            ("Durability", "relaxed"),
            ("X-Request-ID", "owner-side"),
            ("Connection", "keep-alive"),
            ("Date", "x"),
            ("Server", "uvicorn"),
            ("Vary", "A"),
            ("Vary", "B"),
        ]
    )
    assert response_headers(answer) == [
        ("content-type", "application/json"),
        ("retry-after", "1"),
        ("durability", "relaxed"),
        ("vary", "A"),
        ("vary", "B"),
    ]


# ---------------------------------------------------------------------------- the relay


class FakeRegistry:
    """What Forwarder reads of the registry, counted."""

    def __init__(self, found: Replica | None) -> None:
        self.found = found
        self.reads = 0

    async def lookup(self, owner: str) -> Replica | None:
        self.reads += 1
        return self.found if self.found is not None and self.found.owner == owner else None

    async def writer_replica(self, run_id: str) -> tuple[str | None, Replica | None]:
        self.reads += 1
        return (None, None) if self.found is None else (self.found.owner, self.found)


def request(headers: dict[str, str] | None = None) -> Request:
    raw = {"host": "127.0.0.1:9000", "content-type": "application/x-ndjson", **(headers or {})}
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in raw.items()],
        "scheme": "http",
        "server": ("127.0.0.1", 9000),
    }
    return Request(scope)


class Owner:
    """The owner replica, in memory: records what it got, answers ``status``."""

    def __init__(self, status: int = 200, *, fail: Exception | None = None) -> None:
        self.status = status
        self.fail = fail
        self.seen: list[httpx.Request] = []

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.seen.append(req)
        if self.fail is not None:
            raise self.fail
        if self.status == 200:
            return httpx.Response(200, json={"first_sequence": 2, "last_sequence": 3})
        return httpx.Response(
            self.status, json={"error": {"code": "writer_moving"}}, headers={"Retry-After": "1"}
        )


def forwarder(
    owner: Owner, found: Replica | None = None, **kw: Any
) -> tuple[Forwarder, FakeRegistry]:
    registry = FakeRegistry(found if found is not None else replica())
    client = httpx.AsyncClient(transport=httpx.MockTransport(owner))
    return (
        Forwarder(cast(ReplicaRepository, registry), ME, stale_after=12, client=client, **kw),
        registry,
    )


def counted(outcome: Outcome) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "runevents_ingest_forwarded_total", {"outcome": outcome.value}
    )
    return value or 0.0


async def test_the_batch_goes_to_the_owner_byte_for_byte_and_its_answer_comes_back() -> None:
    owner = Owner()
    fwd, _ = forwarder(owner)
    before = counted(Outcome.ANSWERED)
    body = b'{"type": "x"}\n{"type": "y"}\n'
    answer = await fwd.forward(
        request({"Idempotency-Key": "k"}), body, RUN, WriterMoving(owner=OWNER)
    )
    assert answer.status_code == 200
    assert answer.body == b'{"first_sequence":2,"last_sequence":3}'
    (sent,) = owner.seen
    assert sent.method == "POST"
    assert str(sent.url) == "http://10.0.0.1:8000" + PATH
    assert sent.headers["host"] == "10.0.0.1:8000"  # the owner's, not ours
    assert sent.headers["idempotency-key"] == "k"
    assert sent.headers[FORWARDED_BY] == ME
    assert sent.content == body
    assert counted(Outcome.ANSWERED) == before + 1
    await fwd.close()


async def test_an_unreachable_owner_is_503_retry_after_1() -> None:
    owner = Owner(fail=httpx.ConnectError("refused"))
    fwd, _ = forwarder(owner)
    before = counted(Outcome.UNREACHABLE)
    with pytest.raises(WriterMoving) as refused:
        await fwd.forward(request(), b"{}\n", RUN, WriterMoving(owner=OWNER))
    assert refused.value.retry_after == 1
    assert counted(Outcome.UNREACHABLE) == before + 1
    assert fwd.known(RUN) is None


async def test_a_forwarded_batch_meeting_a_non_owner_is_refused_without_a_request() -> None:
    owner = Owner()
    fwd, registry = forwarder(owner)
    before = counted(Outcome.NOT_AGAIN)
    with pytest.raises(WriterMoving):
        await fwd.forward(
            request({FORWARDED_BY: "host-c:3:c"}), b"{}\n", RUN, WriterMoving(owner=OWNER)
        )
    assert owner.seen == []
    assert registry.reads == 0
    assert counted(Outcome.NOT_AGAIN) == before + 1
    # and a forwarded request is never relayed early either
    assert await fwd.relay_early(request({FORWARDED_BY: "host-c:3:c"}), b"{}\n", RUN) is None
    assert owner.seen == []


async def test_a_file_lock_refusal_asks_the_database_for_the_holder() -> None:
    owner = Owner()
    fwd, registry = forwarder(owner)
    answer = await fwd.forward(request(), b"{}\n", RUN, WriterMoving())  # no owner named
    assert answer.status_code == 200
    assert registry.reads == 1
    assert len(owner.seen) == 1


async def test_no_registered_owner_is_503_without_a_request() -> None:
    owner = Owner()
    fwd, _ = forwarder(owner, found=replica(age=60))
    with pytest.raises(WriterMoving):
        await fwd.forward(request(), b"{}\n", RUN, WriterMoving(owner=OWNER))
    assert owner.seen == []


async def test_a_batch_for_a_run_held_elsewhere_is_relayed_before_parsing() -> None:
    owner = Owner()
    fwd, registry = forwarder(owner)
    answer = await fwd.relay_early(request(), b"{}\n", RUN)
    assert answer is not None and answer.status_code == 200
    assert registry.reads == 1  # the run's writer and its URL, one read
    # the next batch goes to the owner it was relayed to, without a read
    answer = await fwd.relay_early(request(), b"{}\n", RUN)
    assert answer is not None and answer.status_code == 200
    assert registry.reads == 1
    assert len(owner.seen) == 2


async def test_the_owner_saying_503_drops_the_hint() -> None:
    owner = Owner()
    fwd, registry = forwarder(owner)
    await fwd.relay_early(request(), b"{}\n", RUN)
    owner.status = 503  # the owner lost the run meanwhile
    answer = await fwd.relay_early(request(), b"{}\n", RUN)
    assert answer is not None and answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert fwd.known(RUN) is None
    owner.status = 200
    await fwd.relay_early(request(), b"{}\n", RUN)
    assert registry.reads == 2  # asked the database again


@pytest.mark.parametrize(
    "found",
    [pytest.param(None, id="nobody holds the run"), pytest.param(replica(age=60), id="stale")],
)
async def test_without_a_live_owner_elsewhere_the_batch_is_ours_to_append(
    found: Replica | None,
) -> None:
    owner = Owner()
    registry = FakeRegistry(found)
    client = httpx.AsyncClient(transport=httpx.MockTransport(owner))
    fwd = Forwarder(cast(ReplicaRepository, registry), ME, stale_after=12, client=client)
    assert await fwd.relay_early(request(), b"{}\n", RUN) is None
    assert owner.seen == []


async def test_a_hint_expires() -> None:
    fwd, _ = forwarder(Owner(), hint_seconds=0.0)
    await fwd.forward(request(), b"{}\n", RUN, WriterMoving(owner=OWNER))
    assert fwd.known(RUN) is None


def test_the_owner_logs_the_request_under_our_request_id() -> None:
    token = REQUEST_ID.set("generated-here")
    try:
        out = request_headers(httpx.Headers({}), me=ME, owner_url="http://10.0.0.1:8000")
    finally:
        REQUEST_ID.reset(token)
    assert out["x-request-id"] == "generated-here"


# ---------------------------------------------------------------------------- a frozen owner


class SlowOwner:
    """An owner that answers a relay after ``delay`` s and the liveness probe after
    ``probe_delay`` s (None: never, as a SIGSTOPped process whose kernel took the request)."""

    def __init__(self, delay: float, probe_delay: float | None) -> None:
        self.delay = delay
        self.probe_delay = probe_delay
        self.relays = 0
        self.probes = 0

    async def __call__(self, req: httpx.Request) -> httpx.Response:
        if req.url.path == PROBE_PATH:
            self.probes += 1
            await asyncio.sleep(3600 if self.probe_delay is None else self.probe_delay)
            return httpx.Response(200, json={"status": "ok"})
        self.relays += 1
        await asyncio.sleep(3600 if self.probe_delay is None else self.delay)
        return httpx.Response(200, json={"first_sequence": 2, "last_sequence": 3})


def slow_forwarder(owner: SlowOwner, found: Replica) -> tuple[Forwarder, FakeRegistry]:
    registry = FakeRegistry(found)
    client = httpx.AsyncClient(transport=httpx.MockTransport(owner))
    fwd = Forwarder(
        cast(ReplicaRepository, registry), ME, stale_after=12, client=client,
        probe_after=0.05, probe_seconds=0.1, unresponsive_seconds=60,
    )  # fmt: skip
    return fwd, registry


async def test_a_frozen_owner_is_given_up_at_its_probe_and_not_relayed_to_again() -> None:
    owner = SlowOwner(delay=0, probe_delay=None)
    found = replica()
    fwd, registry = slow_forwarder(owner, found)
    started = time.monotonic()
    with pytest.raises(WriterMoving) as refused:
        await fwd.relay_early(request(), b"{}\n", RUN)
    assert time.monotonic() - started < 1  # the probe's 0.1 s, not a relay timeout
    assert refused.value.retry_after == 1 and refused.value.owner == OWNER
    assert (owner.relays, owner.probes) == (1, 1)
    # the retry is this process's to append (it takes the run once the lease expired) ...
    assert await fwd.relay_early(request(), b"{}\n", RUN) is None
    # ... and if the lease is still live, 503 at once, without a request
    with pytest.raises(WriterMoving):
        await fwd.forward(request(), b"{}\n", RUN, WriterMoving(owner=OWNER))
    assert (owner.relays, owner.probes) == (1, 1)
    # the owner wakes: it refreshes its row, and is relayed to again
    owner.probe_delay = 0
    registry.found = dataclasses.replace(found, seen_at=found.seen_at + timedelta(seconds=4))
    answer = await fwd.relay_early(request(), b"{}\n", RUN)
    assert answer is not None and answer.status_code == 200
    assert owner.relays == 2
    await fwd.close()


async def test_a_slow_owner_that_answers_its_probe_is_waited_for() -> None:
    owner = SlowOwner(delay=0.5, probe_delay=0)  # a large batch: 10 probe intervals
    fwd, _ = slow_forwarder(owner, replica())
    answer = await fwd.relay_early(request(), b"{}\n", RUN)
    assert answer is not None and answer.status_code == 200
    assert owner.relays == 1 and owner.probes >= 3
    assert not fwd.unresponsive(replica())
    await fwd.close()
