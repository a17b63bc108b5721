"""env vars and their audit trail

Encrypted environment variables per environment / preview branch, and the history of
changes to them (names and who, never values).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 11:15:00
"""

import sqlalchemy as sa
from alembic import op


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "env_vars",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("environment", sa.String(length=20), nullable=False),
        sa.Column("branch_key", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("value_encrypted", sa.Text(), nullable=False),
        sa.Column("secret", sa.Boolean(), nullable=False),
        sa.Column("fork_safe", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_env_vars_project_id_projects")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_env_vars")),
        sa.UniqueConstraint("project_id", "environment", "branch_key", "name", name=op.f("uq_env_vars_project_id")),
    )
    op.create_index(op.f("ix_env_vars_project_id"), "env_vars", ["project_id"], unique=False)
    op.create_table(
        "env_var_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("environment", sa.String(length=20), nullable=False),
        sa.Column("branch_key", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_env_var_changes_project_id_projects")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_env_var_changes")),
    )
    op.create_index("ix_env_var_changes_project_order", "env_var_changes", ["project_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_env_var_changes_project_order", table_name="env_var_changes")
    op.drop_table("env_var_changes")
    op.drop_index(op.f("ix_env_vars_project_id"), table_name="env_vars")
    op.drop_table("env_vars")
