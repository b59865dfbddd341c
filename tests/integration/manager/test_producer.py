"""Producer ingest across replicas: a cancel that reaches the process without the writer.

Two Apps on one database and one data directory stand for two API replicas;
the file lock makes the one that created the external run its only writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from runevents.app import App
from runevents.events import EventDraft, decode_event
from runevents.exceptions import InvalidEvent, RunEnded, WriterMoving
from runevents.models import Run, RunStatus
from runevents.settings import Settings


def completed() -> EventDraft:
    return EventDraft(type="run.completed", payload={"status": "succeeded"})


def console(message: str) -> EventDraft:
    return EventDraft(
        type="console.line",
        payload={"scope": "run", "stream": "stdout", "level": "info", "message": message},
    )


@pytest.fixture
async def replicas(settings: Settings) -> AsyncIterator[tuple[App, App]]:
    first = await App.open(settings, worker=False)
    second = await App.open(settings, worker=False)
    try:
        yield first, second
    finally:
        await second.close()
        await first.close()


async def wait_status(app: App, run: Run, status: RunStatus, timeout: float = 10.0) -> Run:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await app.manager.get_run(run.workspace_id, run.configuration_id, run.id)
        if current.status is status:
            return current
        assert asyncio.get_running_loop().time() < deadline, f"still {current.status}"
        await asyncio.sleep(0.05)


async def last_event_type_and_status(app: App, run: Run) -> tuple[str, object]:
    lines: list[bytes] = []
    async for chunk in app.manager.read_events(run):
        lines.extend(chunk.data.split(b"\n")[:-1])
    last = decode_event(lines[-1])
    return last.type, last.payload.get("status")


async def test_cancel_sent_to_another_replica_ends_an_idle_external_run(
    replicas: tuple[App, App],
) -> None:
    holder, other = replicas
    run = await holder.manager.create_run("acme", "ext", external=True)
    await holder.manager.ingest("acme", "ext", run.id, [console("working")])
    # the other replica cannot take the writer: it can only flag the run
    flagged = await other.manager.cancel_run("acme", "ext", run.id)
    assert flagged.cancel_requested and not flagged.status.ended
    # the producer stays idle; the holder's watch ends the run on its own
    done = await wait_status(other, run, RunStatus.CANCELLED)
    assert done.failure is not None and done.failure["code"] == "cancelled"
    assert await last_event_type_and_status(other, run) == ("run.completed", "cancelled")
    with pytest.raises(RunEnded):
        await holder.manager.ingest("acme", "ext", run.id, [console("late")])


@pytest.mark.parametrize("lease_seconds", [60.0])
async def test_cancel_sent_to_another_replica_ends_a_busy_external_run_at_its_next_batch(
    settings: Settings, lease_seconds: float
) -> None:
    # the held-runs watch runs every min(10 s, release / 4): with a 60 s release it does
    # not run during the test, so the batch (not the watch) must see the relayed cancel
    settings = settings.model_copy(
        update={"lease_seconds": lease_seconds, "external_writer_release_seconds": 60.0}
    )
    holder = await App.open(settings, worker=False)
    other = await App.open(settings, worker=False)
    try:
        run = await holder.manager.create_run("acme", "ext", external=True)
        await holder.manager.ingest("acme", "ext", run.id, [console("1")])
        await other.manager.cancel_run("acme", "ext", run.id)
        await asyncio.sleep(1.1)  # PROGRESS_SECONDS: the next batch re-reads the row
        answer = await holder.manager.ingest("acme", "ext", run.id, [console("2")])
        assert answer == {"first_sequence": 3, "last_sequence": 3}  # this batch is in
        done = await other.manager.get_run("acme", "ext", run.id)
        assert done.status is RunStatus.CANCELLED and done.event_count == 4
        with pytest.raises(RunEnded):
            await holder.manager.ingest("acme", "ext", run.id, [console("3")])
    finally:
        await other.close()
        await holder.close()


async def test_external_run_whose_producer_went_silent_fails_with_producer_timeout(
    settings: Settings,
) -> None:
    app = await App.open(
        settings.model_copy(update={"external_idle_timeout_seconds": 1.0}), worker=False
    )
    try:
        run = await app.manager.create_run("acme", "ext", external=True)
        await app.manager.ingest("acme", "ext", run.id, [console("then silence")])
        # the held-runs watch (every lease_seconds/3) ends it; nobody calls anything
        done = await wait_status(app, run, RunStatus.FAILED)
        assert done.failure is not None and done.failure["code"] == "producer_timeout"
        assert await last_event_type_and_status(app, run) == ("run.completed", "failed")
    finally:
        await app.close()


async def test_silent_external_run_that_no_process_holds_is_failed_by_any_replica(
    settings: Settings,
) -> None:
    first = await App.open(settings, worker=False)
    run = await first.manager.create_run("acme", "ext", external=True)
    await first.manager.ingest("acme", "ext", run.id, [console("1")])
    await first.close()  # the holder restarts: nobody holds the writer now
    quick = settings.model_copy(update={"external_idle_timeout_seconds": 1.0})
    second = await App.open(quick, worker=False)
    try:
        assert await second.manager.fail_idle_external_runs() == []  # not silent long enough
        await asyncio.sleep(1.1)
        ended = await second.manager.fail_idle_external_runs()
        assert [r.id for r in ended] == [run.id]
        assert ended[0].status is RunStatus.FAILED
        assert ended[0].failure is not None and ended[0].failure["code"] == "producer_timeout"
        assert ended[0].event_count == 3
    finally:
        await second.close()


async def test_a_producer_that_keeps_sending_is_never_timed_out(settings: Settings) -> None:
    app = await App.open(
        settings.model_copy(update={"external_idle_timeout_seconds": 2.5}), worker=False
    )
    try:
        run = await app.manager.create_run("acme", "ext", external=True)
        for number in range(14):  # ~4 s, longer than the timeout
            await app.manager.ingest("acme", "ext", run.id, [console(str(number))])
            await asyncio.sleep(0.3)
        assert await app.manager.watch_held_runs() == []
        current = await app.manager.get_run("acme", "ext", run.id)
        assert current.status is RunStatus.RUNNING
    finally:
        await app.close()


async def test_idle_external_runs_writer_is_released_to_the_replica_that_gets_the_next_batch(
    settings: Settings,
) -> None:
    quick = settings.model_copy(update={"external_writer_release_seconds": 0.5})
    holder = await App.open(quick, worker=False)
    other = await App.open(quick, worker=False)
    try:
        run = await holder.manager.create_run("acme", "ext", external=True)
        await holder.manager.ingest("acme", "ext", run.id, [console("1")])
        with pytest.raises(WriterMoving):  # held: 503 + Retry-After, never 409 (contract 10)
            await other.manager.ingest("acme", "ext", run.id, [console("2")])
        # the holder lets go of the idle writer; the other replica takes the next batch
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                answer = await other.manager.ingest("acme", "ext", run.id, [console("2")])
                break
            except WriterMoving:
                assert asyncio.get_running_loop().time() < deadline, "never released"
                await asyncio.sleep(0.1)
        assert answer == {"first_sequence": 3, "last_sequence": 3}
        row = await holder.manager.get_run("acme", "ext", run.id)
        assert row.status is RunStatus.RUNNING and row.event_count >= 2
        await other.manager.ingest("acme", "ext", run.id, [completed()])
        lines: list[bytes] = []
        async for chunk in holder.manager.read_events(run):
            lines.extend(chunk.data.split(b"\n")[:-1])
        events = [decode_event(line) for line in lines]
        assert [e.sequence for e in events] == [1, 2, 3, 4]
        assert [e.payload.get("message") for e in events[1:3]] == ["1", "2"]
        done = await holder.manager.get_run("acme", "ext", run.id)
        assert done.status is RunStatus.SUCCEEDED and done.event_count == 4
    finally:
        await other.close()
        await holder.close()


@pytest.mark.parametrize(
    "draft",
    [
        EventDraft(type="log.recovered", payload={"cut_bytes": 1, "reason": "forged"}),
        EventDraft(type="x" * 129),
    ],
)
async def test_a_producer_could_post_log_recovered_or_an_overlong_type(
    app: App, draft: EventDraft
) -> None:
    # the rule a job's structured output follows too (events.type_problem); a
    # producer's console lines are stored as sent (producer._validate_batch says why)
    run = await app.manager.create_run("acme", "ext", external=True)
    with pytest.raises(InvalidEvent) as refused:
        await app.manager.ingest("acme", "ext", run.id, [console("ok"), draft])
    assert refused.value.line == 2
    # nothing of the batch was appended
    assert (await last_event_type_and_status(app, run))[0] == "run.queued"
