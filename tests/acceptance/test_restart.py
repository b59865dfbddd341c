"""One server killed (kill -9) and started again where it listened, on the same data.

Its writer leases outlive it for a few seconds in the database, and so does its
row in the replica registry -- at the very address the new process now listens
on. A batch for a run the dead process held was relayed by the new process to
that address, i.e. to itself, which refused it as a relayed batch: "this
replica does not hold the writer (the batch was forwarded here, and is not
forwarded again)" -- on a single server, where nothing is forwarded. The new
process now knows an owner registered at its own address is gone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.acceptance.conftest import Processes

pytestmark = pytest.mark.slow

NDJSON = {"Content-Type": "application/x-ndjson"}
ENV = {"RUNEVENTS_MAINTENANCE_INTERVAL_SECONDS": "0", "RUNEVENTS_REPAIR_INTERVAL_SECONDS": "0"}


def _batch(n: int) -> bytes:
    line = {"type": "console.line", "payload": {"stream": "stdout", "message": f"batch {n}"}}
    return (json.dumps(line) + "\n").encode()


def test_a_restarted_server_forwarded_batches_to_itself(
    processes: Processes, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = processes.serve(data_dir=data, env=ENV)
    created = first.http.post(
        "/api/v1/workspaces/acme/configurations/ext/runs", json={"external": True}
    )
    assert created.status_code == 201, created.text
    events = f"/api/v1/workspaces/acme/configurations/ext/runs/{created.json()['run']['id']}/events"
    assert first.http.post(events, content=_batch(1), headers=NDJSON).status_code == 200
    first.kill9()  # it held the run's writer lease, and its registry row names its address

    again = processes.serve(data_dir=data, env=ENV, port=urlsplit(first.url).port, name="again")
    answers = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        answer = again.http.post(events, content=_batch(2), headers=NDJSON)
        answers.append((answer.status_code, answer.text))
        if answer.status_code == 200:
            break
        assert answer.status_code == 503, answer.text
        assert "forwarded" not in answer.json()["error"]["message"], answers
        time.sleep(0.5)
    assert answers[-1][0] == 200, answers  # taken over once the dead one's lease expired
    assert "forwarded" not in again.log(), again.log()
