"""Composition root: builds every component from :class:`Settings`, once.

``App.open`` is the only place that turns URLs into backends (database by
SQLAlchemy URL, log store by URL scheme) and wires the manager, the notifier,
the embedded worker and the maintenance schedule. The HTTP app, the CLI and
the tests all go through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from runevents import metrics
from runevents.config_file import load_config_file
from runevents.configs import ConfigRegistry, Configuration
from runevents.db.engine import Database, open_database
from runevents.db.replicas import ReplicaRepository
from runevents.db.repository import RunRepository
from runevents.db.stats import run_counts
from runevents.eventlog import EventLog
from runevents.events import ENVELOPE_ALLOWANCE
from runevents.livetier import LiveTier
from runevents.logstore import LogStore, open_log_store
from runevents.manager import RunManager
from runevents.metered import MeteredFileOps, MeteredLogStore
from runevents.notify import LocalNotifier
from runevents.pgnotify import PostgresBridge, asyncpg_dsn
from runevents.replicas import Presence
from runevents.settings import Settings
from runevents.worker import Worker

log = logging.getLogger(__name__)


def load_configurations(settings: Settings) -> ConfigRegistry:
    """The configurations of ``--config`` plus, with ``--demo``, the bundled demo."""
    configs: list[Configuration] = []
    if settings.demo:
        from runevents.demo import demo_config_path

        configs.extend(load_config_file(demo_config_path()))
    if settings.config_file is not None:
        configs.extend(load_config_file(Path(settings.config_file)))
    return ConfigRegistry(configs)


def open_store(settings: Settings) -> LogStore:
    """The log store of ``settings.resolved_storage_url``.

    An ``s3://`` store gets the endpoint of the AWS variables explicitly: the
    store then allows plain HTTP exactly when that endpoint is ``http://``
    (obstore alone would refuse it without AWS_ALLOW_HTTP=true).
    """
    url = settings.resolved_storage_url
    if url.lower().startswith("s3://") and settings.s3_endpoint_url:
        return open_log_store(url, endpoint_url=settings.s3_endpoint_url)
    return open_log_store(url)


class App:
    """The running pieces of one runevents process."""

    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        manager: RunManager,
        worker: Worker | None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.manager = manager
        self.worker = worker
        self._maintenance: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._leases: asyncio.Task[None] | None = None
        self._repair: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._demo: asyncio.Task[None] | None = None
        self.bridge: PostgresBridge | None = None
        #: this process in the replica registry (``serve`` only; see ``open``)
        self.presence: Presence | None = None
        #: database, pool and disk gauges of ``GET /metrics``
        self.state_metrics = metrics.StateCollector(
            count_runs=lambda: run_counts(database),
            pool=database.engine.pool,
            data_dir=settings.data_dir,
            refresh_seconds=settings.metrics_refresh_seconds,
        )

    @classmethod
    async def open(
        cls, settings: Settings, *, worker: bool = True, advertise: str | None = None
    ) -> App:
        """Open the database (migrating it), the log store and the manager; start the worker.

        ``advertise``: the URL other replicas reach this process at (``serve`` only): it
        is announced in the replica registry (``replicas.Presence``) until :meth:`close`.
        """
        configs = load_configurations(settings)
        metrics.set_enabled(settings.metrics_enabled)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.live_tier_enabled:
            # a data dir is this process's cache on several machines (livetier.py)
            LiveTier.reset_cache(settings.data_dir / "spool")
        database = await open_database(
            settings.resolved_database_url, command_timeout=settings.database_timeout_seconds
        )
        bridge = None
        try:
            # both storage seams measured at the edge (metered.py), not inside the engine
            store = MeteredLogStore(open_store(settings))
            notifier = LocalNotifier()
            dsn = asyncpg_dsn(settings.resolved_database_url)
            if dsn is not None:
                # cross-process wake-ups; without it tailers still poll the log
                bridge = PostgresBridge(dsn, notifier.wake)
                notifier.publish = bridge.publish
                await bridge.start()
            event_log = EventLog(
                store,
                spool_dir=settings.data_dir / "spool",
                flush_events=settings.flush_events,
                flush_interval_ms=settings.flush_interval_ms,
                live_flush_interval_ms=settings.live_flush_interval_ms,
                # the producer's line is held to max_event_bytes (api/ingest.py); the
                # stored line may add its envelope
                max_event_bytes=settings.max_event_bytes + ENVELOPE_ALLOWANCE,
                fsync=settings.fsync,
                poll_interval_ms=settings.poll_interval_ms,
                notifier=notifier,
                file_ops=MeteredFileOps(),
            )
            manager = RunManager(
                settings=settings,
                repo=RunRepository(database),
                log=event_log,
                configs=configs,
            )
        except BaseException:
            if bridge is not None:
                await bridge.close()
            await database.close()
            raise
        # Leases first: a run taken from here on is renewed. Then the repair pass, before
        # the worker claims anything: what a crash left half done is finished at start-up.
        leases = asyncio.create_task(manager.ownership.run(), name="writer leases")
        from runevents.repair import repair_forever, repair_pass

        try:
            await repair_pass(manager)
        except Exception:
            log.exception("start-up repair pass failed; the periodic pass retries")
        runner = None
        if worker and settings.worker_concurrency > 0:
            runner = Worker(manager, concurrency=settings.worker_concurrency)
            manager.on_queued = runner.wake
            runner.start()
        app = cls(settings=settings, database=database, manager=manager, worker=runner)
        app.bridge = bridge
        app._leases = leases
        if advertise is not None:
            app.presence = Presence(
                ReplicaRepository(database),
                manager.ownership.owner,
                advertise,
                writer_lease_seconds=settings.writer_lease_seconds,
            )
            await app.presence.start()
        if runner is None:
            # a process without an in-process worker (``serve --workers 0``) reaps too:
            # any surviving process ends a dead worker's run (contract 10); a worker
            # reaps in its own loop (one reaper per process, never two)
            app._reaper = asyncio.create_task(app._reap_leases(), name="lease reaper")
        if settings.repair_interval_seconds > 0:
            app._repair = asyncio.create_task(
                repair_forever(manager, settings.repair_interval_seconds), name="repair"
            )
        if settings.demo and settings.start_demo_run and runner is not None:
            await app._start_demo_run()
            if settings.demo_run_interval_seconds > 0:
                app._demo = asyncio.create_task(app._keep_demo_live(), name="demo runs")
        if settings.maintenance_interval_seconds > 0:
            app._maintenance = asyncio.create_task(app._maintain(), name="maintenance")
        app._watch = asyncio.create_task(app._watch_held(), name="held runs")
        return app

    async def _start_demo_run(self) -> None:
        """With ``--demo``, start one demo run (unless one is live) so a newcomer sees it live."""
        from runevents.models import RunQuery, RunStatus

        live = {RunStatus.QUEUED, RunStatus.BUILDING, RunStatus.RUNNING}
        runs, _ = await self.manager.list_runs(
            RunQuery(workspace_id="demo", statuses=frozenset(live), limit=1)
        )
        if not runs:
            await self.manager.create_run("demo", "extract", options={})

    async def _keep_demo_live(self) -> None:
        """``serve --demo``: a new demo run every interval while none is live (issue 19).

        A newcomer who opens the browser a few minutes after starting the demo
        still finds a run streaming, not only finished ones.
        """
        while True:
            await asyncio.sleep(self.settings.demo_run_interval_seconds)
            try:
                await self._start_demo_run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not start a demo run; will retry next interval")

    async def _maintain(self) -> None:
        """Compaction and retention on a schedule (see ``maintenance``)."""
        from runevents.maintenance import scheduled_pass

        while True:
            await asyncio.sleep(self.settings.maintenance_interval_seconds)
            try:
                await scheduled_pass(self.manager)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduled maintenance failed; will retry next interval")

    async def _reap_leases(self) -> None:
        """The lease reaper of a process without workers, every ``reap_interval``."""
        from runevents.upkeep import reap_interval

        interval = reap_interval(self.settings.lease_seconds)
        reaper_id = f"reaper:{self.manager.ownership.owner}"
        while True:
            await asyncio.sleep(interval)
            try:
                for lost in await self.manager.reap_expired_leases(reaper_id):
                    log.warning("run %s finished as failed: its worker was lost", lost.id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reaping expired worker leases failed; will retry")

    async def _watch_held(self) -> None:
        """Relayed cancels and producer timeouts of external runs, at a heartbeat's pace.

        Runs this process holds are checked every round; the database query for
        silent runs nobody holds (their process restarted) every ~minute.
        """
        # often enough that an idle writer is let go within a fraction of its release
        # delay: a producer's batch sent to another replica is taken within 10 s
        release = self.settings.external_writer_release_seconds or self.settings.lease_seconds
        interval = min(10.0, max(0.5, min(self.settings.lease_seconds / 3, release / 4)))
        loop = asyncio.get_running_loop()
        next_unheld = loop.time() + min(60.0, self.settings.external_idle_timeout_seconds or 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.manager.watch_held_runs()
                if loop.time() >= next_unheld:
                    next_unheld = loop.time() + 60.0
                    await self.manager.fail_idle_external_runs()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checking external runs for cancels/timeouts failed; will retry")

    async def close(self) -> None:
        """Stop the worker and the schedule, release writers, close the database."""
        if self.presence is not None:
            # first: peers stop forwarding batches here, and take the runs once let go
            await self.presence.close()
        for task in (self._demo, self._maintenance, self._watch, self._repair, self._reaper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.worker is not None:
            await self.worker.stop()
        await self.manager.close()
        if self._leases is not None:
            self._leases.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leases
        if self.bridge is not None:
            await self.bridge.close()
        await self.database.close()
