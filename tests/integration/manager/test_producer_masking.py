"""Producers' batches are masked (contract 11): declared secrets, ``::add-mask::`` across replicas."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from runevents.api.app import create_app
from runevents.app import App
from runevents.events import Event, EventDraft, decode_event
from runevents.exceptions import RunEnded, WriterBusy, WriterMoving
from runevents.models import Run, RunStatus
from runevents.settings import Settings
from tests.fixtures.app import asgi_client, write_secret_config

SECRET = "deploy-key-0123456789"
LATE = "producer-fetched-token-77"


def console(message: str, **extra: object) -> EventDraft:
    payload: dict[str, object] = {"scope": "run", "stream": "stdout", "message": message}
    payload.update(extra)
    return EventDraft(type="console.line", payload=payload)


def masked_settings(settings: Settings, tmp_path: Path) -> Settings:
    path = write_secret_config(
        tmp_path, configuration_id="deploy", variable="DEPLOY_KEY", value=SECRET
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


async def test_a_secret_in_run_options_is_masked_in_the_log_the_row_and_responses(
    settings: Settings, tmp_path: Path
) -> None:
    # Defect D4: create_run wrote the options into run.queued and the row as sent,
    # so a declared secret a caller put in them (as a value, a key, encoded) reached
    # the log, the database and every response. Contract 11: any string of any event.
    quick = masked_settings(settings, tmp_path)
    app = await App.open(quick, worker=False)  # no worker: the row stays as created
    encoded = base64.b64encode(SECRET.encode()).decode()
    percent = quote(SECRET + "&", safe="")
    options = {
        "note": f"pw={SECRET}!",
        SECRET: "k",
        "nested": [{"b64": f"Basic {encoded}", "url": f"?p={percent}"}],
    }
    try:
        async with asgi_client(create_app(quick, app=app)) as client:
            runs = "/api/v1/workspaces/acme/configurations/deploy/runs"
            created = []
            for body in (
                {"mode": "execute", "options": options},
                # an external run of a configuration with secrets: the same rule
                {"external": True, "mode": f"m-{SECRET}", "options": options},
            ):
                response = await client.post(runs, json=body)
                assert response.status_code == 201, response.text
                created.append(response)
            answers = [r.text for r in created]
            for response in created:
                path = f"{runs}/{response.json()['run']['id']}"
                for url in (path, path + "/events", f"/api/v1/runs/{response.json()['run']['id']}"):
                    got = await client.get(url)
                    assert got.status_code == 200, got.text
                    answers.append(got.text)
            listing = await client.get("/api/v1/workspaces/acme/runs")
            answers.append(listing.text)

        logged = []
        for response in created:
            run = await app.manager.get_run("acme", "deploy", response.json()["run"]["id"])
            events = await events_of(app, run)
            assert events[0]["type"] == "run.queued"
            logged.append(events[0]["payload"])
            # the row the worker executes from holds the masked options too
            assert run.options == logged[-1]["options"]
        dump = await database_text(app)
        everything = "\n".join([*answers, repr(logged), dump])
        for value in (SECRET, encoded, quote(SECRET, safe="")):
            assert value not in everything, value
        assert logged[0]["options"] == {
            "note": "pw=***!",
            "***": "k",
            "nested": [{"b64": "Basic ***", "url": "?p=***%26"}],
        }
        assert logged[1]["mode"] == "m-***"
        # counted like every other replacement (console.masked sums payload.masked)
        assert logged[0]["masked"] == 4
    finally:
        await app.close()


async def stored_events(app: App, run: Run) -> list[Event]:
    lines: list[bytes] = []
    async for chunk in app.manager.read_events(run):
        lines.extend(chunk.data.split(b"\n")[:-1])
    return [decode_event(line) for line in lines]


async def test_a_producers_build_id_is_masked(settings: Settings, tmp_path: Path) -> None:
    # Defect: build_id was stored and served with a declared secret in it
    app = await App.open(masked_settings(settings, tmp_path), worker=False)
    try:
        run = await app.manager.create_run("acme", "deploy", external=True)
        await app.manager.ingest(
            "acme", "deploy", run.id, [EventDraft(type="x", build_id=f"b-{SECRET}")]
        )
        last = (await stored_events(app, run))[-1]
        assert last.build_id == "b-***"
        assert last.payload == {"masked": 1}
    finally:
        await app.close()


async def test_an_add_mask_value_cannot_corrupt_run_completed(settings: Settings) -> None:
    # Defect: ::add-mask::failed made run.completed's status "***" (500, the run
    # stuck running); ::add-mask::completed made its type "run.***" (the run never
    # ended, later batches accepted); ::add-mask::status masked the key (the row
    # ended failed instead of succeeded)
    app = await App.open(settings, worker=False)
    try:
        for value, status in (
            ("failed", RunStatus.FAILED),
            ("completed", RunStatus.SUCCEEDED),
            ("status", RunStatus.SUCCEEDED),
        ):
            run = await app.manager.create_run("acme", "ext", external=True)
            await app.manager.ingest("acme", "ext", run.id, [console(f"::add-mask::{value}")])
            payload: dict[str, object] = {"status": status.value}
            if status is RunStatus.FAILED:
                payload["failure"] = {"stage": "run", "code": "x", "message": f"{value} run"}
            await app.manager.ingest(
                "acme", "ext", run.id, [EventDraft(type="run.completed", payload=payload)]
            )
            done = await app.manager.get_run("acme", "ext", run.id)
            assert done.status is status, value
            last = (await stored_events(app, run))[-1]
            assert last.type == "run.completed", value
            assert last.payload["status"] == status.value, value
            if status is RunStatus.FAILED:
                assert last.payload["failure"]["message"] == "*** run"
            with pytest.raises(RunEnded):
                await app.manager.ingest("acme", "ext", run.id, [console("after the end")])
    finally:
        await app.close()


async def test_an_add_mask_value_earlier_in_the_same_batch_is_masked(
    settings: Settings,
) -> None:
    # Defect: a line before the batch's ::add-mask:: line was stored in clear
    app = await App.open(settings, worker=False)
    try:
        run = await app.manager.create_run("acme", "ext", external=True)
        await app.manager.ingest(
            "acme",
            "ext",
            run.id,
            [console("value sameBatch12345 first"), console("::add-mask::sameBatch12345")],
        )
        events = await events_of(app, run)
        assert [e["payload"].get("message") for e in events[-2:]] == [  # type: ignore[union-attr]
            "value *** first",
            "::add-mask::***",
        ]
        # a later batch (another masker loaded from the database) masks it too
        await app.manager.ingest("acme", "ext", run.id, [console("again sameBatch12345")])
        assert (await events_of(app, run))[-1]["payload"] == {
            "scope": "run",
            "stream": "stdout",
            "message": "again ***",
            "masked": 1,
        }
    finally:
        await app.close()


async def test_an_add_mask_value_corrupted_a_producers_console_lines(settings: Settings) -> None:
    # Defect: a producer's ::add-mask::stdout / level / row_count turned stream into
    # "***", renamed level and row_count, and the summary lost by_stream / by_level
    # and the table's rows; a batch is masked like an executed run's output
    app = await App.open(settings, worker=False)
    try:
        run = await app.manager.create_run("acme", "ext", external=True)
        await app.manager.ingest(
            "acme",
            "ext",
            run.id,
            [
                console(f"::add-mask::{value}", level="info")
                for value in ("stdout", "level", "row_count")
            ],
        )
        table = {"table_id": "t", "source_file": "f", "table_index": 0, "row_count": 4}
        await app.manager.ingest(
            "acme",
            "ext",
            run.id,
            [
                console("stdout is a word here", level="info"),
                EventDraft(type="run.table.summary", payload=table),
                EventDraft(type="run.completed", payload={"status": "succeeded"}),
            ],
        )
        events = await events_of(app, run)
        line = events[-3]["payload"]
        assert line == {
            "scope": "run",
            "stream": "stdout",
            "level": "info",
            "message": "*** is a word here",
            "masked": 1,
        }
        assert events[-2]["payload"] == table
        done = await app.manager.get_run("acme", "ext", run.id)
        assert done.summary is not None
        assert done.summary["console"]["by_stream"] == {"stdout": 4}
        assert done.summary["console"]["by_level"] == {"info": 4}
        assert done.row_count == 4
    finally:
        await app.close()
