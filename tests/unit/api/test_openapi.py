"""``api/openapi.py``: what every operation shares is documented, for routes written later too.

A synthetic app stands in for a route another change adds: it declares
nothing but its own success answer, as a route written without this module in
mind would.
"""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import Body, FastAPI, Query
from pydantic import BaseModel

from runevents.api import openapi, schemas
from runevents.api.deps import Caller
from runevents.api.ingest import NDJSON

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


class Thing(BaseModel):
    name: str


def new_route_app(*, open_mode: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/things")
    async def list_things(who: Caller, limit: Annotated[int, Query(ge=1)] = 5) -> dict[str, Any]:
        return {}

    @app.post("/api/v1/things")
    async def add_thing(who: Caller, thing: Annotated[Thing, Body()]) -> dict[str, Any]:
        return {}

    @app.get("/api/v1/ping")
    async def ping() -> dict[str, Any]:
        return {}

    openapi.install(app, open_mode=open_mode)
    return app


def error_schema(operation: dict[str, Any], status: int) -> Any:
    return operation["responses"][str(status)]["content"]["application/json"]["schema"]


def test_a_new_route_gets_the_shared_error_answers_in_the_contract_shape() -> None:
    document = new_route_app(open_mode=False).openapi()
    listing = document["paths"]["/api/v1/things"]["get"]
    adding = document["paths"]["/api/v1/things"]["post"]
    # FastAPI would document {"detail": [...]} for 422; the server sends ErrorBody
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert "HTTPValidationError" not in repr(document)
    for operation, statuses in ((listing, {401, 403, 422}), (adding, {401, 403, 413, 422})):
        for status in statuses:
            assert error_schema(operation, status) == ERROR_BODY
    assert "413" not in listing["responses"]
    # the model every error refers to is in the document
    assert set(document["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}


def test_an_operation_without_inputs_or_token_gets_no_error_answers() -> None:
    document = new_route_app(open_mode=False).openapi()
    assert set(document["paths"]["/api/v1/ping"]["get"]["responses"]) == {"200"}


def test_open_mode_documents_no_security_and_no_401() -> None:
    document = new_route_app(open_mode=True).openapi()
    assert "securitySchemes" not in document["components"]
    for method in ("get", "post"):
        operation = document["paths"]["/api/v1/things"][method]
        assert "security" not in operation
        assert "401" not in operation["responses"]
        assert "422" in operation["responses"]  # validation still applies


def test_token_mode_keeps_the_security_requirements() -> None:
    document = new_route_app(open_mode=False).openapi()
    assert set(document["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyCookie"}
    assert document["paths"]["/api/v1/things"]["get"]["security"]


def test_every_503_documents_retry_after() -> None:
    app = FastAPI()

    @app.get("/api/v1/stored", responses=schemas.errors(503))
    async def stored() -> dict[str, Any]:
        return {}

    openapi.install(app, open_mode=True)
    answer = app.openapi()["paths"]["/api/v1/stored"]["get"]["responses"]["503"]
    assert answer["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 0}


def test_a_stream_documented_as_a_string_is_read_per_item() -> None:
    # a route of another change that documents its stream the pre-3.2 way
    app = FastAPI()

    @app.get(
        "/api/v1/hits",
        responses={
            200: {
                "content": {
                    NDJSON: schemas.TEXT_STREAM,
                    "text/event-stream": schemas.TEXT_STREAM,
                }
            }
        },
    )
    async def hits() -> dict[str, Any]:
        return {}

    openapi.install(app, open_mode=True)
    content = app.openapi()["paths"]["/api/v1/hits"]["get"]["responses"]["200"]["content"]
    assert content[NDJSON] == {"schema": {"type": "array"}, "itemSchema": {}}
    assert content["text/event-stream"] == {"itemSchema": schemas.ANY_SSE_EVENT}
    assert schemas.TEXT_STREAM == {"schema": {"type": "string"}}  # the constant is untouched


def test_the_document_is_built_once() -> None:
    app = new_route_app(open_mode=False)
    assert app.openapi() is app.openapi()


def test_stream_contents_describe_each_item() -> None:
    sse = schemas.sse_content()["text/event-stream"]["itemSchema"]
    assert sse["required"] == ["id", "event", "data"]
    assert sse["properties"]["event"] == {"const": "ade.event"}
    data = sse["properties"]["data"]
    assert data["contentMediaType"] == "application/json"
    assert data["contentSchema"] == {"$ref": "#/components/schemas/EventEnvelope"}
    ndjson = schemas.ndjson_content(schemas.IngestLine, min_lines=1)["application/x-ndjson"]
    assert ndjson["itemSchema"] == {"$ref": "#/components/schemas/IngestLine"}
    assert ndjson["schema"] == {"type": "array", "items": ndjson["itemSchema"], "minItems": 1}


@pytest.mark.parametrize("field", ["workspace_id", "configuration_id", "run_id", "event_id"])
def test_ingest_line_marks_the_server_assigned_fields_read_only(field: str) -> None:
    # readOnly: a generated request leaves them out; the server checks or ignores them
    assert schemas.IngestLine.model_json_schema()["properties"][field]["readOnly"] is True
