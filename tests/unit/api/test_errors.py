"""The one error mapping: every RuneventsError family has its status and code."""

from __future__ import annotations

import json

import pytest

from runevents import exceptions as exc
from runevents.api.errors import error_body, status_of


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (exc.InvalidInput("x"), 422),
        (exc.InvalidEvent("x", line=3), 422),
        (exc.RunNotFound(), 404),
        (exc.ConfigurationNotFound(), 404),
        (exc.LogNotFound(), 404),
        (exc.RunEnded(), 409),
        (exc.InvalidTransition(), 409),
        (exc.WriterBusy(), 409),
        (exc.LogExpired(), 410),
        (exc.PayloadTooLarge(), 413),
        (exc.UnsupportedMediaType(), 415),
        (exc.Unauthorized(), 401),
        (exc.Forbidden(), 403),
        (exc.StorageError(), 503),
        (exc.DatabaseError(), 503),
        (exc.ConfigError(), 500),
    ],
)
def test_status_of_every_family(error: exc.RuneventsError, status: int) -> None:
    assert status_of(error) == status


def test_every_exception_class_is_mapped_or_deliberately_500() -> None:
    def walk(cls: type[exc.RuneventsError]) -> list[type[exc.RuneventsError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in walk(sub))]

    for cls in walk(exc.RuneventsError):
        if cls in {exc.RuneventsError, exc.ConfigError}:
            continue  # start-up errors: never raised while serving a request
        assert status_of(cls()) < 500 or status_of(cls()) == 503, cls


def test_error_body_shape() -> None:
    body = error_body("invalid_event", "line 2: bad", line=2, details=None)
    assert body == {"error": {"code": "invalid_event", "message": "line 2: bad", "line": 2}}
    json.dumps(body)
