"""people signed in with GitHub: their sessions and encrypted user tokens

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 14:20:00
"""

import sqlalchemy as sa
from alembic import op


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "github_user_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("login", sa.String(length=100), nullable=False),
        sa.Column("github_user_id", sa.BigInteger(), nullable=False),
        sa.Column("token_encrypted", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_github_user_sessions")),
    )


def downgrade() -> None:
    op.drop_table("github_user_sessions")
