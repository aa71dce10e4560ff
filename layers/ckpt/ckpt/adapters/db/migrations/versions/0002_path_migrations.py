"""The record of ``ckpt migrate-local-paths``: its runs and the values each cleared.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ckpt_path_migrations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kept_schemes", sa.String(255), nullable=False),
        sa.Column("rows_cleared", sa.Integer(), nullable=False),
        sa.Column("jobs_affected", sa.Integer(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_table(
        "ckpt_cleared_paths",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("migration_id", sa.BigInteger(), sa.ForeignKey("ckpt_path_migrations.id"), nullable=False),
        sa.Column("validation_result_id", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("checkpoint_path", sa.String(500), nullable=False),
    )
    op.create_index("ix_ckpt_cleared_paths_migration", "ckpt_cleared_paths", ["migration_id"])


def downgrade() -> None:
    op.drop_index("ix_ckpt_cleared_paths_migration", table_name="ckpt_cleared_paths")
    op.drop_table("ckpt_cleared_paths")
    op.drop_table("ckpt_path_migrations")
