"""The shared live tier (several machines): live log chunks and the replica registry.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 22:20:00

``live_chunks`` holds the committed bytes of *live* runs only, when the
deployment runs on several machines (contract section 10): each durable write
of a run's writer is one row (whole NDJSON lines, first and last sequence, the
byte offset it starts at, its size, the writer epoch that wrote it; ``data`` is
one zstd frame: a fifth of the bytes to write, and five times faster to commit). Rows are deleted
once the sealed log is verified in object storage, so the table stays bounded.
The single-machine default never writes to it.

``replicas`` maps a process's owner id (``ownership.new_owner_id``) to the URL
other replicas reach it at, so a batch for a run owned elsewhere is forwarded
to its owner.

Self-contained like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create live_chunks and replicas."""
    op.create_table(
        "live_chunks",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("first_sequence", sa.BigInteger(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("start_offset", sa.BigInteger(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_live_chunks_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "start_offset", name="pk_live_chunks"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # the chunks are zstd frames already: no second (pglz) compression attempt
        op.execute("ALTER TABLE live_chunks ALTER COLUMN data SET STORAGE EXTERNAL")
    op.create_table(
        "replicas",
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", name="pk_replicas"),
    )


def downgrade() -> None:
    """Drop what upgrade created."""
    op.drop_table("replicas")
    op.drop_table("live_chunks")
