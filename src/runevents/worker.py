"""The worker: claims queued runs with a lease and executes them.

One loop claims runs while it has free slots (``concurrency``) -- only runs of
configurations this process has (``RunManager.claim_next``); each claimed
run gets a heartbeat task that renews its lease. A cancel requested in this
process signals the run at once (``RunManager._flag_cancel``); one requested
by another process (an API replica, the CLI) is seen by the cancel watch,
which reads the flags of every run in flight every ``CANCEL_POLL_SECONDS``
(one query by primary key), not at the next heartbeat. A run whose worker
died is noticed by any worker's reaper when its lease expires and is
finished ``failed`` with the reason -- never left ``running`` forever (a
server process without workers reaps too: ``App``). The file lock on the
run's log is the final arbiter: a reaper cannot finish a run whose writer is
still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from datetime import UTC, datetime
from typing import Any

from runevents import ids, logs, metrics
from runevents.configs import Configuration
from runevents.exceptions import (
    ConfigurationNotFound,
    Conflict,
    RuneventsError,
    StorageError,
    WriterFenced,
)
from runevents.executor import execute
from runevents.manager import RunManager
from runevents.models import Run
from runevents.session import RunSession
from runevents.upkeep import reap_interval

log = logging.getLogger(__name__)

#: how long the claim loop sleeps when the queue is empty (seconds)
IDLE_POLL_SECONDS = 0.5
#: how often the cancel watch reads the cancel flags of the runs in flight (seconds)
CANCEL_POLL_SECONDS = 0.5
#: backoff of a completion that could not be made durable (seconds)
COMPLETE_RETRY_MIN, COMPLETE_RETRY_MAX = 0.2, 5.0
#: issue 19: the reason a run ends ``cancelled`` when its server is stopped (Ctrl-C, SIGTERM)
SHUTDOWN_FAILURE = {
    "stage": "run",
    "code": "server_shutdown",
    "message": "the server executing this run was stopped (Ctrl-C or SIGTERM); re-run it to retry",
}


def _ms_between(start: str | None, end: str | None) -> int | None:
    if not start or not end:
        return None
    a = datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(UTC)
    b = datetime.fromisoformat(end.replace("Z", "+00:00")).astimezone(UTC)
    return max(0, round((b - a).total_seconds() * 1000))


class Worker:
    """Executes queued runs, ``concurrency`` at a time."""

    def __init__(self, manager: RunManager, *, concurrency: int, worker_id: str | None = None):
        self.manager = manager
        self.settings = manager.settings
        self.concurrency = max(1, concurrency)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{ids.new_ulid()[-6:]}"
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._sessions: dict[str, RunSession] = {}  # issue 19: stop() cancels them cleanly

    def wake(self) -> None:
        """A run was queued in this process: claim without waiting for the poll."""
        self._wakeup.set()

    def start(self) -> None:
        """Start the claim loop in the background."""
        self._loop_task = asyncio.create_task(self.run(), name=f"worker {self.worker_id}")

    async def stop(self, *, cancel_running: bool = True) -> None:
        """Stop claiming; cancel (or wait for) the runs in flight."""
        self._stopping.set()
        self._wakeup.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if cancel_running:
            # issue 19: hand the runs back: stop their children (SIGTERM, then SIGKILL
            # after kill_grace_seconds) so they end `cancelled` with SHUTDOWN_FAILURE
            for session in list(self._sessions.values()):
                session.cancel.set()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=self.settings.kill_grace_seconds + 5)
            for task in list(self._tasks):
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run(self) -> None:
        """Claim and execute until stopped."""
        watch = asyncio.create_task(self._watch_cancels(), name=f"cancel watch {self.worker_id}")
        try:
            await self.manager.remove_ended_scratch_dirs()
        except asyncio.CancelledError:
            watch.cancel()
            raise
        except Exception:
            log.exception("removing the scratch directories of ended runs failed")
        try:
            await self._claim_loop()
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _claim_loop(self) -> None:
        next_reap = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                if loop.time() >= next_reap:
                    next_reap = loop.time() + reap_interval(self.settings.lease_seconds)
                    for lost in await self.manager.reap_expired_leases(self.worker_id):
                        log.warning("run %s finished as failed: its worker was lost", lost.id)
                claimed = False
                while len(self._tasks) < self.concurrency and not self._stopping.is_set():
                    run = await self.manager.claim_next(self.worker_id)
                    if run is None:
                        break
                    claimed = True
                    task = asyncio.create_task(self._execute(run), name=f"run {run.id}")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                if not claimed:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), IDLE_POLL_SECONDS)
                else:
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception:
                # the database may be briefly unavailable; keep the worker alive
                log.exception("worker loop error; retrying")
                await asyncio.sleep(IDLE_POLL_SECONDS)

    async def _execute(self, run: Run) -> None:
        logs.bind_run(run.id)  # log lines of this task name the run
        metrics.bind_source("executor")  # metrics hook: its events count as the executor's
        try:
            config = self.manager.configs.get(run.workspace_id, run.configuration_id)
        except ConfigurationNotFound:
            # claim_next takes only runs of configurations this process has; should one
            # come anyway, it is another worker's to run, never this one's to fail
            log.warning("run %s: no configuration for it here; giving it back", run.id)
            with contextlib.suppress(RuneventsError):
                await self.manager.release(run, self.worker_id)
            return
        try:
            session = await self.manager.start_session(run, self.worker_id)
        except RuneventsError as exc:
            # the database (or the disk) failed while starting: give the run back
            # rather than leave it claimed and never heart-beaten (reaped as lost)
            log.warning("run %s: could not start (%s); giving it back", run.id, exc)
            session = None
        if session is None:
            with contextlib.suppress(RuneventsError):
                await self.manager.release(run, self.worker_id)
            return
        heartbeat = asyncio.create_task(self._heartbeat(session))
        self._sessions[run.id] = session
        try:
            await self._run_session(session, config)
        except asyncio.CancelledError:
            # worker shutdown: release the writer; the lease reaper (here after a
            # restart, or another worker) finishes the run as failed with the reason
            await session.abandon()
            raise
        except WriterFenced as exc:
            # another process took the run (its lease moved on, or it ended the run
            # worker_lost while this one was paused): stop its child, never write or
            # record anything more for it, and free the slot
            log.error("run %s: this worker lost the run (%s); letting it go", run.id, exc)
            session.cancel.set()
            await self.manager.let_go(session, str(exc))
        finally:
            self._sessions.pop(run.id, None)
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self.manager.end_session(session.run.id)
            # the executor removes it; this is for an execution cut short before it could
            await asyncio.shield(self.manager.remove_scratch_dir(run.id))

    async def _complete(self, session: RunSession, **outcome: Any) -> None:
        """Write run.completed; while the log cannot be made durable, keep it buffered and
        retry (the heartbeat keeps the lease) -- the row is finished only once it is.

        WriterFenced as soon as this process turns out to have lost the run (each
        retry proves the writer lease first): its completion can never succeed."""
        try:
            await session.complete(**outcome)
            return
        except WriterFenced:
            raise
        except StorageError as exc:
            log.error("run %s: completion not durable yet (%s); retrying", session.run.id, exc)
        delay = COMPLETE_RETRY_MIN
        while True:
            await asyncio.sleep(delay)
            try:
                await session.check_owned()
                if session.writer.ended:
                    # run.completed is committed (maybe not durable yet): finish the job
                    await session.settle()
                else:
                    # it failed before run.completed was written: write it again
                    await session.complete(**outcome)
                return
            except WriterFenced:
                raise
            except StorageError as exc:
                log.warning("run %s: completion still failing: %s", session.run.id, exc)
                delay = min(delay * 2, COMPLETE_RETRY_MAX)

    async def _run_session(self, session: RunSession, config: Configuration) -> None:
        run = session.run
        try:
            result = await execute(
                config,
                run_id=run.id,
                options=run.options,
                sink=session,
                cancel=session.cancel,
                work_dir=self.settings.data_dir.resolve(),
                max_line_bytes=self.settings.max_line_bytes,
                kill_grace_seconds=self.settings.kill_grace_seconds,
                withheld_env=self.manager.configs.secret_names(),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("run %s: executor failed", run.id)
            await self._complete(
                session,
                status="failed",
                failure={
                    "stage": "run",
                    "code": "internal_error",
                    "message": f"{type(exc).__name__}: {exc}"[:500],
                },
                execution=None,
            )
            return
        shutdown = self._stopping.is_set() and result.status == "cancelled"
        await self._complete(
            session,
            status=result.status,
            failure=result.failure or (SHUTDOWN_FAILURE if shutdown else None),
            execution={
                "exit_code": result.exit_code,
                "started_at": result.started_at,
                "completed_at": result.completed_at,
                "duration_ms": _ms_between(result.started_at, result.completed_at),
            },
        )

    async def _watch_cancels(self) -> None:
        """Signal the runs in flight whose cancel another process requested, within
        ``CANCEL_POLL_SECONDS`` (a cancel requested here is signalled at once)."""
        failing = False
        while True:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            watched = [rid for rid, s in self._sessions.items() if not s.cancel.is_set()]
            if not watched:
                continue
            try:
                requested = await self.manager.cancels_requested(watched)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # the heartbeat relays the flag too; say it once per outage
                if not failing:
                    log.warning("reading cancel requests failed (%s); will retry", exc)
                failing = True
                continue
            failing = False
            for run_id in requested:
                session = self._sessions.get(run_id)
                if session is not None:
                    session.cancel.set()

    async def _heartbeat(self, session: RunSession) -> None:
        interval = max(0.2, self.settings.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.manager.heartbeat(session, self.worker_id)
            except Conflict:
                if session.cancel.is_set():
                    # the run is being cancelled (the cancel watch was first): its
                    # completion moved the row on before this renewal -- expected
                    return
                # the execution lease is never taken from a live worker (the reaper
                # needs the run's log first); a row that moved on means the run ended
                log.error("run %s: execution lease gone; stopping", session.run.id)
                session.cancel.set()
                return
            except Exception:
                log.exception("run %s: heartbeat failed; will retry", session.run.id)
