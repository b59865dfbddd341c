"""Deferred deletion of expired log bodies.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 16:10:00

``log_deletions`` holds the bodies retention has expired and not yet deleted:
the run's row says ``expired`` at once, the body goes ``delete_delay_seconds``
after ``expired_at``, so a read that started before the expiry is never cut (contract 10).

Self-contained like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create log_deletions."""
    op.create_table(
        "log_deletions",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("workspace_id", sa.String(128), nullable=False),
        sa.Column("configuration_id", sa.String(128), nullable=False),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_log_deletions"),
    )
    op.create_index("ix_log_deletions_expired_at", "log_deletions", ["expired_at"])


def downgrade() -> None:
    """Drop what upgrade created."""
    op.drop_index("ix_log_deletions_expired_at", table_name="log_deletions")
    op.drop_table("log_deletions")
