"""The published OpenAPI document against the server's real answers (issue 20).

Each disagreement schemathesis found has a regression test here, named after
its check (ST108 response schema, ST201 invalid request accepted, ST202 valid
request refused, ST205 ``Allow``), so it is caught in a second rather than by
the fuzz run. Tests that walk the document cover routes added later as well.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import httpx
import jsonschema_rs
import pytest

from runevents.db.rows import encode_cursor
from tests.fixtures.app import bearer
from tests.integration.api.helpers import (
    COMPLETED,
    NDJSON,
    console,
    create_external,
    ingest,
    run_path,
    sse_events,
)

DOC = "/api/v1/openapi.json"
RUN = "/api/v1/workspaces/{workspace_id}/configurations/{configuration_id}/runs/{run_id}"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    answer = await client.get(DOC)
    assert answer.status_code == 200
    doc: dict[str, Any] = answer.json()
    return doc


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A validator of ``schema`` whose ``#/components/...`` references resolve in ``doc``."""
    return jsonschema_rs.validator_for({**schema, "components": doc["components"]})


def fill(path: str) -> str:
    """``path`` with every parameter replaced by a well-formed value."""
    values = {"run_id": "run_01JAAAAAAAAAAAAAAAAAAAAAAA"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "acme"), path)


async def test_regression_st108_sse_events_match_their_documented_schema(
    client: httpx.AsyncClient,
) -> None:
    doc = await document(client)
    run = await create_external(client)
    assert (await ingest(client, run, console("one"), console("two"), COMPLETED)).status_code == 200
    answer = await client.get(run_path(run) + "/events", params={"stream": "true"})
    assert answer.headers["content-type"] == "text/event-stream"
    events = sse_events(answer.content)
    assert [e["id"] for e in events] == ["1", "2", "3", "4"]
    for path, method in ((RUN + "/events", "get"), (RUN.rsplit("/", 1)[0], "post")):
        content = doc["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]
        item = content["itemSchema"]
        envelope = validator(doc, item["properties"]["data"]["contentSchema"])
        for event in events:
            validator(doc, item).validate(event)
            envelope.validate(json.loads(event["data"]))
    # what was described as a plain string before
    assert "schema" not in content


async def test_regression_st108_a_validation_error_has_the_documented_shape(
    client: httpx.AsyncClient,
) -> None:
    doc = await document(client)
    assert "HTTPValidationError" not in json.dumps(doc)
    answer = await client.get("/api/v1/workspaces/acme/runs", params={"limit": "0"})
    assert answer.status_code == 422
    documented = doc["paths"]["/api/v1/workspaces/{workspace_id}/runs"]["get"]["responses"]["422"]
    validator(doc, documented["content"]["application/json"]["schema"]).validate(answer.json())


@pytest.mark.parametrize(
    "body",
    [{"external": 0}, {"external": "true"}, {"mode": 1}, {"options": "x"}],
    ids=["int-for-bool", "str-for-bool", "int-for-str", "str-for-object"],
)
async def test_regression_st201_lax_json_types_are_refused(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    answer = await client.post("/api/v1/workspaces/acme/configurations/ext/runs", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_input"


async def test_regression_st201_a_token_must_be_a_string(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/session", json={"token": 12345678})).status_code == 422


@pytest.mark.parametrize("value", ["0.5", "1700000000", "2026-01-01", "2026-01-01T00:00:00"])
async def test_regression_st201_a_created_bound_is_an_rfc3339_date_time(
    client: httpx.AsyncClient, value: str
) -> None:
    # pydantic's datetime took numbers as Unix time: created_before=0.5 was 1970
    answer = await client.get("/api/v1/workspaces/acme/runs", params={"created_before": value})
    assert answer.status_code == 422, answer.text


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2016-12-31T23:59:60Z"]
)
async def test_regression_500_a_created_bound_at_the_edge_of_time(
    client: httpx.AsyncClient, value: str
) -> None:
    # converting such a bound to UTC overflowed: a 500 for a valid date-time
    run = await create_external(client)
    for name in ("created_after", "created_before"):
        answer = await client.get("/api/v1/workspaces/acme/runs", params={name: value})
        assert answer.status_code == 200, answer.text
    after_all = await client.get(
        "/api/v1/workspaces/acme/runs", params={"created_after": "9999-12-31T23:59:59-01:00"}
    )
    assert after_all.json()["items"] == []
    before_all = await client.get(
        "/api/v1/workspaces/acme/runs", params={"created_after": "0001-01-01T00:00:00+01:00"}
    )
    assert [r["id"] for r in before_all.json()["items"]] == [run["id"]]


async def test_regression_st202_any_cursor_the_server_could_issue_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    doc = await document(client)
    (cursor,) = [
        p
        for p in doc["paths"]["/api/v1/workspaces/{workspace_id}/runs"]["get"]["parameters"]
        if p["name"] == "cursor"
    ]
    # the checksum is not a pattern: the document says "a cursor", by format
    assert cursor["schema"]["type"] == "string" and "pattern" not in cursor["schema"]
    assert cursor["schema"]["format"] == "runevents-cursor"
    forged = encode_cursor(datetime(2030, 1, 1, tzinfo=UTC), "run_01JAAAAAAAAAAAAAAAAAAAAAAA")
    answer = await client.get("/api/v1/workspaces/acme/runs", params={"cursor": forged})
    assert answer.status_code == 200, answer.text
    garbage = await client.get("/api/v1/workspaces/acme/runs", params={"cursor": "0"})
    assert garbage.status_code == 422


async def test_regression_st205_a_405_allows_exactly_the_documented_methods(
    client: httpx.AsyncClient,
) -> None:
    doc = await document(client)
    checked = 0
    for path, item in doc["paths"].items():
        documented = {m.upper() for m in item if m.upper() in {*METHODS, "HEAD"}}
        for method in sorted(set(METHODS) - documented):
            answer = await client.request(method, fill(path))
            assert answer.status_code == 405, (method, path, answer.text)
            allowed = {m.strip() for m in answer.headers["allow"].split(",")}
            assert allowed == documented, (method, path)
            checked += 1
    # e.g. OPTIONS /api/v1/session answered "Allow: POST" (of GET, POST, DELETE)
    session = await client.options("/api/v1/session")
    assert session.headers["allow"] == "DELETE, GET, POST"
    assert checked > 20


async def test_regression_ingest_body_is_described_per_line(client: httpx.AsyncClient) -> None:
    doc = await document(client)
    body = doc["paths"][RUN + "/events"]["post"]["requestBody"]["content"][NDJSON["Content-Type"]]
    assert body["itemSchema"] == {"$ref": "#/components/schemas/IngestLine"}
    whole = validator(doc, body["schema"])
    lines = [json.loads(line) for line in body["example"].splitlines()]
    whole.validate(lines)
    run = await create_external(client)
    answer = await client.post(
        run_path(run) + "/events", content=body["example"].encode(), headers=NDJSON
    )
    assert answer.status_code == 200, answer.text
    assert not whole.is_valid([])
    assert not whole.is_valid([{"payload": {}}])


@pytest.mark.parametrize(("value", "status"), [("3", 200), ("abc", 422), ("9" * 19, 422)])
async def test_last_event_id_is_the_digits_the_document_allows(
    client: httpx.AsyncClient, value: str, status: int
) -> None:
    run = await create_external(client)
    answer = await client.get(run_path(run) + "/events", headers={"Last-Event-ID": value})
    assert answer.status_code == status, answer.text


async def test_token_mode_documents_security_and_its_answers(
    auth_client: httpx.AsyncClient,
) -> None:
    doc = await document(auth_client)
    assert set(doc["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyCookie"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if path in {"/api/v1/health", "/api/v1/ready"}:
                # liveness and readiness are for load balancers: no token (contract 13)
                assert "security" not in operation
                continue
            if (path, method) in {("/api/v1/session", "post"), ("/api/v1/session", "delete")}:
                continue  # signing in and out need no token
            assert operation["security"], (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
    refused = await auth_client.get("/api/v1/workspaces/acme/runs", headers=bearer("tok-beta"))
    assert refused.status_code == 403


async def test_open_mode_documents_no_security(client: httpx.AsyncClient) -> None:
    doc = await document(client)
    assert "securitySchemes" not in doc["components"]
    assert all(
        "security" not in op and "401" not in op["responses"]
        for item in doc["paths"].values()
        for op in item.values()
    )
