"""bundles in the database: content-addressed bundles, their chunks, a version's bundle

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 17:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bundles",
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_bundles"),
    )
    op.create_table(
        "bundle_chunks",
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("digest", "seq", name="pk_bundle_chunks"),
        sa.ForeignKeyConstraint(
            ["digest"], ["bundles.digest"], name="fk_bundle_chunks_digest_bundles"
        ),
    )
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("bundle_digest", sa.String(length=71), nullable=True))
        batch.create_foreign_key(
            "fk_versions_bundle_digest_bundles", "bundles", ["bundle_digest"], ["digest"]
        )
        batch.create_index("ix_versions_bundle_digest", ["bundle_digest"])


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.drop_index("ix_versions_bundle_digest")
        batch.drop_constraint("fk_versions_bundle_digest_bundles", type_="foreignkey")
        batch.drop_column("bundle_digest")
    op.drop_table("bundle_chunks")
    op.drop_table("bundles")
