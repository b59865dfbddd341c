"""Shared pytest setup.

Fixtures are grouped by seam in ``tests/fixtures/`` and registered here. Tests
that need an outside service (Postgres, Chromium, SeaweedFS S3) skip with the
reason on a newcomer's machine; with ``RUNEVENTS_TEST_STRICT=1`` (set by
``.ci/run``) the same situation is a failure instead.
"""

from __future__ import annotations

import os

# Scrub the environment before the package reads settings: a developer's
# RUNEVENTS_* variables must not leak into tests.
for _key in list(os.environ):
    if (
        _key.startswith("RUNEVENTS_")
        and _key != "RUNEVENTS_TEST_STRICT"
        and not _key.startswith("RUNEVENTS_TEST_")
    ):
        del os.environ[_key]

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.db",
    "tests.fixtures.s3",
    "tests.fixtures.app",
    "tests.fixtures.tcpproxy",
]
