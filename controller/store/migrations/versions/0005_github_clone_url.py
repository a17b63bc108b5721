"""repositories.clone_url: the clone URL GitHub reports, fetched with an installation token

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:20:00
"""

import sqlalchemy as sa
from alembic import op


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("repositories") as batch:
        batch.add_column(sa.Column("clone_url", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("repositories") as batch:
        batch.drop_column("clone_url")
