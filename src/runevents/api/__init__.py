"""The HTTP edge: FastAPI routes, SSE, NDJSON and JSON logs, producer ingest, auth.

``create_app(settings)`` (in ``api.app``) builds the ASGI application; routes
call only the :class:`~runevents.manager.RunManager`. ``create_app`` is loaded
lazily so the pure modules (``sse``, ``ingest``, ``schemas``) import without
the whole application.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from runevents.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
