"""Ctrl-C always ends a client command (issue 19's Ctrl-C rule), even when the work
swallows the cancellation -- as a stream being closed or a reconnect in flight can."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from runevents import cli_client

    async def stubborn(client):
        print("ready", flush=True)
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # swallowed: the old code never exited

    cli_client._client = lambda server, token: _Null()

    class _Null:
        async def __aenter__(self): return self
        async def __aexit__(self, *exc): return None

    def said():
        print("the run goes on", file=sys.stderr, flush=True)

    cli_client._call(None, None, stubborn, said)
    """
)


def test_ctrl_c_exits_even_when_the_work_swallows_the_cancel() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        code = proc.wait(timeout=15)
        assert code == 130
        assert time.monotonic() - started < 10
        assert b"the run goes on" in (proc.stderr.read() if proc.stderr else b"")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
