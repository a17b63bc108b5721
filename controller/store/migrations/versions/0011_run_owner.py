"""runs in flight name their process and deadline, so a crash cannot leave them running

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 05:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=120), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_runs_running_expires_at",
        "runs",
        ["expires_at"],
        sqlite_where=sa.text("status = 'running'"),
        postgresql_where=sa.text("status = 'running'"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_running_expires_at", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("owner")
