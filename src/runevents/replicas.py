"""This serving process in the replica registry: where the others reach it.

Several ``runevents serve`` replicas share the database; a producer's batch
may reach any of them, but a run's writer (its fold, its writer state) lives
in the one process holding the writer lease. So a replica that meets a live
lease of another forwards the batch to it (``api/forward.py``), at the URL the
owner announced here.

:class:`Presence` announces ``owner id -> advertise URL`` at start-up,
refreshes ``seen_at`` every :func:`refresh_interval` and removes the row at a
clean shutdown. Only ``serve`` announces itself: a standalone worker has no
HTTP (and executed runs take no producer batches).

The advertised URL (``RUNEVENTS_ADVERTISE_URL`` / ``--advertise-url``) must be
reachable from the *other replicas*, not from users. Without it,
:func:`default_advertise_url` derives it from the bind address:

* a specific address (``127.0.0.1``, ``10.0.0.5``, ``::1``): that address;
* a wildcard (``0.0.0.0``, ``::``): this machine's own address as other
  machines see it -- what the host name resolves to, else the source address
  of the default route -- because ``127.0.0.1`` would send another machine's
  replica to itself. It falls back to ``127.0.0.1`` (one machine) with a
  warning. Behind NAT, or with TLS between replicas, set it explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from runevents.db.replicas import ReplicaRepository
from runevents.exceptions import StorageError

log = logging.getLogger(__name__)

WILDCARDS = frozenset({"0.0.0.0", "::", ""})
#: a replica not seen for this many refresh intervals is treated as gone
STALE_INTERVALS = 3


def refresh_interval(writer_lease_seconds: float) -> float:
    """How often a replica refreshes ``seen_at``: half a writer lease (at least 1 s).

    A replica holding a live lease renews it every quarter lease, so a live
    owner's row is never older than a few intervals.
    """
    return max(1.0, writer_lease_seconds / 2)


def stale_after(writer_lease_seconds: float) -> float:
    """A row older than this (seconds) belongs to a process that is gone."""
    return STALE_INTERVALS * refresh_interval(writer_lease_seconds)


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def _routable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_link_local)


def machine_address() -> str | None:
    """This machine's address as other machines reach it, if one can be found.

    The host name's address first (containers and most VMs map it to the
    interface address in /etc/hosts), then the source address the kernel picks
    for the default route (a UDP ``connect`` sends nothing).
    """
    with contextlib.suppress(OSError):
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            if _routable(str(sockaddr[0])):
                return str(sockaddr[0])
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere, nothing sent
        address = str(probe.getsockname()[0])
        if _routable(address):
            return address
    return None


def default_advertise_url(host: str, port: int) -> str:
    """The URL other replicas reach a server bound to ``host:port`` at (module doc)."""
    if host.strip("[]") not in WILDCARDS:
        return _url(host.strip("[]"), port)
    address = machine_address()
    if address is None:
        log.warning(
            "bound to %s but found no address other machines reach this one at: advertising "
            "127.0.0.1 (replicas on other machines cannot forward batches here; set "
            "RUNEVENTS_ADVERTISE_URL)",
            host or "0.0.0.0",
        )
        return _url("127.0.0.1", port)
    return _url(address, port)


class Presence:
    """This process's row in the replica registry, kept fresh while it serves."""

    def __init__(
        self, repo: ReplicaRepository, owner: str, url: str, *, writer_lease_seconds: float
    ) -> None:
        self.repo = repo
        self.owner = owner
        self.url = url.rstrip("/")
        self.interval = refresh_interval(writer_lease_seconds)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Announce this process (and purge long-dead rows), then refresh in the background.

        A database that is away at start-up is not fatal: the refresh loop
        announces it later (until then other replicas answer 503 for its runs).
        """
        try:
            await self.repo.announce(self.owner, self.url, purge=True)
        except StorageError as exc:
            log.warning("could not announce this replica (%s); will retry", exc)
        log.info("replica %s reachable at %s", self.owner, self.url)
        self._task = asyncio.create_task(self._refresh_forever(), name="replica presence")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.repo.announce(self.owner, self.url)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("refreshing this replica's registry row failed; will retry")

    async def close(self) -> None:
        """Stop refreshing and remove the row: from now on peers do not forward here."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.repo.remove(self.owner)
        except StorageError as exc:
            log.warning("could not remove this replica's registry row (%s)", exc)
