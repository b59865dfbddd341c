"""Who may write a run's log: writer leases in the database, with a fencing epoch.

The owner of a run's log is recorded in its row (``writer_owner``,
``writer_epoch``, ``writer_expires_at``). Taking the lease bumps the epoch;
renewing or giving it up is conditional on ``(owner, epoch)``, and so is the
completion's row update (``RunRepository.finish_owned``). A process that lost
the lease -- paused past its expiry while another took over -- learns it the
next time it tries to write: :meth:`Lease.ensure` runs before every write
(``RunWriter.fence``) and raises :class:`WriterFenced`, and the writer never
writes again.

``ensure`` is cheap on the hot path: a lease is trusted locally until a
monotonic deadline a safety margin before the expiry the database holds (the
time of the renewal's *start* plus the lease, minus the margin), and renewed
synchronously only past it. One statement renews every lease of this process
(:meth:`Ownership.renew_all`, every ``lease_seconds / 4``).

On one machine the writer's ``flock`` is the local guard: nobody on the host
takes a run whose writer is alive, even a stopped one, because the lock is
tried *before* the lease. Across machines the lease and its epoch are the
arbiter (the several-machines design builds on it; see ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field

from runevents import ids, metrics
from runevents.db.repository import RunRepository
from runevents.exceptions import WriterFenced, WriterMoving
from runevents.models import utcnow

log = logging.getLogger(__name__)

#: a lease is trusted locally until this fraction of it has passed since its renewal started
TRUST_FRACTION = 0.75


def new_owner_id() -> str:
    """This process's name in leases: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{ids.new_ulid()[-8:]}"


@dataclass(eq=False)
class Lease:
    """One run's writer lease held by this process."""

    run_id: str
    epoch: int
    ownership: Ownership
    #: loop time until which the lease is trusted without asking the database
    trusted_until: float
    lost: bool = False
    _renewing: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ensure(self) -> None:
        """Prove ownership before a write: renew if the local deadline passed.

        Raises WriterFenced once another process took the lease.
        """
        if self.lost:
            raise WriterFenced(f"run {self.run_id}: this process lost its writer lease")
        loop = asyncio.get_running_loop()
        if loop.time() < self.trusted_until:
            return
        async with self._renewing:
            if self.lost:
                raise WriterFenced(f"run {self.run_id}: this process lost its writer lease")
            if loop.time() < self.trusted_until:
                return  # renewed by whoever held the lock before us
            started = loop.time()
            ok = await self.ownership.repo.renew_writer(
                self.run_id, self.ownership.owner, self.epoch, self.ownership.lease_seconds
            )
            if not ok:
                self.mark_lost()
                raise WriterFenced(f"run {self.run_id}: another process took its writer lease")
            self.trusted_until = started + self.ownership.trust_seconds

    def mark_lost(self) -> None:
        """The database says another process holds the run now: never write again."""
        if not self.lost:
            self.lost = True
            metrics.writer_lease_lost()
            log.warning("run %s: writer lease lost (epoch %d)", self.run_id, self.epoch)

    async def release(self) -> None:
        """Give the lease up (another process may take the run at once)."""
        self.ownership.forget(self)
        if not self.lost:
            await self.ownership.repo.release_writer(self.run_id, self.ownership.owner, self.epoch)


class Ownership:
    """This process's writer leases."""

    def __init__(self, repo: RunRepository, *, owner: str | None = None, lease_seconds: float):
        self.repo = repo
        self.owner = owner or new_owner_id()
        self.lease_seconds = lease_seconds
        self.trust_seconds = lease_seconds * TRUST_FRACTION
        self._leases: dict[str, Lease] = {}

    def held(self, run_id: str) -> Lease | None:
        """The lease this process holds on ``run_id``, if any."""
        return self._leases.get(run_id)

    async def acquire(self, run_id: str) -> Lease:
        """Take the run's writer lease (bumping its epoch); WriterMoving if another holds it."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        epoch = await self.repo.acquire_writer(run_id, self.owner, self.lease_seconds)
        if epoch is None:
            # name the holder (a second, rare read): the ingest route forwards the batch
            # to it (api/forward.py). It may have let go meanwhile: then None.
            holder, _, expires = await self.repo.writer_of(run_id)
            if expires is None or expires < utcnow() or holder == self.owner:
                holder = None
            raise WriterMoving(
                f"another process holds the writer of run {run_id}; retry shortly",
                owner=holder,
            )
        lease = Lease(run_id, epoch, self, started + self.trust_seconds)
        self._leases[run_id] = lease
        return lease

    def adopt(self, run_id: str, epoch: int) -> Lease:
        """A lease this process got another way (the INSERT of a new run's row)."""
        loop = asyncio.get_running_loop()
        lease = Lease(run_id, epoch, self, loop.time() + self.trust_seconds)
        self._leases[run_id] = lease
        return lease

    def forget(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (released or lost)."""
        if self._leases.get(lease.run_id) is lease:
            del self._leases[lease.run_id]

    async def renew_all(self) -> None:
        """Renew every lease of this process in one statement; mark the ones taken over lost."""
        if not self._leases:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        kept = await self.repo.renew_writers(self.owner, self.lease_seconds)
        for run_id, lease in list(self._leases.items()):
            if run_id in kept:
                lease.trusted_until = max(lease.trusted_until, started + self.trust_seconds)
            elif lease.trusted_until <= started:
                # not ours in the database any more (a renewal by the row is exact:
                # a lease we still trust was acquired after the statement began)
                lease.mark_lost()
                self.forget(lease)

    async def run(self) -> None:
        """Renew leases forever (the app's background task)."""
        interval = max(0.2, self.lease_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                # the database may be away: leases are re-checked before each write
                log.exception("renewing writer leases failed; will retry")
