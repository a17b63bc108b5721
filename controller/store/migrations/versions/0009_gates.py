"""promotion gates: per-project gates and timeout, a waiting deployment's gate and deadline

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 14:20:00
"""

import sqlalchemy as sa
from alembic import op


revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(
            sa.Column("promotion_gates", sa.JSON(), nullable=False, server_default="{}")
        )
        batch.add_column(
            sa.Column("promotion_timeout", sa.Integer(), nullable=False, server_default="1800")
        )
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("gate", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("gate_deadline", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("gate_deadline")
        batch.drop_column("waiting_since")
        batch.drop_column("gate")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("promotion_timeout")
        batch.drop_column("promotion_gates")
