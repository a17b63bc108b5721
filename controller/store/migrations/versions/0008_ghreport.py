"""github reports: what was last sent to GitHub per deployment, and one comment per PR

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 14:30:00
"""

import sqlalchemy as sa
from alembic import op


revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "github_reports",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("github_deployment_id", sa.BigInteger(), nullable=True),
        sa.Column("deployment_state", sa.String(length=20), nullable=True),
        sa.Column("check_run_id", sa.BigInteger(), nullable=True),
        sa.Column("check_state", sa.String(length=20), nullable=True),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_github_reports_deployment_id_deployments"),
        ),
        sa.PrimaryKeyConstraint("deployment_id", name=op.f("pk_github_reports")),
    )
    op.create_index("ix_github_reports_done", "github_reports", ["done"])
    op.create_table(
        "github_comments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("pr_number", sa.Integer(), nullable=False),
        sa.Column("comment_id", sa.BigInteger(), nullable=True),
        sa.Column("body_hash", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_github_comments_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_github_comments")),
        sa.UniqueConstraint("project_id", "pr_number", name=op.f("uq_github_comments_project_id")),
    )


def downgrade() -> None:
    op.drop_table("github_comments")
    op.drop_index("ix_github_reports_done", table_name="github_reports")
    op.drop_table("github_reports")
