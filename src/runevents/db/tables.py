"""The schema: one compact row per run, ingest idempotency keys, deployment keys, run masks.

The database never holds events (design doc 4.2): a run's row has the same
columns whether its log has ten events or a million; ``summary_json`` holds
counts, never lists of events, and ``last_console_snippet`` is capped at
:data:`SNIPPET_MAX_BYTES` by the repository.

Alembic's ``versions/`` must describe exactly this metadata
(``tests/migration/test_migrations.py`` compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

#: the run row's bounded tail of console output (contract 2.1: at most 4 KiB)
SNIPPET_MAX_BYTES = 4096

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes in and out, on both backends.

    Postgres stores ``timestamptz``. SQLite has no datetime type: values are
    stored as naive UTC text with fixed-width microseconds, so comparing the
    text orders by time (the runs-list keyset depends on that).
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # internal values are always aware; a naive one is a programming error
            raise ValueError("naive datetime given to the database; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _json() -> sa.types.TypeEngine[Any]:
    # none_as_null: Python None is SQL NULL, not the JSON literal 'null'
    return sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


STATUS_VALUES = ("queued", "building", "running", "succeeded", "failed", "cancelled")
LOG_STATE_VALUES = ("live", "plain", "compressed", "expired")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("workspace_id", sa.String(128), nullable=False),
    sa.Column("configuration_id", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("external", sa.Boolean(), nullable=False),
    sa.Column("mode", sa.Text(), nullable=False),
    sa.Column("options", _json(), nullable=False),
    sa.Column("exit_code", sa.Integer(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("completed_at", UTCDateTime(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("events_path", sa.Text(), nullable=True),
    sa.Column("output_paths", _json(), nullable=False),
    sa.Column("summary_json", _json(), nullable=True),
    sa.Column("failure", _json(), nullable=True),
    sa.Column("input_file_count", sa.Integer(), nullable=True),
    sa.Column("table_count", sa.Integer(), nullable=True),
    sa.Column("row_count", sa.BigInteger(), nullable=True),
    sa.Column("max_validation_severity", sa.Text(), nullable=True),
    sa.Column("last_console_snippet", sa.Text(), nullable=True),
    sa.Column("logging_degraded", sa.Boolean(), nullable=False),
    sa.Column("event_count", sa.BigInteger(), nullable=False),
    sa.Column("events_bytes", sa.BigInteger(), nullable=False),
    sa.Column("log_state", sa.String(16), nullable=False),
    sa.Column("cancel_requested", sa.Boolean(), nullable=False),
    sa.Column("lease_owner", sa.Text(), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
    # the one owner of the run's log (ownership.py); the epoch fences out earlier owners
    sa.Column("writer_owner", sa.Text(), nullable=True),
    sa.Column("writer_epoch", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("writer_expires_at", UTCDateTime(), nullable=True),
    sa.CheckConstraint(_in("status", STATUS_VALUES), name="status"),
    sa.CheckConstraint(_in("log_state", LOG_STATE_VALUES), name="log_state"),
    # runs list (newest first): unfiltered, by configuration, by status, by both.
    # Ascending on purpose: a b-tree is read backwards for ORDER BY created_at DESC,
    # id DESC as cheaply as forwards, and SQLite's reflection cannot see DESC (so
    # Alembic would report DESC indexes as changed forever).
    sa.Index("ix_runs_list", "workspace_id", "created_at", "id"),
    sa.Index("ix_runs_list_configuration", "workspace_id", "configuration_id", "created_at", "id"),
    sa.Index("ix_runs_list_status", "workspace_id", "status", "created_at", "id"),
    sa.Index(
        "ix_runs_list_configuration_status",
        "workspace_id",
        "configuration_id",
        "status",
        "created_at",
        "id",
    ),
    # worker queue: oldest queued first
    sa.Index("ix_runs_queue", "status", "created_at", "id"),
    # reaper: expired leases
    sa.Index("ix_runs_lease_expires_at", "lease_expires_at"),
    # maintenance: compaction/retention by age and log state
    sa.Index("ix_runs_log_state_completed_at", "log_state", "completed_at"),
)

ingest_keys = sa.Table(
    "ingest_keys",
    metadata,
    sa.Column(
        "run_id",
        sa.String(64),
        sa.ForeignKey("runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("answer", _json(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # SHA-256 of the request body: the same key with other bytes is refused (422)
    sa.Column("body_sha256", sa.String(64), nullable=True),
    # event_id of the batch's first event: the log proves the batch is in it
    sa.Column("first_event_id", sa.String(128), nullable=True),
)

# Keys every process of a deployment shares (contract 7: a browser session one
# process issued is accepted by every process on the same database). One row
# per purpose, created once by whichever process needs it first.
server_keys = sa.Table(
    "server_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    #: hex of the random key
    sa.Column("value", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

# The ``::add-mask::`` values of external runs (contract 11), so that the
# replica that gets a producer's next batch masks them too. Stored sealed
# (``runevents.secretbox``), never as plain text; ``digest`` (a keyed hash of
# the value) makes adding the same value twice, from two replicas, a no-op.
run_masks = sa.Table(
    "run_masks",
    metadata,
    sa.Column(
        "run_id",
        sa.String(64),
        sa.ForeignKey("runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("sealed", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

# The shared live tier (contract 10, several machines only): the committed bytes
# of live runs, one row per durable write of the run's writer, fenced by the
# writer epoch; deleted once the sealed log is verified in object storage.
live_chunks = sa.Table(
    "live_chunks",
    metadata,
    sa.Column(
        "run_id",
        sa.String(64),
        sa.ForeignKey("runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("first_sequence", sa.BigInteger(), nullable=False),
    sa.Column("last_sequence", sa.BigInteger(), nullable=False),
    #: byte offset of ``data`` in the run's log (the log is the chunks in this order)
    sa.Column("start_offset", sa.BigInteger(), primary_key=True),
    sa.Column("epoch", sa.BigInteger(), nullable=False),
    #: bytes of the log this chunk holds (``data`` is them as one zstd frame)
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("data", sa.LargeBinary(), nullable=False),
)

# Where other replicas reach a process (owner id -> URL): a batch for a run
# whose writer another live replica holds is forwarded there.
replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("owner", sa.String(128), primary_key=True),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("seen_at", UTCDateTime(), nullable=False),
)

# Log bodies retention has expired and that are deleted later (``upkeep.py``):
# the row says ``expired`` at once, so no new read starts, while a read that
# started before goes on to its end (contract 10: no read fails meanwhile; an
# object store keeps no unlinked-but-open file). Kafka defers deleting a
# segment the same way (``log.segment.delete.delay.ms``). The ref's ids are
# kept here, not joined from ``runs``: the body is found by them alone.
log_deletions = sa.Table(
    "log_deletions",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("workspace_id", sa.String(128), nullable=False),
    sa.Column("configuration_id", sa.String(128), nullable=False),
    #: when retention expired it: the body goes ``delete_delay_seconds`` later
    sa.Column("expired_at", UTCDateTime(), nullable=False, index=True),
)

# Browser sessions signed out before their cookie expired (contract 7: ``DELETE
# /api/v1/session`` signs out). A cookie is self-contained (signed, with its
# expiry), so without this row a copy of it would stay good until it expired.
# Kept until that expiry; every process of the deployment checks it.
revoked_sessions = sa.Table(
    "revoked_sessions",
    metadata,
    #: the random id the cookie carries
    sa.Column("session_id", sa.String(64), primary_key=True),
    #: the cookie's own expiry: past it the cookie is refused anyway, and the row can go
    sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
)
