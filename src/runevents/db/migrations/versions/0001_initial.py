"""Initial schema: runs and ingest_keys.

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00

Self-contained on purpose: it must keep creating this exact schema even after
``runevents.db.tables`` moves on (later changes get their own revisions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create runs, ingest_keys and their indexes."""
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("workspace_id", sa.String(128), nullable=False),
        sa.Column("configuration_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("external", sa.Boolean(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("options", _json(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("started_at", _ts(), nullable=True),
        sa.Column("completed_at", _ts(), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
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
        sa.Column("lease_expires_at", _ts(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'building', 'running', 'succeeded', 'failed', 'cancelled')",
            name="ck_runs_status",
        ),
        sa.CheckConstraint(
            "log_state IN ('live', 'plain', 'compressed', 'expired')",
            name="ck_runs_log_state",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_list", "runs", ["workspace_id", "created_at", "id"])
    op.create_index(
        "ix_runs_list_configuration",
        "runs",
        ["workspace_id", "configuration_id", "created_at", "id"],
    )
    op.create_index("ix_runs_list_status", "runs", ["workspace_id", "status", "created_at", "id"])
    op.create_index(
        "ix_runs_list_configuration_status",
        "runs",
        ["workspace_id", "configuration_id", "status", "created_at", "id"],
    )
    op.create_index("ix_runs_queue", "runs", ["status", "created_at", "id"])
    op.create_index("ix_runs_lease_expires_at", "runs", ["lease_expires_at"])
    op.create_index("ix_runs_log_state_completed_at", "runs", ["log_state", "completed_at"])

    op.create_table(
        "ingest_keys",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("answer", _json(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_ingest_keys_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_ingest_keys"),
    )


def downgrade() -> None:
    """Drop everything upgrade created."""
    op.drop_table("ingest_keys")
    op.drop_table("runs")
