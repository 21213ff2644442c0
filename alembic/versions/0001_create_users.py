"""create users, with a few rows

Revision ID: 0001_create_users
Revises:
Create Date: 2026-01-05 09:00:00

An ordinary Alembic revision: nothing uses the table yet, so nothing needs zdm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001_create_users"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    users = op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("score", sa.Integer),
    )
    op.bulk_insert(users, [
        {"id": i, "email": f"User{i}@Example.COM", "name": None if i % 4 == 0 else f"user {i}", "score": i * 10}
        for i in range(1, 11)
    ])


def downgrade() -> None:
    op.drop_table("users")
