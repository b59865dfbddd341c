"""Maintenance policy: compaction, retention and reindex over many runs.

The per-run operations (``compact_run``, ``expire_run``, ``reindex_log``) live
in :class:`RunManager`; this module decides *which* runs they apply to, pages
through the runs table, honours ``dry_run`` and reports what changed. Ages are
counted from ``completed_at`` (the server's clock); runs that have not ended
are never touched. Each pass is safe to run while a server uses the same data:
every per-run step is idempotent and crash-safe.

Memory stays bounded however many runs the database holds: candidates are
read a page at a time through the repository's maintenance queries and acted
on before the next page is read. Progress totals therefore grow as pages
arrive (exact once the last page is read, and from the start when everything
fits in one page).

Compaction's crash order (see ``RunManager.compact_run``): the compressed form
is written and verified beside the plain log, a journal entry names the run,
the row points at the compressed form, the plain log is dropped, the entry is
removed. A pass first finishes whatever an interrupted pass left in the
journal, so a kill -9 between the row update and the drop never leaves the
plain log behind for good.

Passes may run on several machines at once (every replica's schedule, a CLI
anywhere): each per-run step holds the run's maintenance lock
(``RunManager.maintaining``, a Postgres advisory lock), so one process acts on
a run at a time; a run another process holds is counted in ``skipped`` and
left to it, and a step re-reads the row under the lock, so a run another pass
finished meanwhile is not done (nor counted) twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from runevents import metrics
from runevents.compaction_journal import CompactionJournal
from runevents.exceptions import (
    DatabaseError,
    MaintenanceBusy,
    RuneventsError,
    RunNotFound,
    StorageError,
    WriterBusy,
)
from runevents.manager import RunManager
from runevents.models import LogState, Run, utcnow
from runevents.settings import parse_duration
from runevents.upkeep import run_ref

T = TypeVar("T")
#: waits before retrying a per-run step after a transient database error (seconds)
RETRY_DELAYS = (0.5, 2.0)

log = logging.getLogger(__name__)

#: rows fetched per page while scanning the runs table
PAGE = 200
#: the per-configuration query ranks every ended run for each page: fewer, larger pages
RANKED_PAGE = 2000
#: log states that still have a body (retention candidates)
STORED = frozenset({LogState.PLAIN, LogState.COMPRESSED})

#: ``progress(None, total)`` sets the total (it grows as pages arrive);
#: ``progress(run, None)`` says one run was handled
Progress = Callable[[Run | None, int | None], None]


@dataclasses.dataclass
class Report:
    """What a maintenance pass did (or would do, with ``dry_run``)."""

    action: str
    dry_run: bool
    runs: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    run_ids: list[str] = dataclasses.field(default_factory=list)
    #: runs whose compaction an earlier, interrupted pass left half done (finished now)
    recovered: list[str] = dataclasses.field(default_factory=list)
    #: runs another process was working on at the same moment (left to it)
    skipped: int = 0

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def to_dict(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "bytes_saved": self.bytes_saved}


# ---------------------------------------------------------------------------
# the compaction journal


async def _finish_interrupted(manager: RunManager, report: Report) -> None:
    """Complete the compactions an earlier pass left between row update and plain drop."""
    journal = CompactionJournal(manager.log)
    for run_id in journal.pending():
        try:
            run = await manager.repo.get_run(run_id)
        except RunNotFound:
            journal.remove(run_id)
            continue
        try:
            if run.log_state is LogState.PLAIN:
                # killed before the row update: redo the whole step (it finds the
                # verified compressed form and reuses it; it takes the lock itself)
                await manager.compact_run(run)
            elif run.log_state is LogState.COMPRESSED:
                async with manager.maintaining(run_id):
                    await manager.log.drop_plain(run_ref(run))
            elif run.log_state is LogState.EXPIRED:
                # retention won the race: make sure nothing of the body is left (once
                # a read that started before the expiry has had its delay)
                await manager.queue_body_deletion(run)
        except (WriterBusy, MaintenanceBusy):
            report.skipped += 1
            continue
        except RuneventsError as exc:
            report.errors.append(f"{run_id}: finishing an interrupted compaction: {exc.message}")
            continue
        journal.remove(run_id)
        report.recovered.append(run_id)


# ---------------------------------------------------------------------------
# paging


async def _paged(
    fetch: Callable[[Run | None], Awaitable[list[Run]]], page_size: int
) -> AsyncGenerator[list[Run], None]:
    """Pages of ``fetch(last run of the previous page)`` until a short page."""
    last: Run | None = None
    while True:
        page = await fetch(last)
        if page:
            yield page
        if len(page) < page_size:
            return
        last = page[-1]


def _ended_before(
    manager: RunManager, older_than: timedelta, states: frozenset[LogState]
) -> AsyncIterator[list[Run]]:
    """Pages of ended runs that completed more than ``older_than`` ago, log in ``states``."""
    cutoff = utcnow() - older_than

    def fetch(last: Run | None) -> Awaitable[list[Run]]:
        return manager.repo.runs_ended_before(
            cutoff, log_states=states, limit=PAGE, after_id=last.id if last else None
        )

    return _paged(fetch, PAGE)


class _Tally:
    """Progress totals that grow with each page read."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.total = 0

    def found(self, n: int) -> None:
        self.total += n
        if self.progress is not None and n:
            self.progress(None, self.total)

    def done(self, run: Run | None) -> None:
        if self.progress is not None:
            self.progress(run, None)


# ---------------------------------------------------------------------------
# compaction


async def compact(
    manager: RunManager,
    older_than: timedelta,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Compress the plain logs of runs that ended more than ``older_than`` ago.

    With ``dry_run`` nothing is written; the report lists the candidates and
    their current bytes (the compressed size is not known without compressing).
    """
    report = Report(action="compact", dry_run=dry_run)
    if not dry_run:
        await _finish_interrupted(manager, report)
    tally = _Tally(progress)
    async for page in _ended_before(manager, older_than, frozenset({LogState.PLAIN})):
        tally.found(len(page))
        for run in page:
            if dry_run:
                report.runs += 1
                report.run_ids.append(run.id)
                report.bytes_before += run.events_bytes
                report.bytes_after += run.events_bytes
            else:
                await _compact_one(manager, run, report)
            tally.done(run)
    _count(report)
    return report


def _count(report: Report) -> None:
    """Add a pass's result to the process's maintenance metrics (dry runs change nothing)."""
    if not report.dry_run:
        metrics.maintenance_done(
            report.action,
            runs=report.runs,
            bytes_in=report.bytes_before,
            bytes_out=report.bytes_after,
            errors=len(report.errors),
        )


async def _retrying(step: Callable[[], Awaitable[T]]) -> T:
    """Run a per-run step, retrying a transient database error (e.g. SQLite busy).

    Passes run beside a live server on the same database; on SQLite a burst of
    writes can outlast the busy timeout. Every step is idempotent, so trying
    again is safe; a persistent failure is reported by the caller.
    """
    for delay in RETRY_DELAYS:
        try:
            return await step()
        except DatabaseError:
            await asyncio.sleep(delay)
    return await step()


async def _attempt(run: Run, report: Report, step: Callable[[], Awaitable[T]]) -> T | None:
    """One per-run step with the pass's error accounting; None if it did not happen.

    A run whose log another pass (the server's schedule, a CLI, on any machine)
    holds right now is skipped, not failed; a transient database error is
    retried first.
    """
    try:
        return await _retrying(step)
    except (WriterBusy, MaintenanceBusy):
        report.skipped += 1
    except RuneventsError as exc:
        report.errors.append(f"{run.id}: {exc.message}")
    return None


async def _compact_one(manager: RunManager, run: Run, report: Report) -> None:
    result = await _attempt(run, report, lambda: manager.compact_run(run))
    if result is None:
        return  # failed, skipped, or changed since the page was read
    report.runs += 1
    report.run_ids.append(run.id)
    report.bytes_before += result[0]
    report.bytes_after += result[1]


# ---------------------------------------------------------------------------
# retention


async def retention(
    manager: RunManager,
    older_than: timedelta | None,
    *,
    keep_per_configuration: int | None = None,
    max_bytes: int | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Delete log bodies by age, by count per configuration, and by total bytes.

    The policies apply in that order, each to what the previous ones left:

    * ``older_than``: runs that ended more than this long ago;
    * ``keep_per_configuration``: all but the N newest (by ``created_at``) runs
      with a body, per (workspace, configuration);
    * ``max_bytes``: the oldest (by ``completed_at``) until the bodies of ended
      runs total at most this many bytes. Live runs neither count nor go.

    The run rows and their summaries stay (``log_state: expired``). With
    ``dry_run`` nothing changes and the report lists what would go, and the
    bytes it would free.
    """
    report = Report(action="retention", dry_run=dry_run)
    tally = _Tally(progress)
    #: dry run only: what the earlier policies would remove (id -> bytes), so the
    #: later ones see the state they would really see
    doomed: dict[str, int] = {}

    async def expire(run: Run) -> None:
        if dry_run:
            doomed[run.id] = run.events_bytes
            report.runs += 1
            report.run_ids.append(run.id)
            report.bytes_before += run.events_bytes
        else:
            await _expire_one(manager, run, report)
        tally.done(run)

    if older_than is not None:
        async for page in _ended_before(manager, older_than, STORED):
            tally.found(len(page))
            for run in page:
                await expire(run)

    if keep_per_configuration is not None:
        keep = keep_per_configuration

        def beyond(last: Run | None) -> Awaitable[list[Run]]:
            # keyset by id: expiring rows of this ranking while paging only removes
            # runs ranked beyond ``keep``, so the N newest -- and the pages -- stay put
            return manager.repo.runs_beyond_per_configuration(
                keep, log_states=STORED, limit=RANKED_PAGE, after_id=last.id if last else None
            )

        async for page in _paged(beyond, RANKED_PAGE):
            fresh = [run for run in page if run.id not in doomed]
            tally.found(len(fresh))
            for run in fresh:
                await expire(run)

    if max_bytes is not None:
        total = await manager.repo.log_bytes_total(STORED) - sum(doomed.values())

        def oldest(last: Run | None) -> Awaitable[list[Run]]:
            after = (last.completed_at, last.id) if last and last.completed_at else None
            return manager.repo.ended_runs_by_age(log_states=STORED, limit=PAGE, after=after)

        async with contextlib.aclosing(_paged(oldest, PAGE)) as pages:
            async for page in pages:
                if total <= max_bytes:
                    break
                chosen: list[Run] = []
                for run in page:
                    if total <= max_bytes:
                        break
                    if run.id in doomed:
                        continue
                    total -= run.events_bytes
                    chosen.append(run)
                tally.found(len(chosen))
                for run in chosen:
                    await expire(run)
    if not dry_run:
        # bodies expired earlier (by this pass with no delay, or by any pass) whose
        # delay has passed: a pass from the CLI frees them even with no server running
        try:
            await manager.delete_due_bodies()
        except StorageError as exc:
            # the runs above are expired already (410 at once): the report says so, and
            # that their bodies wait in the queue for the next pass or the repair loop
            # (once, the pass ended in an error alone and its report was lost)
            report.errors.append(
                f"expired log bodies are still stored, queued for deletion by the next "
                f"pass or the repair loop: {exc.message}"
            )
    _count(report)
    return report


async def _expire_one(manager: RunManager, run: Run, report: Report) -> None:
    freed = await _attempt(run, report, lambda: manager.expire_run(run))
    if freed is None:
        return  # failed, skipped, live, or already expired by another pass
    report.runs += 1
    report.run_ids.append(run.id)
    report.bytes_before += freed


# ---------------------------------------------------------------------------
# reindex


async def reindex(manager: RunManager, *, progress: Progress | None = None) -> Report:
    """Rebuild every run row and summary from the logs in storage (streamed: one log at a time).

    A run another process is compacting or expiring right now is skipped (its
    row is being brought up to date by that process). A run whose log cannot be
    rebuilt -- any error, expected or not -- is listed in ``errors`` and the pass
    goes on with the next log (the CLI then exits 1).
    """
    report = Report(action="reindex", dry_run=False)
    tally = _Tally(progress)
    async for ref in manager.log.scan():
        tally.found(1)
        try:
            # the search index of a compressed log is rebuilt from its frames too (issue 16)
            run = await manager.reindex_run(ref.workspace_id, ref.run_id)
        except MaintenanceBusy:
            report.skipped += 1
            tally.done(None)
            continue
        except RuneventsError as exc:
            report.errors.append(f"{ref.run_id}: {exc.message}")
            tally.done(None)
            continue
        except Exception as exc:  # one run's log must not stop the others
            # A log no rule foresaw (a bug, a hand-made line) fails this run alone: it is
            # reported (the CLI exits 1) and its row left as it was; the rest is rebuilt.
            log.exception("reindex: run %s could not be rebuilt from its log", ref.run_id)
            report.errors.append(
                f"{ref.run_id}: could not be rebuilt from its log: {type(exc).__name__}: {exc}"
            )
            tally.done(None)
            continue
        report.runs += 1
        report.run_ids.append(run.id)
        report.bytes_before += run.events_bytes
        report.bytes_after += run.events_bytes
        tally.done(run)
    return report


# ---------------------------------------------------------------------------
# the server's schedule


async def scheduled_pass(manager: RunManager) -> list[Report]:
    """What the server runs every ``maintenance_interval_seconds``.

    Retention first: a body about to be deleted is not worth compressing.
    """
    settings = manager.settings
    reports = []
    if (
        settings.retention_after is not None
        or settings.retention_keep_per_configuration is not None
        or settings.retention_max_bytes is not None
    ):
        reports.append(
            await retention(
                manager,
                parse_duration(settings.retention_after) if settings.retention_after else None,
                keep_per_configuration=settings.retention_keep_per_configuration,
                max_bytes=settings.retention_max_bytes,
            )
        )
    if settings.compact_after is not None:
        reports.append(await compact(manager, parse_duration(settings.compact_after)))
    # keys of runs compacted or expired early (compact_after < 24 h) go once a retry
    # of their last batch has had its 24 h (contract 6)
    from runevents.models import utcnow
    from runevents.upkeep import IDEMPOTENCY_KEEP

    pruned = await manager.repo.prune_idempotency(utcnow() - IDEMPOTENCY_KEEP)
    if pruned:
        log.info("idempotency keys of old runs dropped: %d", pruned)
    for report in reports:
        # nobody watches the server's passes: what they did, and what failed, goes to the log
        if report.runs or report.recovered:
            log.info(
                "%s: %d run(s), %d bytes -> %d bytes (%d recovered, %d skipped)",
                report.action,
                report.runs,
                report.bytes_before,
                report.bytes_after,
                len(report.recovered),
                report.skipped,
            )
        for error in report.errors:
            log.warning("%s: %s", report.action, error)
    return reports
