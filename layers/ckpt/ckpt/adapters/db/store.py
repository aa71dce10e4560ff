"""The promotion store: what the promotion logic needs from the database, behind a small interface.

``PromotionStore.job(job)`` opens one transaction that holds the job's lock until it commits; inside it the
logic reads the job (``snapshot``: the recorded state and the job's validation rows, in one statement) and
writes what it decided (``write``: the rows' paths, the record and the state, in one statement on
PostgreSQL). SQLAlchemy errors leave here as ``DatabaseUnavailable`` (or ``Rejected`` for values the database
refuses).

Round trips, because each is a millisecond or more to RDS, and pg8000 spends three on every statement that has
parameters (parse, describe, bind and execute) but one on a statement without: the engine runs in autocommit
(engine.py), transactions are an explicit BEGIN and COMMIT (one each), the lock and the snapshot carry only the
job's id, an integer, written into the SQL (one each), and the write is one parameterised statement. A
promotion, and a duplicate, is then 7 round trips: BEGIN, the lock, the snapshot, the write (3), COMMIT.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    bindparam,
    case,
    insert,
    inspect,
    literal,
    literal_column,
    null,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert

from ckpt.adapters.db.errors import database_errors
from ckpt.adapters.db.schema import job_state, promotions, validation_results
from ckpt.contract.keys import JobRef
from ckpt.contract.outcome import Outcome
from ckpt.contract.rules import EpochMetric, JobSnapshot, JobState
from ckpt.text import bounded, escaped


class JobTransaction:
    """The database side of one promotion, inside the job's lock."""

    def __init__(self, connection: Connection, job: JobRef) -> None:
        self._db = connection
        self._job = job

    def snapshot(self) -> JobSnapshot:
        return _read_snapshot(self._db, self._job.job_id)

    def write(self, outcome: Outcome, paths: Mapping[int, str] | None = None, state: JobState | None = None) -> int:
        """Record ``outcome``; with ``paths``, point those epochs' rows at their URIs and every other row of the
        job at NULL; with ``state``, make it the job's recorded state. Returns the record's id."""
        return _write(self._db, self._job.job_id, outcome, paths, state)


class PromotionStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def job(self, job: JobRef) -> Iterator[JobTransaction]:
        """A transaction holding ``job``'s lock; committed when the block ends, rolled back if it raises."""
        with database_errors(), self._transaction() as connection:
            _lock_job(connection, job.job_id)
            yield JobTransaction(connection, job)

    def snapshot(self, job: JobRef) -> JobSnapshot:
        """The job as recorded, read without a lock (for reports, such as the sweeper's)."""
        with database_errors(), self._single() as connection:
            return _read_snapshot(connection, job.job_id)

    def record(self, outcome: Outcome) -> int:
        """Record an outcome reached outside a job's transaction (a rejection)."""
        with database_errors(), self._single() as connection:
            return _write(connection, None, outcome, None, None)

    def history(self, job_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = select(promotions).order_by(promotions.c.id.desc()).limit(limit)
        if job_id is not None:
            query = query.where(promotions.c.job_id == job_id)
        with database_errors(), self._single() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def checkpoint_paths(self, job_id: int) -> list[tuple[int, float | None, str | None]]:
        """The job's validation_results as (epoch, metric, checkpoint_path), for display."""
        rows = validation_results.c
        query = select(rows.epoch, rows.primary_metric_value, rows.checkpoint_path).where(rows.job_id == job_id)
        with database_errors(), self._single() as connection:
            return [tuple(row) for row in connection.execute(query.order_by(rows.epoch))]  # type: ignore[misc]

    def missing_tables(self) -> list[str]:
        with database_errors(), self._single() as connection:
            existing = set(inspect(connection).get_table_names())
        return sorted({job_state.name, promotions.name, validation_results.name} - existing)

    # --- connections ---------------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self.engine.dialect.name != "postgresql":
            with self.engine.begin() as connection:  # SQLite: BEGIN IMMEDIATE (engine.py)
                yield connection
            return
        # PostgreSQL runs in autocommit (engine.py): the transaction is sent as plain BEGIN/COMMIT, one round
        # trip each, where pg8000's DBAPI commit() would spend three.
        with self.engine.connect() as connection:
            connection.exec_driver_sql("BEGIN")
            try:
                yield connection
                connection.exec_driver_sql("COMMIT")
            except BaseException:
                # After a failed COMMIT too: a connection must never go back to the pool inside a transaction.
                try:
                    connection.exec_driver_sql("ROLLBACK")
                except Exception:
                    connection.invalidate()
                raise

    @contextmanager
    def _single(self) -> Iterator[Connection]:
        """A connection for statements that stand alone (each is its own transaction on PostgreSQL)."""
        if self.engine.dialect.name != "postgresql":
            with self.engine.begin() as connection:
                yield connection
            return
        with self.engine.connect() as connection:
            yield connection


# --- statements ---------------------------------------------------------------------------------------------


def _job_id(job_id: int) -> Any:
    """The job's id written into the SQL (it is a checked integer), so the statement has no parameters and
    pg8000 sends it in one round trip instead of three."""
    return bindparam("job_id", int(job_id), literal_execute=True)


def _lock_job(connection: Connection, job_id: int) -> None:
    if connection.dialect.name == "postgresql":
        # Transaction-scoped: released at commit, rollback or disconnect. The key is namespaced so it cannot
        # collide with other advisory locks the platform may take.
        key: Any = bindparam("key", f"ckpt:job:{int(job_id)}", literal_execute=True)
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))").bindparams(key))
    # SQLite: the transaction began with BEGIN IMMEDIATE, a database-wide write lock.


def _read_snapshot(connection: Connection, job_id: int) -> JobSnapshot:
    """The job's recorded state and its validation rows, in one statement: the state is the row whose kind is
    'state' (attempt in the epoch column), the rows are the rest."""
    rows, state = validation_results.c, job_state.c
    query = union_all(
        select(
            literal_column("'state'").label("kind"),
            state.attempt.label("number"),
            state.manifest_sha256.label("text"),
            state.project_id,
            state.best_epoch,
            state.last_epoch,
            null().label("value"),
        ).where(state.job_id == _job_id(job_id)),
        select(
            literal_column("'row'"),
            rows.epoch,
            rows.checkpoint_path,
            null(),
            null(),
            null(),
            rows.primary_metric_value,
        ).where(rows.job_id == _job_id(job_id)),
    )
    recorded: JobState | None = None
    metrics: list[EpochMetric] = []
    for kind, number, text_value, project_id, best, last, value in connection.execute(query):
        if kind == "state":
            recorded = JobState(
                project_id=project_id, attempt=number, manifest_sha256=text_value, epochs={"best": best, "last": last}
            )
        else:
            metrics.append(EpochMetric(epoch=number, value=value, checkpoint_path=text_value))
    return JobSnapshot(state=recorded, rows=sorted(metrics, key=lambda row: row.epoch))


def _write(
    connection: Connection,
    job_id: int | None,
    outcome: Outcome,
    paths: Mapping[int, str] | None,
    state: JobState | None,
) -> int:
    """The rows, the record and the state: one statement on PostgreSQL (data-modifying CTEs), in order on
    SQLite, which has none."""
    record = insert(promotions).values(**_record_values(outcome)).returning(promotions.c.id)
    rows = None if paths is None or job_id is None else _set_paths(job_id, paths)
    if connection.dialect.name != "postgresql":
        if rows is not None:
            connection.execute(rows)
        record_id = int(connection.execute(record).scalar_one())
        if state is not None and job_id is not None:
            # Imported here: the SQLite dialect is the local default, and a function on PostgreSQL need not load it.
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            connection.execute(_save_state(sqlite_insert(job_state), job_id, state, literal(record_id)))
        return record_id
    recorded = record.cte("recorded")
    query = select(recorded.c.id)
    if rows is not None:
        query = query.add_cte(rows.returning(validation_results.c.id).cte("paths"))
    if state is not None and job_id is not None:
        saved = _save_state(postgresql_insert(job_state), job_id, state, select(recorded.c.id).scalar_subquery())
        query = query.add_cte(saved.returning(job_state.c.job_id).cte("saved"))
    return int(connection.execute(query).scalar_one())


def _set_paths(job_id: int, paths: Mapping[int, str]) -> Any:
    rows = validation_results.c
    wanted = case({epoch: uri for epoch, uri in paths.items()}, value=rows.epoch, else_=null()) if paths else null()
    return (
        update(validation_results)
        .where(rows.job_id == job_id, rows.checkpoint_path.is_distinct_from(wanted))
        .values(checkpoint_path=wanted)
    )


def _save_state(upsert: Any, job_id: int, state: JobState, promotion_id: Any) -> Any:
    values = {
        "job_id": job_id,
        "project_id": state.project_id,
        "attempt": state.attempt,
        "manifest_sha256": state.manifest_sha256,
        "best_epoch": state.epochs.get("best"),
        "last_epoch": state.epochs.get("last"),
        "promotion_id": promotion_id,
        "updated_at": datetime.now(UTC),
    }
    statement = upsert.values(**values)
    changed = {name: statement.excluded[name] for name in values if name != "job_id"}
    return statement.on_conflict_do_update(index_elements=[job_state.c.job_id], set_=changed)


def _record_values(outcome: Outcome) -> dict[str, Any]:
    ref = outcome.ref
    epochs = {name: report.epoch for name, report in outcome.files.items()}
    columns = promotions.c
    return {
        "created_at": datetime.now(UTC),
        "outcome": str(outcome.status),
        "reason": _column_text(columns.reason, outcome.reason),
        "trigger": _column_text(columns.trigger, outcome.trigger),
        "bucket": _column_text(columns.bucket, outcome.bucket),
        "manifest_key": _column_text(columns.manifest_key, outcome.manifest_key),
        "manifest_sha256": outcome.manifest_sha256,
        "project_id": ref.job.project_id if ref else None,
        "job_id": ref.job.job_id if ref else None,
        "attempt": ref.attempt if ref else None,
        "best_epoch": epochs.get("best"),
        "last_epoch": epochs.get("last"),
        "details": outcome.details(),
    }


def _column_text(column: Column[Any], text: str) -> str:
    """``text`` as the column can hold it (the log keeps the original)."""
    limit = getattr(column.type, "length", None)
    return bounded(escaped(text), limit) if limit else escaped(text)
