"""Writer leases with a fencing epoch; idempotency keys bound to their batch.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 00:00:00

- ``runs.writer_owner`` / ``writer_epoch`` / ``writer_expires_at``: the one owner of
  a run's log (``ownership.py``). Taking it bumps the epoch, so a process that
  lost it is fenced out of every later write and row update.
- ``ingest_keys.body_sha256``: a key names one batch (other bytes: 422);
  ``first_event_id``: the log is the judge of whether the batch is in it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the writer lease columns and the idempotency proof columns."""
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("writer_owner", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("writer_epoch", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("writer_expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("ingest_keys") as batch:
        batch.add_column(sa.Column("body_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("first_event_id", sa.String(128), nullable=True))


def downgrade() -> None:
    """Drop them again."""
    with op.batch_alter_table("ingest_keys") as batch:
        batch.drop_column("first_event_id")
        batch.drop_column("body_sha256")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("writer_expires_at")
        batch.drop_column("writer_epoch")
        batch.drop_column("writer_owner")
