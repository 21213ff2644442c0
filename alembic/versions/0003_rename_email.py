"""rename users.email to email_address

Revision ID: 0003_rename_email
Revises: 0002_add_email_lower
Create Date: 2026-01-19 09:00:00

While zdm plan 0003_rename_email is MIGRATING, the old app writes `email` and the new one
`email_address`; triggers keep both equal. Contract drops `email`. The existing_* hints are
read only offline, by a `--sql` run that starts after the revision creating the table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003_rename_email"
down_revision: str | None = "0002_add_email_lower"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.zdm_rename_column("users", "email", "email_address",
                         existing_type=sa.Text(), existing_nullable=False, existing_primary_key=["id"])


def downgrade() -> None:
    op.zdm_rollback()
