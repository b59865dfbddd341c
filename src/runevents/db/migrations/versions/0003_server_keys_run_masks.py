"""Deployment keys (session signing, mask sealing) and the masks of external runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 00:00:00

Self-contained like 0001: it keeps creating exactly these tables whatever
``runevents.db.tables`` becomes later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create server_keys and run_masks."""
    op.create_table(
        "server_keys",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_server_keys"),
    )
    op.create_table(
        "run_masks",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_run_masks_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "digest", name="pk_run_masks"),
    )


def downgrade() -> None:
    """Drop what upgrade created."""
    op.drop_table("run_masks")
    op.drop_table("server_keys")
