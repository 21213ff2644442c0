"""users.name becomes NOT NULL; rows without a name, and old-app writes of NULL, get 'anon'

Revision ID: 0005_name_not_null
Revises: 0004_score_bigint
Create Date: 2026-02-02 09:00:00

The existing_* hints are those of Alembic's op.alter_column: zdm reads them only offline, by a
`--sql` run that starts after the revision creating the table (`alembic upgrade 0004_score_bigint:head --sql`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005_name_not_null"
down_revision: str | None = "0004_score_bigint"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.zdm_set_not_null("users", "name", fill="anon", existing_type=sa.Text(), existing_nullable=True,
                        existing_primary_key=["id"])


def downgrade() -> None:
    op.zdm_rollback()
