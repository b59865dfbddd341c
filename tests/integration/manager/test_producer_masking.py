"""Producers' batches are masked (contract 11): declared secrets, ``::add-mask::`` across replicas."""

from __future__ import annotations

import asyncio
import base64
import sys
import textwrap
from pathlib import Path

import sqlalchemy as sa

from runevents.app import App
from runevents.events import EventDraft, decode_event
from runevents.exceptions import WriterBusy, WriterMoving
from runevents.models import Run, RunStatus
from runevents.settings import Settings

SECRET = "deploy-key-0123456789"
LATE = "producer-fetched-token-77"


def console(message: str, **extra: object) -> EventDraft:
    payload: dict[str, object] = {"scope": "run", "stream": "stdout", "message": message}
    payload.update(extra)
    return EventDraft(type="console.line", payload=payload)


def masked_settings(settings: Settings, tmp_path: Path) -> Settings:
    path = tmp_path / "secret-configs.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [[configuration]]
            workspace = "acme"
            id = "deploy"
            command = ["{sys.executable}", "-c", "pass"]
            env = {{ DEPLOY_KEY = "{SECRET}" }}
            secrets = ["DEPLOY_KEY"]
            """
        )
    )
    return settings.model_copy(update={"config_file": path, "external_writer_release_seconds": 0.3})


async def events_of(app: App, run: Run) -> list[dict[str, object]]:
    lines: list[bytes] = []
    async for chunk in app.manager.read_events(run):
        lines.extend(chunk.data.split(b"\n")[:-1])
    return [{"type": e.type, "payload": e.payload} for e in map(decode_event, lines)]


async def database_text(app: App) -> str:
    """Every row of every table, as text (what a dump of the database would hold)."""
    parts: list[str] = []
    async with app.database.engine.connect() as conn:
        for table in ("runs", "ingest_keys", "run_masks", "server_keys"):
            rows = (await conn.execute(sa.text(f"SELECT * FROM {table}"))).all()
            parts.extend(repr(tuple(row)) for row in rows)
    return "\n".join(parts)


async def test_a_producers_declared_secrets_and_add_masks_never_reach_log_or_database(
    settings: Settings, tmp_path: Path
) -> None:
    quick = masked_settings(settings, tmp_path)
    holder = await App.open(quick, worker=False)
    other = await App.open(quick, worker=False)
    try:
        run = await holder.manager.create_run("acme", "deploy", external=True)
        encoded = base64.b64encode(SECRET.encode()).decode()

        def batch() -> list[EventDraft]:  # what the HTTP layer parses from the body, each time
            return [
                console(f"using {SECRET}"),
                console(f"encoded {encoded}"),
                EventDraft(
                    type="run.table.summary",
                    payload={"table_id": "t", "source_file": f"{SECRET}.csv"},
                ),
                console(f"::add-mask::{LATE}"),
                console(f"now {LATE}"),
            ]

        await holder.manager.ingest("acme", "deploy", run.id, batch(), idempotency_key="b1")
        # a retry of the same batch is masked the same way: recognised, not appended twice
        answer = await holder.manager.ingest(
            "acme", "deploy", run.id, batch(), idempotency_key="b1"
        )
        assert answer == {"first_sequence": 2, "last_sequence": 6}

        # the writer moves to the other replica, which never saw the add-mask line
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            await holder.manager.watch_held_runs()
            try:
                await other.manager.ingest(
                    "acme", "deploy", run.id, [console(f"still {LATE} on the other replica")]
                )
                break
            except (WriterBusy, WriterMoving):
                assert asyncio.get_running_loop().time() < deadline, "never released"
                await asyncio.sleep(0.1)
        await other.manager.ingest(
            "acme",
            "deploy",
            run.id,
            [
                EventDraft(
                    type="run.completed",
                    payload={
                        "status": "failed",
                        "failure": {"stage": "run", "code": "x", "message": f"{LATE} rejected"},
                    },
                )
            ],
        )
        events = await events_of(holder, run)
        text = repr(events)
        for value in (SECRET, LATE, encoded, base64.b64encode(LATE.encode()).decode()):
            assert value not in text, value
        messages = [e["payload"].get("message") for e in events if e["type"] == "console.line"]
        assert messages == [
            "using ***",
            "encoded ***",
            "::add-mask::***",
            "now ***",
            "still *** on the other replica",
        ]
        done = await holder.manager.get_run("acme", "deploy", run.id)
        assert done.status is RunStatus.FAILED
        assert done.summary is not None
        assert done.summary["console"]["masked"] == 7  # 5 lines + the table + the failure
        assert done.summary["failure"]["message"] == "*** rejected"
        dump = await database_text(holder)
        assert SECRET not in dump and LATE not in dump
        assert "run_" in dump  # the dump did read the rows
    finally:
        await other.close()
        await holder.close()


async def test_a_producers_masked_count_is_not_taken_from_the_producer(
    settings: Settings,
) -> None:
    app = await App.open(settings, worker=False)
    try:
        run = await app.manager.create_run("acme", "ext", external=True)
        await app.manager.ingest(
            "acme",
            "ext",
            run.id,
            [
                console("hello", masked=1000),
                EventDraft(type="run.completed", payload={"status": "succeeded"}),
            ],
        )
        done = await app.manager.get_run("acme", "ext", run.id)
        assert done.summary is not None and done.summary["console"]["masked"] == 0
    finally:
        await app.close()
