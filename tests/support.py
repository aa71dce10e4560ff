"""Test helpers: act as the platform (validation_results rows) and as a trainer (staged attempts)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, text

from ckpt.adapters.db import migrate
from ckpt.adapters.db.schema import platform_metadata, service_metadata, validation_results
from ckpt.adapters.db.store import PromotionStore
from ckpt.contract.keys import AttemptRef, CheckpointName, JobRef, Layout
from ckpt.contract.manifest import Manifest, Status
from ckpt.trainer.staging import Checkpoint, stage_attempt

BUCKET = "vision-platform-prod"


def reset_database(engine: Engine) -> None:
    """Empty database: the platform's table as the platform creates it, then the service's via migrations."""
    with engine.begin() as connection:
        service_tables = [table.name for table in reversed(service_metadata.sorted_tables)]  # dependents first
        for table in (*service_tables, "ckpt_alembic_version", "validation_results"):
            connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    platform_metadata.create_all(engine)
    migrate.upgrade(engine)


def add_epochs(engine: Engine, job_id: int, metrics: Mapping[int, float | None]) -> None:
    """Act as the platform: one validation_results row per epoch, checkpoint_path NULL."""
    with engine.begin() as connection:
        connection.execute(
            insert(validation_results),
            [{"job_id": job_id, "epoch": epoch, "primary_metric_value": value} for epoch, value in metrics.items()],
        )


def paths(engine: Engine, job_id: int) -> dict[int, str | None]:
    """epoch → checkpoint_path for the job."""
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT epoch, checkpoint_path FROM validation_results WHERE job_id = :job ORDER BY epoch"),
            {"job": job_id},
        )
        return {epoch: path for epoch, path in rows}


def records(engine: Engine, job_id: int | None = None) -> list[dict[str, Any]]:
    return PromotionStore(engine).history(job_id, limit=1000)[::-1]


JOB = JobRef(job_id=42, project_id=7)


def attempt(n: int, job: JobRef = JOB) -> AttemptRef:
    return AttemptRef(job=job, attempt=n)


def weights(label: str, size: int = 2048) -> bytes:
    """Distinct, deterministic checkpoint bytes."""
    seed = label.encode()
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class Trainer:
    """Stages attempts the way a trainer does: files first, manifest last."""

    s3: Any
    layout: Layout

    def finish(
        self,
        ref: AttemptRef,
        status: Status = "interrupted",
        files: Mapping[CheckpointName, Checkpoint] | None = None,
        **fields: Any,
    ) -> Manifest:
        if files is None:
            files = {
                "best": Checkpoint(weights(f"best-{ref.attempt}"), epoch=18),
                "last": Checkpoint(weights(f"last-{ref.attempt}"), epoch=20),
            }
        return stage_attempt(self.s3, self.layout, ref, status, files, **fields)

    def put_manifest(self, ref: AttemptRef, body: bytes) -> str:
        key = self.layout.manifest_key(ref)
        self.s3.put_object(Bucket=self.layout.bucket, Key=key, Body=body)
        return key


def canonical_bytes(s3: Any, layout: Layout, job: JobRef, name: CheckpointName) -> bytes | None:
    try:
        return bytes(s3.get_object(Bucket=layout.bucket, Key=layout.canonical_key(job, name))["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


@dataclass
class LambdaContext:
    """The parts of Lambda's context object that Powertools reads."""

    function_name: str = "PromoteCheckpointsFunction"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:PromoteCheckpointsFunction"
    aws_request_id: str = "00000000-0000-4000-8000-000000000000"


def self_signed_ca_pem(name: str) -> bytes:
    """A PEM certificate of a CA called ``name`` that signed nothing else."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


@contextmanager
def commit_fails(engine: Engine) -> Iterator[None]:
    """Every commit on ``engine`` fails as a connection lost at commit would, for the block's duration: the
    DBAPI's commit() (SQLite) and the COMMIT the store sends itself (PostgreSQL, whose engine is autocommit)."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    def fail_commit(*_: Any) -> None:
        raise OperationalError("COMMIT", {}, ConnectionError("injected: connection lost at commit"))

    def fail_commit_statement(connection: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement == "COMMIT":
            fail_commit()

    event.listen(engine, "commit", fail_commit)
    event.listen(engine, "before_cursor_execute", fail_commit_statement)
    try:
        yield
    finally:
        event.remove(engine, "commit", fail_commit)
        event.remove(engine, "before_cursor_execute", fail_commit_statement)


class HookedStorage:
    """The real storage adapter with hooks run before its HEAD, CopyObject and DELETE calls (to interleave a
    trainer's re-staging or another worker, or to fail); it counts the copies and keeps the keys deleted."""

    def __init__(
        self, inner: Any, *, before_head: Any = None, before_copy: Any = None, before_delete: Any = None
    ) -> None:
        self.inner = inner
        self.before_head = before_head
        self.before_copy = before_copy
        self.before_delete = before_delete
        self.copies = 0
        self.deletes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def head(self, key: str) -> Any:
        if self.before_head:
            self.before_head(key)
        return self.inner.head(key)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        self.copies += 1
        if self.before_copy:
            self.before_copy(self.copies, *args)
        return self.inner.copy(*args, **kwargs)

    def delete(self, key: str, etag: str) -> None:
        if self.before_delete:
            self.before_delete(key)
        self.deletes.append(key)
        self.inner.delete(key, etag)


def configured_handler(monkeypatch: Any, database_url: str) -> Any:
    """The promotion handler module, configured through the environment as template.yaml configures it (staged
    files kept, tracing off), with no promoter built yet: the next event builds one on these settings."""
    monkeypatch.setenv("CHECKPOINT_BUCKET", BUCKET)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "CheckpointPipeline")
    monkeypatch.delenv("DELETE_STAGED_AFTER_PROMOTION", raising=False)
    from promote_checkpoints import handler as module

    monkeypatch.setattr(module, "_promoter", None)
    return module
