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
    ForeignKey,
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

# `ckpt migrate-local-paths`: each run that cleared validation_results.checkpoint_path values that were no
# promotion's URI (the local paths of the platform's old behaviour), and every value it cleared, so a run can be
# audited, and undone by hand if need be.
path_migrations = Table(
    "ckpt_path_migrations",
    service_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("kept_schemes", String(255), nullable=False),  # the URI schemes left alone, e.g. "r2"
    Column("rows_cleared", Integer, nullable=False),
    Column("jobs_affected", Integer, nullable=False),
    Column("details", JSON, nullable=False),  # {"per_job": {"41": 5, …}}
)

cleared_paths = Table(
    "ckpt_cleared_paths",
    service_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("migration_id", BigInteger, ForeignKey("ckpt_path_migrations.id"), nullable=False),
    # validation_results.id, deliberately without a foreign key: the platform's rows stay the platform's to delete.
    Column("validation_result_id", BigInteger, nullable=False),
    Column("job_id", BigInteger, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("checkpoint_path", String(500), nullable=False),  # the value cleared
    Index("ix_ckpt_cleared_paths_migration", "migration_id"),
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
