"""Settings: the only module that reads the environment.

Every knob is a ``RUNEVENTS_*`` environment variable and most are also CLI
flags (``cli.py`` builds a :class:`Settings` from both, flags winning). Nothing
else in the package calls ``os.environ``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from runevents.exceptions import InvalidInput

FsyncMode = Literal["never", "flush", "batch"]
LogFormat = Literal["text", "json"]

_DURATION_RE = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """Parse ``0s``, ``90m``, ``36h``, ``7d``, ``1h30m`` into a timedelta (InvalidInput if bad)."""
    text = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m["n"]) * _UNITS[m["unit"]]
        pos = m.end()
    if pos != len(text) or not text:
        raise InvalidInput(f"invalid duration {text!r}: use forms like 0s, 90m, 36h, 7d")
    return timedelta(seconds=total)


class Settings(BaseSettings):
    """Server, worker and maintenance settings."""

    model_config = SettingsConfigDict(env_prefix="RUNEVENTS_", frozen=True, extra="ignore")

    # -- where things live ------------------------------------------------
    #: local data directory: embedded SQLite database, local logs, build caches
    data_dir: Path = Path("runevents-data")
    #: SQLAlchemy-style URL; default sqlite:///{data_dir}/runevents.db
    database_url: str | None = None
    #: file:///path or s3://bucket/prefix; default file://{data_dir}
    storage_url: str | None = None
    #: the S3 endpoint of an ``s3://`` storage URL, from the usual AWS variables (not
    #: RUNEVENTS_*). Read here, not only by obstore, so that an ``http://`` endpoint (a
    #: SeaweedFS or MinIO on a private network) works with no AWS_ALLOW_HTTP (contract 10)
    s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"),
    )

    # -- HTTP ---------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    #: TOML file of [[token]] entries (hashes only); none = open mode (loopback only)
    tokens_file: Path | None = None
    #: TOML file of configurations
    config_file: Path | None = None
    #: also register the bundled demo configuration
    demo: bool = False
    #: with ``demo``: start one demo run at start-up (``serve --demo`` only, not workers)
    start_demo_run: bool = False
    #: with ``start_demo_run``: start another demo run this often while none is live,
    #: so the demo always has a live run to watch (seconds; 0 = only the first one)
    demo_run_interval_seconds: float = Field(default=60.0, ge=0)
    #: key that signs browser session cookies; None: generated once and kept in the
    #: database, shared by every process of the deployment
    session_secret: str | None = None
    #: proxies trusted for X-Forwarded-Proto/-For (comma-separated IPs or networks, or "*"),
    #: so the session cookie is Secure behind a TLS-terminating proxy (uvicorn's
    #: forwarded-allow-ips)
    forwarded_allow_ips: str = "127.0.0.1"
    #: a browser session (cookie) expires this long after sign-in (seconds)
    session_ttl_seconds: float = Field(default=7 * 86400.0, gt=0)
    #: where the other replicas of a deployment reach this ``serve`` process (an ingest
    #: batch for a run whose writer is here is forwarded to it): ``http://host:port``.
    #: None: derived from ``host``/``port``, a wildcard bind advertising this machine's
    #: own address (``runevents.replicas.default_advertise_url``)
    advertise_url: str | None = None
    #: an SSE client that does not take a chunk within this long is dropped (seconds)
    sse_send_timeout_seconds: float = Field(default=30.0, gt=0)

    # -- the write path -----------------------------------------------------
    #: flush the append buffer after this many events...
    flush_events: int = Field(default=512, ge=1)
    #: ...or after this many milliseconds, whichever comes first
    flush_interval_ms: int = Field(default=50, ge=1)
    #: while this process has live followers on a run, flush at most this late (ms)
    live_flush_interval_ms: int = Field(default=20, ge=1)
    #: flush (default, durable): bytes are fsynced before they are acknowledged or
    #: visible to any reader -- a 200 means on stable storage (contract 6); concurrent
    #: batches share fsyncs. never (relaxed): page cache only, fsync at seal; a power
    #: loss can lose acknowledged batches (answers then say ``Durability: relaxed``).
    #: batch: an old name for flush.
    fsync: FsyncMode = "flush"
    #: one event at most (bytes of its NDJSON line)
    max_event_bytes: int = Field(default=1024 * 1024, ge=1024)
    #: one ingest request body at most (bytes)
    max_batch_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: ingest bodies one process reads and decodes at once, in bytes (``api/ingest_budget.py``:
    #: memory stays bounded however many producers send; a batch waits for room, then 503)
    max_inflight_batch_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    #: how long a batch waits for room in that budget before its 503 (seconds)
    inflight_wait_seconds: float = Field(default=10.0, ge=0)
    #: console lines longer than this are cut, with a visible marker (bytes)
    max_line_bytes: int = Field(default=64 * 1024, ge=64)

    #: a Postgres statement with no answer for this long fails with 503 instead of
    #: waiting for ever on a connection whose packets are dropped (seconds)
    database_timeout_seconds: float = Field(default=30.0, gt=0)

    #: the writer lease of a run's log (ownership.py): a holder that stops renewing
    #: loses it after this long, and another process may take the run (seconds)
    writer_lease_seconds: float = Field(default=8.0, gt=0)
    #: how often the repair loop looks for runs a crash left half done (seconds; 0 = only
    #: at start-up)
    repair_interval_seconds: float = Field(default=30.0, ge=0)

    # -- several machines (contract 10) -------------------------------------------
    #: the shared live tier: every durable write of a live run is committed to the
    #: database (``live_chunks``), so any replica serves it and none holds the only copy.
    #: auto: on when the database is Postgres and the storage remote (s3://), the
    #: several-machines layout; on forces it. off is refused with that layout (the
    #: settings do not validate, so no process starts): an acknowledged batch would
    #: then be on one machine's disk only (contract 10: "on several machines no
    #: setting weakens this"). One machine uses a local (file://) log store instead.
    live_tier: Literal["auto", "on", "off"] = "auto"

    # -- the tail path --------------------------------------------------------
    #: SSE keepalive comment interval while idle (seconds)
    keepalive_seconds: float = Field(default=15.0, gt=0)
    #: cross-process fallback: how often a tailer re-checks the log (ms)
    poll_interval_ms: int = Field(default=250, ge=10)

    # -- workers ---------------------------------------------------------------
    #: runs executed at once by the embedded/standalone worker (0 = no embedded worker)
    worker_concurrency: int = Field(default=4, ge=0)
    #: a worker that stops heart-beating for this long loses its runs (seconds)
    lease_seconds: float = Field(default=30.0, gt=0)
    #: SIGTERM -> SIGKILL grace period on cancel/timeout (seconds)
    kill_grace_seconds: float = Field(default=5.0, ge=0)
    #: an external run whose producer sends nothing for this long is failed
    #: (``producer_timeout``), as CI systems time out a lost agent (seconds; 0 = never)
    external_idle_timeout_seconds: float = Field(default=3600.0, ge=0)
    #: a process lets go of an external run's writer after this long without a
    #: batch, so another replica can take the producer's next one (seconds; 0 = keep)
    external_writer_release_seconds: float = Field(default=5.0, ge=0)

    # -- maintenance ---------------------------------------------------------------
    #: compact finished logs older than this (e.g. "1d"); None disables scheduled compaction
    compact_after: str | None = "1d"
    #: delete log bodies older than this (e.g. "30d"); None keeps them forever
    retention_after: str | None = None
    #: keep at most this many log bodies per configuration (None = no limit)
    retention_keep_per_configuration: int | None = None
    #: keep at most this many bytes of log bodies in total (None = no limit)
    retention_max_bytes: int | None = None
    #: an expired body is deleted this long after retention expires it, so a read that
    #: started before goes on to its end (an object store cannot keep a deleted object
    #: open; Kafka's log.segment.delete.delay.ms). New reads get 410 at once (seconds)
    delete_delay_seconds: float = Field(default=60.0, ge=0)
    #: how often the server runs compaction/retention (seconds; 0 disables)
    maintenance_interval_seconds: float = Field(default=3600.0, ge=0)

    # -- operations ----------------------------------------------------------------
    #: serve ``GET /metrics`` and move the counters (off: every hook returns at once)
    metrics_enabled: bool = True
    #: database-derived gauges (runs by status, queue age, leases) are recounted at
    #: most this often, however often Prometheus scrapes (seconds)
    metrics_refresh_seconds: float = Field(default=10.0, ge=0)
    #: ``GET /api/v1/ready`` gives the database and the log store this long to answer (seconds)
    ready_timeout_seconds: float = Field(default=2.0, gt=0)
    #: the server's own log lines: ``text`` (human) or ``json`` (one object per line)
    log_format: LogFormat = "text"
    #: the server's log level
    log_level: str = "info"

    @field_validator("compact_after", "retention_after", mode="before")
    @classmethod
    def _check_duration(cls, value: object) -> object:
        # "", "off" and "none" switch the policy off (so an env var can disable it)
        if isinstance(value, str) and value.strip().lower() in {"", "off", "none"}:
            return None
        if isinstance(value, str):
            try:
                parse_duration(value)
            except InvalidInput as exc:
                raise ValueError(exc.message) from exc
        return value

    @field_validator("advertise_url", mode="before")
    @classmethod
    def _check_advertise_url(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().rstrip("/") or None
        if isinstance(value, str):
            parts = urlsplit(value)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
            if parts.path or parts.query:
                raise ValueError(f"{value!r}: give only scheme, host and port (no path)")
        return value

    @model_validator(mode="after")
    def _check_live_tier(self) -> Settings:
        # contract 10: with a shared database and a shared object store (the several-
        # machines layout) no setting may leave an acknowledged batch on one disk only
        if self.live_tier == "off" and self.shared_stores:
            raise PydanticCustomError(
                "live_tier_off_with_shared_stores",
                "RUNEVENTS_LIVE_TIER=off is refused with a postgresql:// database and a "
                "shared object store ({storage}): that is the several-machines layout, "
                "where a live run's events must be committed to the shared live tier, or "
                "an acknowledged batch would be on this machine's disk only (lost with it, "
                "unseen by the other replicas; contract 10). Leave RUNEVENTS_LIVE_TIER "
                "unset (auto) or set it to on; on a single machine, use a local log store "
                "(--storage-url file:///path, or the default in --data-dir).",
                {"storage": self.resolved_storage_url.split("://", 1)[0] + "://"},
            )
        return self

    @property
    def shared_stores(self) -> bool:
        """A Postgres database and a remote (s3://) log store: the several-machines layout."""
        database = self.resolved_database_url.split(":", 1)[0]
        storage = self.resolved_storage_url.split(":", 1)[0]
        return database.startswith("postgres") and storage not in ("file", "memory")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'runevents.db').resolve()}"

    @property
    def live_tier_enabled(self) -> bool:
        """Whether this process commits live writes to the shared live tier."""
        database = self.resolved_database_url.split(":", 1)[0]
        if self.live_tier != "auto":
            if self.live_tier == "on" and not database.startswith("postgres"):
                raise ValueError("live_tier=on needs a postgresql:// database (contract 10)")
            # off never passes validation with shared stores (_check_live_tier)
            return self.live_tier == "on"
        return self.shared_stores

    @property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir.resolve()).as_uri()


class ClientSettings(BaseSettings):
    """Settings of the CLI's client commands (they talk to a running server over HTTP)."""

    model_config = SettingsConfigDict(env_prefix="RUNEVENTS_", frozen=True, extra="ignore")

    #: base URL of the server
    server: str = "http://127.0.0.1:8000"
    #: bearer token (needed when the server has --tokens)
    token: str | None = None
