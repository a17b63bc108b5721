"""claim and key indexes for jobs

Claims now walk queued jobs of a kind in id order (status, kind, id) instead of sorting
the backlog under the write lock; supersede and route batches look jobs up by key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 19:28:03.414879
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index("ix_jobs_claim_order", "jobs", ["status", "kind", "id"])
    op.create_index("ix_jobs_key_status", "jobs", ["key", "status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_key_status", table_name="jobs")
    op.drop_index("ix_jobs_claim_order", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", ["status", "kind", "run_after"])
