"""The promotion store: what the promotion logic needs from the database, behind a small interface.

``PromotionStore.job(job)`` opens one transaction that holds the job's lock until it commits; inside it the
logic reads the recorded state and the job's metrics and writes paths, state and the record together.
SQLAlchemy errors leave here as ``DatabaseUnavailable``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Connection, Engine, insert, inspect, or_, select, text, update
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from ckpt.db.schema import job_state, promotions, validation_results
from ckpt.errors import DatabaseUnavailable, Rejected
from ckpt.keys import JobRef
from ckpt.outcome import Outcome
from ckpt.rules import EpochMetric, JobState
from ckpt.text import bounded, escaped


class JobTransaction:
    """The database side of one promotion, inside the job's lock."""

    def __init__(self, connection: Connection, job: JobRef) -> None:
        self._db = connection
        self._job = job

    def state(self) -> JobState | None:
        return _read_state(self._db, self._job.job_id)

    def epoch_metrics(self) -> list[EpochMetric]:
        return _read_metrics(self._db, self._job.job_id)

    def set_checkpoint_paths(self, paths: Mapping[int, str]) -> list[int]:
        """Point the given epochs' rows at their URIs and every other row of the job at NULL.
        Returns the epochs that have no row to point (the platform has not recorded them)."""
        rows = validation_results.c
        job_rows = rows.job_id == self._job.job_id
        self._db.execute(
            update(validation_results)
            .where(job_rows, rows.checkpoint_path.is_not(None), rows.epoch.not_in(list(paths)))
            .values(checkpoint_path=None)
        )
        for epoch, uri in paths.items():
            self._db.execute(
                update(validation_results)
                .where(
                    job_rows,
                    rows.epoch == epoch,
                    or_(rows.checkpoint_path.is_(None), rows.checkpoint_path != uri),
                )
                .values(checkpoint_path=uri)
            )
        present = set(self._db.scalars(select(rows.epoch).where(job_rows, rows.epoch.in_(list(paths)))).all())
        return sorted(set(paths) - present)

    def save_state(self, state: JobState, promotion_id: int) -> None:
        values = {
            "project_id": state.project_id,
            "attempt": state.attempt,
            "manifest_sha256": state.manifest_sha256,
            "best_epoch": state.epochs.get("best"),
            "last_epoch": state.epochs.get("last"),
            "promotion_id": promotion_id,
            "updated_at": datetime.now(UTC),
        }
        updated = self._db.execute(update(job_state).where(job_state.c.job_id == self._job.job_id).values(**values))
        if updated.rowcount == 0:
            self._db.execute(insert(job_state).values(job_id=self._job.job_id, **values))

    def record(self, outcome: Outcome) -> int:
        return _insert_record(self._db, outcome)


class PromotionStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def job(self, job: JobRef) -> Iterator[JobTransaction]:
        """A transaction holding ``job``'s lock; committed when the block ends, rolled back if it raises."""
        with _translated(), self.engine.begin() as connection:
            _lock_job(connection, job.job_id)
            yield JobTransaction(connection, job)

    def state(self, job: JobRef) -> JobState | None:
        """The job's recorded state, read without a lock (a cheap early answer; the lock re-checks)."""
        with _translated(), self.engine.connect() as connection:
            return _read_state(connection, job.job_id)

    def epoch_metrics(self, job: JobRef) -> list[EpochMetric]:
        with _translated(), self.engine.connect() as connection:
            return _read_metrics(connection, job.job_id)

    def record(self, outcome: Outcome) -> int:
        """Record an outcome that needs no lock (rejected, superseded, duplicate)."""
        with _translated(), self.engine.begin() as connection:
            return _insert_record(connection, outcome)

    def history(self, job_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = select(promotions).order_by(promotions.c.id.desc()).limit(limit)
        if job_id is not None:
            query = query.where(promotions.c.job_id == job_id)
        with _translated(), self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def checkpoint_paths(self, job_id: int) -> list[tuple[int, float | None, str | None]]:
        """The job's validation_results as (epoch, metric, checkpoint_path), for display."""
        rows = validation_results.c
        query = select(rows.epoch, rows.primary_metric_value, rows.checkpoint_path).where(rows.job_id == job_id)
        with _translated(), self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(query.order_by(rows.epoch))]  # type: ignore[misc]

    def missing_tables(self) -> list[str]:
        with _translated(), self.engine.connect() as connection:
            existing = set(inspect(connection).get_table_names())
        return sorted({job_state.name, promotions.name, validation_results.name} - existing)


# --- helpers shared by the locked and unlocked paths -------------------------------------------------


def _lock_job(connection: Connection, job_id: int) -> None:
    if connection.dialect.name == "postgresql":
        # Transaction-scoped: released at commit, rollback or disconnect. The key is namespaced so it
        # cannot collide with other advisory locks the platform may take.
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"ckpt:job:{job_id}"}
        )
    # SQLite: the engine begins every transaction with BEGIN IMMEDIATE, a database-wide write lock.


def _read_state(connection: Connection, job_id: int) -> JobState | None:
    row = connection.execute(select(job_state).where(job_state.c.job_id == job_id)).mappings().first()
    if row is None:
        return None
    return JobState(
        project_id=row["project_id"],
        attempt=row["attempt"],
        manifest_sha256=row["manifest_sha256"],
        epochs={"best": row["best_epoch"], "last": row["last_epoch"]},
    )


def _read_metrics(connection: Connection, job_id: int) -> list[EpochMetric]:
    rows = validation_results.c
    query = select(rows.epoch, rows.primary_metric_value).where(rows.job_id == job_id)
    return [EpochMetric(epoch=epoch, value=value) for epoch, value in connection.execute(query)]


def _column_text(column: Column[Any], text: str) -> str:
    """``text`` as the column can hold it (the log keeps the original)."""
    limit = getattr(column.type, "length", None)
    return bounded(escaped(text), limit) if limit else escaped(text)


def _insert_record(connection: Connection, outcome: Outcome) -> int:
    ref = outcome.ref
    epochs = {name: report.epoch for name, report in outcome.files.items()}
    columns = promotions.c
    result = connection.execute(
        insert(promotions)
        .values(
            created_at=datetime.now(UTC),
            outcome=str(outcome.status),
            reason=_column_text(columns.reason, outcome.reason),
            trigger=_column_text(columns.trigger, outcome.trigger),
            bucket=_column_text(columns.bucket, outcome.bucket),
            manifest_key=_column_text(columns.manifest_key, outcome.manifest_key),
            manifest_sha256=outcome.manifest_sha256,
            project_id=ref.job.project_id if ref else None,
            job_id=ref.job.job_id if ref else None,
            attempt=ref.attempt if ref else None,
            best_epoch=epochs.get("best"),
            last_epoch=epochs.get("last"),
            details=outcome.details(),
        )
        .returning(promotions.c.id)
    )
    return int(result.scalar_one())


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        if _refuses_the_data(exc):
            # The database refuses these values, and will again: retrying cannot help.
            raise Rejected(f"the database refused the promotion: {getattr(exc, 'orig', exc)}") from exc
        cause = getattr(exc, "orig", None) or exc
        raise DatabaseUnavailable(f"database error: {type(cause).__name__}: {cause}") from exc


def _refuses_the_data(exc: SQLAlchemyError) -> bool:
    """Data exceptions (SQLSTATE class 22) and integrity violations (23): permanent, unlike a lost connection.
    pg8000 reports them as ProgrammingError carrying the SQLSTATE; other drivers as DataError/IntegrityError."""
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    orig = getattr(exc, "orig", None)
    fields = orig.args[0] if orig is not None and orig.args and isinstance(orig.args[0], dict) else {}
    return str(fields.get("C", "")).startswith(("22", "23"))
