"""Promotion records and per-job promotion state.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ckpt_job_state",
        sa.Column("job_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("project_id", sa.BigInteger(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("best_epoch", sa.Integer(), nullable=True),
        sa.Column("last_epoch", sa.Integer(), nullable=True),
        sa.Column("promotion_id", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "ckpt_promotions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("bucket", sa.String(255), nullable=False),
        sa.Column("manifest_key", sa.String(1024), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=True),
        sa.Column("project_id", sa.BigInteger(), nullable=True),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("best_epoch", sa.Integer(), nullable=True),
        sa.Column("last_epoch", sa.Integer(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index("ix_ckpt_promotions_job", "ckpt_promotions", ["job_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_ckpt_promotions_job", table_name="ckpt_promotions")
    op.drop_table("ckpt_promotions")
    op.drop_table("ckpt_job_state")
