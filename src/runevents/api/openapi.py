"""The published OpenAPI document: FastAPI's, completed with what every operation shares.

FastAPI documents what each route declares. Some answers come from layers
below the routes, so every route has them whether it declares them or not;
they are added here, once, so a route added later is described right without
having to remember them:

* request validation fails -> 422 in the contract's error shape. FastAPI
  documents its own ``{"detail": [...]}`` (``HTTPValidationError``), which this
  server never sends: every such reference becomes :class:`ErrorBody`;
* an operation that needs a token -> 401 (none, or unknown) and 403 (outside
  its workspaces or role, or a cookie request without a matching ``Origin``);
* a request body over the limit (``app.BodyLimit``) -> 413;
* a 503 may carry ``Retry-After`` (whole seconds).

In open mode (no tokens configured) nothing needs a token, and the document
says so: no security requirements, no 401. A client generated from it, or a
fuzzer checking that requests without credentials are refused, sees the
server as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from runevents.api import schemas
from runevents.api.ingest import NDJSON

#: HTTP methods that name operations in a path item
METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
#: a 503 says when to try again (contract section 6: a batch that could not be made durable)
RETRY_AFTER = {
    "description": "whole seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 0},
}
#: what FastAPI calls the validation error shape it would document
_FASTAPI_VALIDATION = "#/components/schemas/HTTPValidationError"


def install(app: FastAPI, *, open_mode: bool) -> None:
    """Serve the completed document at ``app.openapi_url`` (built once, on first use)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(build(), open_mode=open_mode)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented hook


def complete(document: dict[str, Any], *, open_mode: bool) -> dict[str, Any]:
    """``document`` with the shared error responses and models (a new dict)."""
    doc = copy.deepcopy(document)
    components = doc.setdefault("components", {})
    _add_models(components.setdefault("schemas", {}))
    for item in doc.get("paths", {}).values():
        for method, operation in item.items():
            if method in METHODS:
                _complete_operation(operation, open_mode=open_mode)
    if open_mode:
        components.pop("securitySchemes", None)
    _drop_unreferenced(components["schemas"], doc, ("HTTPValidationError", "ValidationError"))
    return doc


def _complete_operation(operation: dict[str, Any], *, open_mode: bool) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for response in responses.values():
        for media_type, media in response.get("content", {}).items():
            if media.get("schema") == {"$ref": _FASTAPI_VALIDATION}:
                media["schema"] = schemas.ref(schemas.ErrorBody)
            _stream_items(media_type, media)
    if "503" in responses:
        responses["503"].setdefault("headers", {}).setdefault("Retry-After", RETRY_AFTER)
    shared: list[int] = []
    if operation.get("parameters") or operation.get("requestBody"):
        shared.append(422)
    if operation.get("requestBody"):
        shared.append(413)
    if open_mode:
        # no tokens: nothing to present, nothing refused for lack of one
        operation.pop("security", None)
        responses.pop("401", None)
    elif operation.get("security"):
        shared += [401, 403]
    for status in shared:
        responses.setdefault(str(status), _error_response(status))
    operation["responses"] = dict(sorted(responses.items()))


def _stream_items(media_type: str, media: dict[str, Any]) -> None:
    """A stream answer documented as a plain string, read the way OpenAPI 3.2 reads streams.

    ``{"type": "string"}`` (:data:`schemas.TEXT_STREAM`) is the pre-3.2 habit
    for "raw text". Under 3.2 (and to schemathesis) an NDJSON ``schema`` is the
    lines as an array, and an SSE answer is a sequence of events: a string
    there is wrong for every line and every event. Nothing more is known about
    the items, so they are described as any line and any event; routes that
    know better use :func:`schemas.ndjson_content` / :func:`schemas.sse_content`.
    """
    if "itemSchema" in media or media.get("schema") != schemas.TEXT_STREAM["schema"]:
        return
    if media_type == NDJSON:
        media["schema"] = {"type": "array"}
        media["itemSchema"] = {}
    elif media_type == "text/event-stream":
        del media["schema"]
        media["itemSchema"] = copy.deepcopy(schemas.ANY_SSE_EVENT)


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": schemas.ERROR_TEXT.get(status, "Error"),
        "content": {"application/json": {"schema": schemas.ref(schemas.ErrorBody)}},
    }


def _add_models(components: dict[str, Any]) -> None:
    """The models hand-written content refers to, as FastAPI would name them."""
    template = "#/components/schemas/{model}"
    for model in schemas.DOCUMENT_MODELS:
        schema = model.model_json_schema(ref_template=template)
        for name, definition in schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(model.__name__, schema)


def _drop_unreferenced(
    components: dict[str, Any], doc: dict[str, Any], names: tuple[str, ...]
) -> None:
    """Remove the ``names`` components nothing refers to any more (FastAPI's unused shapes)."""
    kept = {name: components.pop(name) for name in names if name in components}
    text = repr(doc)
    for name, definition in kept.items():
        if f"#/components/schemas/{name}'" in text:
            components[name] = definition
