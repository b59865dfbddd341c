"""The official Durable Streams clients read runs (contract section 14).

* TypeScript: ``@durable-streams/client`` from npm, run by the machine's ``node``
  (installed into a directory of this test session; skipped with the reason
  when node or npm is missing or the package cannot be installed, failed under
  ``RUNEVENTS_TEST_STRICT=1``).
* Python: the ``durable-streams`` package from PyPI (dev dependency).

Each tails a live run from ``-1`` to its end (the run ends while it reads) and
resumes from an offset it saved while the run was live.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.app import LiveServer
from tests.fixtures.services import unavailable
from tests.integration.api.helpers import COMPLETED, console, create_external, ingest

#: the npm package and version the tests run
TS_CLIENT = "@durable-streams/client@0.2.7"
SCRIPT = Path(__file__).parent / "durable" / "ds_tail.mjs"
NODE_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def ds_node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the TypeScript client installed and the tail script beside it."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed for the TypeScript Durable Streams client")
    root = tmp_path_factory.mktemp("ds-node")
    (root / "package.json").write_text('{"name": "ds-node-test", "private": true}\n')
    try:
        done = subprocess.run(
            [str(npm), "install", "--no-audit", "--no-fund", "--loglevel=error", TS_CLIENT],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        unavailable(f"npm install {TS_CLIENT} timed out")
    if done.returncode != 0:
        unavailable(f"npm install {TS_CLIENT} failed: {done.stderr[-500:]}")
    shutil.copy(SCRIPT, root / SCRIPT.name)
    return root


async def node_tail(root: Path, url: str, offset: str, live: str, stop_after: int = 0) -> Any:
    """Run the tail script; its JSON answer."""
    args = ["node", SCRIPT.name, url, offset, live] + ([str(stop_after)] if stop_after else [])
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(NODE_TIMEOUT):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"node {' '.join(args[1:])} did not finish") from None
    assert process.returncode == 0, err.decode()[-2000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def ds_url(server: LiveServer, run: dict[str, Any]) -> str:
    return f"{server.url}/ds/v1/workspaces/{run['workspace_id']}/runs/{run['id']}"


async def live_run(http: httpx.AsyncClient, lines: int) -> dict[str, Any]:
    """A live external run with ``lines`` console lines after run.queued, visible to readers."""
    run = await create_external(http)
    if lines:
        await ingest(http, run, *(console(f"early {i}") for i in range(lines)))
    url = f"/ds/v1/workspaces/{run['workspace_id']}/runs/{run['id']}"
    async with asyncio.timeout(5):
        while (await http.head(url)).headers["Stream-Next-Offset"] < f"{lines + 1:020d}":
            await asyncio.sleep(0.01)
    return run


async def finish_later(http: httpx.AsyncClient, run: dict[str, Any], delay: float) -> None:
    """Append more lines in two batches while a reader follows, then end the run."""
    await asyncio.sleep(delay)
    await ingest(http, run, *(console(f"late {i}") for i in range(3)))
    await asyncio.sleep(0.2)
    await ingest(http, run, console("last"), COMPLETED)


@pytest.mark.parametrize("live", ["sse", "long-poll"])
async def test_ts_client_tails_a_live_run_from_minus_1_to_its_end(
    ds_node: Path, live_server: LiveServer, live: str
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        run = await live_run(http, 4)  # 1..5 now; 6..8, then 9 and run.completed 10 later
        tail = asyncio.create_task(node_tail(ds_node, ds_url(live_server, run), "-1", live))
        await finish_later(http, run, 1.0)
        got = await tail
    assert got["sequences"] == list(range(1, 11))
    assert got["streamClosed"] is True
    assert got["offset"] == f"{10:020d}"


async def test_ts_client_resumes_from_a_saved_offset(
    ds_node: Path, live_server: LiveServer
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        run = await live_run(http, 4)
        url = ds_url(live_server, run)
        first = await node_tail(ds_node, url, "-1", "long-poll", stop_after=1)
        assert first["sequences"] == [1, 2, 3, 4, 5] and first["streamClosed"] is False
        saved = first["offset"]
        await ingest(http, run, console("after the save"))
        resumed = asyncio.create_task(node_tail(ds_node, url, saved, "sse"))
        await finish_later(http, run, 0.5)
        rest = await resumed
    # nothing repeated, nothing missed
    assert rest["sequences"] == list(range(6, 12)) and rest["streamClosed"] is True


async def test_python_client_tails_a_live_run_and_resumes_from_a_saved_offset(
    live_server: LiveServer,
) -> None:
    from durable_streams import astream

    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        run = await live_run(http, 4)
        url = ds_url(live_server, run)

        # catch-up only, then save the offset (as an app would, in its own storage)
        async with astream(url, offset="-1", live=False) as caught_up:
            early = [event["sequence"] async for event in caught_up.iter_json()]
            saved = caught_up.offset
        assert early == [1, 2, 3, 4, 5] and saved == f"{5:020d}"

        async def tail(offset: str, live: str) -> list[int]:
            sequences = []
            async with astream(url, offset=offset, live=live) as response:  # type: ignore[arg-type]
                async for event in response.iter_json():
                    sequences.append(event["sequence"])
                    if event["type"] == "run.completed":
                        break  # this client version predates Stream-Closed
            return sequences

        from_start = asyncio.create_task(tail("-1", "sse"))
        resumed = asyncio.create_task(tail(saved, "long-poll"))
        await finish_later(http, run, 1.0)
        async with asyncio.timeout(NODE_TIMEOUT):
            assert await from_start == list(range(1, 11))
            assert await resumed == list(range(6, 11))
