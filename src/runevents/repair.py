"""The repair loop: finds every run a crash or an outage left half done, and finishes it.

Runs at start-up and every ``repair_interval_seconds``. Each finding is a
state of ``lifecycle.py`` that no process is moving forward any more:

=====================  ==========================================  ===========================
finding                 how it is recognized                        repair
=====================  ==========================================  ===========================
``row_behind_log``      row live, log ends with run.completed,      finish the row from the log,
                        nobody holds the log                        seal
``unsealed``            row ended, ``log_state`` still ``live``     seal (upload), row -> plain
``stuck_completion``    a run held here is COMPLETING (the row      ``HeldRun.settle`` again
                        update or the seal failed)
``damaged``             a live log nobody holds that recovery       cut, quarantine,
                        has to cut (a crash of its writer)          ``log.recovered``, release
``damaged_read``        a read or summary fold here hit LogDamaged  a full recovery (at once, in
                        (``HeldRuns.damaged``; before the           a task; the pass retries
                        checkpoint: a failing disk)                 what it could not take yet)
=====================  ==========================================  ===========================

Each pass also deletes the expired bodies whose ``delete_delay_seconds``
have passed (``RunUpkeep.delete_due_bodies``): routine, not a finding.

Only runs that may need it are taken (issue: every pass took every idle live run,
so an idle server burned CPU in proportion to its live runs): a run whose row
ended, one whose writer lease lapsed without being given back (its holder died
or stalled: ``live_runs_with_lapsed_writers``), and a local run whose live log
is not exactly as long as its row's checkpoint (``events_bytes``: a row behind
its log, a torn or zeroed tail, a log shorter than the row) -- one ``stat``.
A run let go cleanly is none of these: ``HeldRun.release`` writes the row's
counters, then gives the lease back; one it cannot (the row not written, or
run.completed in the log but not in the row) keeps its lease until it lapses.
A take finds nothing else: recovery from a checkpoint checks the log from
there on. Several machines: every live run's chunks are asked whether they end
the run (``LiveTier.ends_run``), as before.

Runs another process holds are skipped (taking their log fails: file lock
or writer lease); the next pass looks again. Lost workers are the lease
reaper's (``RunManager.reap_expired_leases``), idle producers
``fail_idle_external_runs``'.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from runevents import metrics
from runevents.exceptions import LogNotFound, RuneventsError, WriterMoving
from runevents.held import run_ref
from runevents.lifecycle import LogPhase

if TYPE_CHECKING:
    from runevents.manager import RunManager
    from runevents.models import Run

log = logging.getLogger(__name__)


async def repair_pass(manager: RunManager, *, page: int = 500) -> Counter[str]:
    """One pass over every run whose log is still live; returns the findings by kind."""
    found: Counter[str] = Counter()
    for run_id in list(manager.held.damaged):
        # damage a read found, not repaired yet (its owner was elsewhere, or it failed)
        manager.held.damage_found(run_id, manager.held.damaged.get(run_id))
    for held in list(manager.held):
        if held.phase is LogPhase.COMPLETING:
            try:
                async with manager.held.lock(held.run.id):
                    if manager.held.get(held.run.id) is held:
                        await held.settle()
                        found["stuck_completion"] += 1
            except RuneventsError as exc:
                log.warning("run %s: completion still failing: %s", held.run.id, exc)
    lapsed = await manager.repo.live_runs_with_lapsed_writers()
    after: str | None = None
    while True:
        runs = await manager.repo.live_runs(limit=page, after_id=after)
        if not runs:
            break
        after = runs[-1].id
        for run in await _needing_repair(manager, runs, lapsed):
            if manager.held.get(run.id) is not None:
                continue
            try:
                kind = await _repair_one(manager, run)
            except (WriterMoving, LogNotFound):
                continue  # someone holds it, or its log lives on another machine
            except RuneventsError as exc:
                log.warning("run %s: repair failed (%s); next pass", run.id, exc)
                continue
            if kind is not None:
                found[kind] += 1
        await asyncio.sleep(0)
    # expired bodies whose delay has passed (deferred deletion, ``upkeep.expire_run``)
    deleted = await manager.delete_due_bodies()
    if deleted:
        log.info("expired log bodies deleted: %d", deleted)
    if manager.tier is not None:
        found["sealed_chunks"] += await manager.tier.repair()
        found += Counter()  # drop a zero count
    if found:
        log.warning("repair pass: %s", dict(found))
        for kind, count in found.items():
            metrics.repair_found(kind, count)
    return found


async def _needing_repair(manager: RunManager, runs: list[Run], lapsed: set[str]) -> list[Run]:
    """The runs of ``runs`` that may need a repair (see the module doc), in their order."""
    chosen: set[str] = set()
    local: list[Run] = []
    for run in runs:
        if manager.held.get(run.id) is not None:
            continue
        if run.status.ended or run.id in lapsed or manager.tier is not None:
            chosen.add(run.id)
        elif run.external or run.lease_owner is None:
            local.append(run)  # (a worker's run: the lease reaper's)
    if local:
        paths = [manager.log.keys(run_ref(run)).live for run in local]
        sizes = await asyncio.to_thread(_sizes, paths)
        for run, size in zip(local, sizes, strict=True):
            if size is not None and size != (run.events_bytes or 0):
                chosen.add(run.id)
    return [run for run in runs if run.id in chosen]


def _sizes(paths: list[Path]) -> list[int | None]:
    """Each file's size; None for a missing one (a live log on another machine)."""
    sizes: list[int | None] = []
    for path in paths:
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            sizes.append(None)
    return sizes


async def _repair_one(manager: RunManager, run: Run) -> str | None:
    if run.status.ended:
        sealed = await manager.seal_ended(run)
        return "unsealed" if sealed is not None else None
    if not run.external and run.lease_owner is not None:
        return None  # a worker's run: the lease reaper decides whether its worker is lost
    async with manager.held.lock(run.id):
        if manager.held.get(run.id) is not None:
            return None
        current = await manager.repo.get_run(run.id)
        if current.status.ended or (not current.external and current.lease_owner is not None):
            return None
        tier = manager.tier
        if tier is not None:
            if not await tier.ends_run(current.id):
                return None  # several machines: committed chunks are whole, never damaged
        elif not manager.log.keys(run_ref(current)).live.exists():
            return None  # a row whose live log is on another machine (or not written yet)
        held = await manager.held.take(current, source="server", atomic=True)
        if held.writer.ended:
            await manager.finish_from_log(held)
            return "row_behind_log"
        damaged = held.writer.recovered is not None
        await held.release()
        return "damaged" if damaged else None


async def repair_forever(manager: RunManager, interval: float) -> None:
    """The app's background task: a pass every ``interval`` seconds."""
    while True:
        await asyncio.sleep(interval)
        try:
            await repair_pass(manager)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("repair pass failed; next interval")
