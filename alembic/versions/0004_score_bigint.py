"""users.score becomes BIGINT without rewriting the table under an exclusive lock

Revision ID: 0004_score_bigint
Revises: 0003_rename_email
Create Date: 2026-01-26 09:00:00

Both app versions keep using `score`; the BIGINT column takes its name at complete.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004_score_bigint"
down_revision: str | None = "0003_rename_email"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.zdm_alter_column("users", "score", sa.BigInteger(),
                        existing_type=sa.Integer(), existing_nullable=True, existing_primary_key=["id"])


def downgrade() -> None:
    op.zdm_rollback()
