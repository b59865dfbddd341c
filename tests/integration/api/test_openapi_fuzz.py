"""Property-based fuzzing of every operation in the OpenAPI schema (schemathesis).

The server runs under uvicorn in a thread of its own (its own event loop owns
the App and its database connections), and schemathesis drives it over real
HTTP with positive and negative examples. Every answer must be below 500 and
conform to the schema: documented status, content type, headers and body.
Auth is on (the admin token is sent), so the check that the API refuses
requests without credentials runs on every operation too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from runevents.api.app import create_app
from runevents.auth import TokenRegistry
from runevents.settings import Settings
from tests.fixtures.app import bearer

#: examples per operation and generation mode (keeps the whole test well under a minute)
EXAMPLES = 20
ADMIN = bearer("tok-admin")


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: schemathesis.SerializationContext, value: object) -> bytes:
    # the schema can only say "a string": send it as is, lone surrogates and all
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "surrogatepass")


@pytest.fixture
def threaded_server(api_settings: Settings, token_registry: TokenRegistry) -> Iterator[str]:
    """The API (tokens required), with its own App, under uvicorn in a thread; yields its URL."""
    settings = api_settings.model_copy(update={"worker_concurrency": 0})
    asgi = create_app(settings, tokens=token_registry)
    config = uvicorn.Config(asgi, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api-under-fuzz", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive(), "the server did not stop"


def fuzz(operation: Any, mode: GenerationMode, base_url: str, seen_statuses: set[int]) -> None:
    """Run one operation's examples of one generation mode against the server."""
    # an ingest body is "a string" to OpenAPI; most strings are not NDJSON events,
    # and refusing them (422) is right, so "valid data is accepted" cannot hold there
    ingest = operation.method.upper() == "POST" and operation.path.endswith("/events")
    excluded = [positive_data_acceptance] if ingest else []

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        if case.method == "POST" and case.path.endswith("/runs") and case.query:
            # a streamed external run would stream until its producer completes it
            case.query.pop("stream", None)
        if case.method == "GET" and case.path.endswith("/runs") and case.query:
            # cursors carry a checksum: a generated one is (rightly) always refused
            case.query.pop("cursor", None)
        response = case.call(base_url=base_url, headers=ADMIN, timeout=15)
        seen_statuses.add(response.status_code)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        # (also re-sends the request without the token: it must get 401)
        case.validate_response(response, headers=ADMIN, excluded_checks=excluded)

    try:
        check()
    except hypothesis.errors.Unsatisfiable:
        # an operation without inputs (health) has no negative example
        assert mode is GenerationMode.NEGATIVE, operation.label


@pytest.mark.slow
def test_every_operation_conforms_and_never_fails(threaded_server: str) -> None:
    schema = schemathesis.openapi.from_url(f"{threaded_server}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    seen_statuses: set[int] = set()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, threaded_server, seen_statuses)
    # the fuzzer reached past validation too, not only 4xx
    assert {200, 201} & seen_statuses and 422 in seen_statuses
