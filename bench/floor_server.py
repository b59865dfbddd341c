"""The floor of durable HTTP ingest in Python: the least any Python server pays per batch.

The durability issue's targets compare runevents' ingest with Postgres COPY.
Whether a target is out of reach for the design or for the runtime is a
question this server answers in the same bench run: it is the same HTTP
stack as the product (uvicorn with httptools and uvloop) under a bare ASGI
callable, doing only what every durable ingest must do per batch --

- read the body, decode the NDJSON lines into typed structs (msgspec, one call),
- number them and give each its envelope (the product's ``Event`` struct),
- encode them (one call), write them to the run's file, ``fsync`` in a worker
  thread (batches that arrive during an fsync share the next: group commit),
- answer the first and last sequence as JSON.

-- and none of what the product also does: no auth, no run index, no summary
fold, no secret masking, no idempotency keys, no fencing, no metrics, no
validation beyond the decode. A product row divided by this one is the share
of the runtime's floor the product reaches; a target above the floor's own
ratio cannot be met by any Python server on this machine.

Run as ``python bench/floor_server.py PORT DATA_DIR`` (``bench_durability.py``
starts it). It speaks just the routes the bench calls: create an external run,
append a batch, ``GET /api/v1/health`` and ``GET /bench/fsyncs``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson

from runevents.events import Event, EventDraft
from runevents.timestamps import utc_timestamp

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_DRAFTS = msgspec.json.Decoder(list[EventDraft])
_ENCODER = msgspec.json.Encoder()


class _Run:
    """One run's log file: a buffer of encoded batches, one write + fsync per group."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.last_sequence = 0
        self.buffered = 0  # bytes handed to the buffer so far
        self.durable = 0  # bytes written and fsynced so far
        self.buf = bytearray()
        self.lock = asyncio.Lock()

    async def sync(self, end: int, counts: dict[str, int]) -> None:
        """Return once the first ``end`` buffered bytes are durable (group commit)."""
        async with self.lock:
            if self.durable >= end:
                return  # an earlier group's fsync covered it
            data, self.buf = bytes(self.buf), bytearray()
            os.write(self.fd, data)
            counts["fsyncs"] += 1
            await asyncio.to_thread(os.fsync, self.fd)
            self.durable += len(data)


class FloorApp:
    """The bare ASGI app (see the module doc)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.runs: dict[str, _Run] = {}
        self.counts = {"fsyncs": 0}

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        answer = await self._answer(scope["path"], b"".join(chunks))
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def _answer(self, path: str, body: bytes) -> bytes:
        if path == "/bench/fsyncs":
            return orjson.dumps(self.counts)
        if path == "/api/v1/health":
            return b'{"status":"ok"}'  # (what the bench waits for before it starts)
        # /api/v1/workspaces/{ws}/configurations/{cfg}/runs[/{run_id}/events]
        parts = path.split("/")
        workspace_id, configuration_id = parts[4], parts[6]
        if len(parts) == 8:
            run_id = f"run_{uuid.uuid4().hex}"
            self.runs[run_id] = _Run(self.data_dir / f"{run_id}.ndjson")
            return orjson.dumps({"run": {"id": run_id}})
        run_id = parts[8]
        run = self.runs[run_id]
        text = body[:-1] if body.endswith(b"\n") else body
        drafts = _DRAFTS.decode(b"[" + text.replace(b"\n", b",") + b"]")
        first = sequence = run.last_sequence + 1
        now = utc_timestamp()
        events = []
        for draft in drafts:
            events.append(
                Event(
                    type=draft.type,
                    event_id=f"evt_{run_id}{sequence}",
                    created_at=draft.created_at or now,
                    sequence=sequence,
                    source=draft.source or "producer",
                    workspace_id=workspace_id,
                    configuration_id=configuration_id,
                    run_id=run_id,
                    build_id=draft.build_id,
                    payload=draft.payload,
                )
            )
            sequence += 1
        run.last_sequence = sequence - 1
        data = _ENCODER.encode_lines(events)
        run.buf += data
        run.buffered += len(data)
        await run.sync(run.buffered, self.counts)
        return orjson.dumps({"first_sequence": first, "last_sequence": run.last_sequence})


def main() -> None:
    import uvicorn

    port, data_dir = int(sys.argv[1]), Path(sys.argv[2])
    data_dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(
        FloorApp(data_dir), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
