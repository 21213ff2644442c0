"""add users.email_lower, kept equal to lower(email) for the old app's writes

Revision ID: 0002_add_email_lower
Revises: 0001_create_users
Create Date: 2026-01-12 09:00:00

A zdm operation mixed with an ordinary one. zdm operations come first: an ordinary op after them
is retried by a rerun, which skips the already started zdm plan. The existing_* hints describe
`email` (the column read) for a `--sql` run that starts after the revision creating the table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002_add_email_lower"
down_revision: str | None = "0001_create_users"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.zdm_add_column("users", "email_lower", sa.Text(), from_column="email", transform="lower",
                      existing_type=sa.Text(), existing_nullable=False, existing_primary_key=["id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("message", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.zdm_rollback()
    op.drop_table("audit_log")
