"""indexes for the resync and for retention

The resync filters deployments on status; the branch pass asks whether a commit was
already attempted in an environment (environment_id, sha); retention walks finished
deployments by age, finished jobs by status and age, and runs that still hold logs.
Indexes only: nothing to migrate, and downgrading drops them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 11:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deployments_status", "deployments", ["status"])
    op.create_index("ix_deployments_environment_sha", "deployments", ["environment_id", "sha"])
    op.create_index("ix_deployments_finished_at", "deployments", ["finished_at"])
    op.create_index("ix_jobs_status_updated_at", "jobs", ["status", "updated_at"])
    op.create_index(
        "ix_runs_finished_with_logs",
        "runs",
        ["finished_at"],
        sqlite_where=sa.text("logs IS NOT NULL"),
        postgresql_where=sa.text("logs IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_finished_with_logs", table_name="runs")
    op.drop_index("ix_jobs_status_updated_at", table_name="jobs")
    op.drop_index("ix_deployments_finished_at", table_name="deployments")
    op.drop_index("ix_deployments_environment_sha", table_name="deployments")
    op.drop_index("ix_deployments_status", table_name="deployments")
