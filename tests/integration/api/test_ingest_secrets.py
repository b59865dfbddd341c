"""A refused ingest batch's error never quotes a secret of the run (api/ingest_route.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runevents.api.app import create_app
from runevents.app import App
from runevents.settings import Settings
from tests.fixtures.app import asgi_client, write_secret_config
from tests.integration.api.helpers import console, create_external, ingest

SECRET = "hunter2hunter2"
ADDED = "added-mask-value-9"


@pytest.fixture
async def secret_client(api_settings: Settings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a server whose ``acme/ext`` declares the secret ``SECRET``."""
    path = write_secret_config(tmp_path, configuration_id="ext", variable="SECRET_A", value=SECRET)
    settings = api_settings.model_copy(update={"config_file": path})
    app = await App.open(settings, worker=False)
    try:
        async with asgi_client(create_app(settings, app=app)) as client:
            yield client
    finally:
        await app.close()


async def test_an_ingest_error_never_echoes_a_secret(secret_client: httpx.AsyncClient) -> None:
    # Defect: the batch is parsed before it is masked, and a 422 quoted the bad
    # value: "line 1: created_at 'hunter2hunter2' is not an RFC 3339 timestamp"
    client = secret_client
    run = await create_external(client)
    added = await ingest(client, run, console(f"::add-mask::{ADDED}"))
    assert added.status_code == 200, added.text
    bad_lines = [
        {"created_at": SECRET},
        {"workspace_id": SECRET},
        {"configuration_id": f"x{SECRET}"},
        {"run_id": SECRET},
        {"created_at": ADDED},  # a value the run added earlier
        {"run_id": "later-mask-12"},  # one the refused batch itself declares
    ]
    for extra in bad_lines:
        response = await ingest(
            client,
            run,
            console("::add-mask::later-mask-12"),
            {"type": "x", "payload": {}, **extra},
        )
        assert response.status_code == 422, (extra, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_event", error
        assert error["message"].startswith("line 2: "), error
        assert "***" in error["message"], error
        for value in (SECRET, ADDED, "later-mask-12"):
            assert value not in response.text, (value, response.text)


async def test_a_refused_line_that_is_no_object_but_holds_add_mask_is_422_not_500(
    secret_client: httpx.AsyncClient,
) -> None:
    # Defect (found in review): looking for the refused body's own ::add-mask::
    # values read ``event.get("type")`` of any JSON line -- a list raised
    # AttributeError, and the 422 became a 500
    run = await create_external(secret_client)
    bad: Any = [1, "::add-mask::not-an-event-123"]  # (a JSON line, not an object)
    response = await ingest(secret_client, run, bad)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_event"
