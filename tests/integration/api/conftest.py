"""API integration tests: fixtures of ``tests/fixtures/app.py``.

They are imported here until the root conftest lists ``tests.fixtures.app`` in
``pytest_plugins``; then this import is harmless (the plugin's are the same objects).
"""

from __future__ import annotations

from tests.fixtures.app import (  # noqa: F401
    api_settings,
    auth_client,
    client,
    live_server,
    runevents_app,
    token_registry,
)
