"""Client tests: a real server in a thread (sync clients block their thread)."""

from __future__ import annotations

from tests.fixtures.thread_server import thread_server  # noqa: F401
