"""Browser sessions signed out before their cookie expired.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 21:45:00

``revoked_sessions`` holds the ids of sessions signed out with ``DELETE
/api/v1/session``: a copy of the cookie is refused by every process from then
on, not only when it expires (contract 7). A row goes once the cookie's own
expiry has passed.

Self-contained like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create revoked_sessions."""
    op.create_table(
        "revoked_sessions",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name="pk_revoked_sessions"),
    )
    op.create_index("ix_revoked_sessions_expires_at", "revoked_sessions", ["expires_at"])


def downgrade() -> None:
    """Drop what upgrade created."""
    op.drop_index("ix_revoked_sessions_expires_at", table_name="revoked_sessions")
    op.drop_table("revoked_sessions")
