"""Table definitions.

``service_metadata`` holds the tables this service owns; Alembic creates and upgrades them and nothing
else. ``platform_metadata`` describes the platform's ``validation_results`` as far as this service reads
and writes it; it is never created or altered from here (tests and the demo create it as the platform would).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

SERVICE_PREFIX = "ckpt_"
# Our own Alembic version table, so the platform's 'alembic_version' is never read or written.
VERSION_TABLE = "ckpt_alembic_version"

service_metadata = MetaData()

# The newest promotion of each job: the ordering and idempotency guard.
job_state = Table(
    "ckpt_job_state",
    service_metadata,
    Column("job_id", BigInteger, primary_key=True, autoincrement=False),
    Column("project_id", BigInteger, nullable=True),
    Column("attempt", Integer, nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("best_epoch", Integer, nullable=True),
    Column("last_epoch", Integer, nullable=True),
    Column("promotion_id", BigInteger, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# One row per processed manifest event: the audit trail of outcomes.
promotions = Table(
    "ckpt_promotions",
    service_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("bucket", String(255), nullable=False),
    Column("manifest_key", String(1024), nullable=False),
    Column("manifest_sha256", String(64), nullable=True),
    Column("project_id", BigInteger, nullable=True),
    Column("job_id", BigInteger, nullable=True),
    Column("attempt", Integer, nullable=True),
    Column("best_epoch", Integer, nullable=True),
    Column("last_epoch", Integer, nullable=True),
    Column("details", JSON, nullable=False),
    Index("ix_ckpt_promotions_job", "job_id", "created_at"),
)

platform_metadata = MetaData()

validation_results = Table(
    "validation_results",
    platform_metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, nullable=False, index=True),
    Column("epoch", Integer, nullable=False),
    Column("primary_metric_value", Float, nullable=True),
    Column("checkpoint_path", String(500), nullable=True),
)
