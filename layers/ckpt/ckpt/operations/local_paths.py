"""``ckpt migrate-local-paths``: the seed policy's migration step 2.

Before this service, the platform wrote the trainer's *local* file path into ``validation_results.checkpoint_path``
during training (``/data/outputs/job_41/weights/best.pt``), and the UI showed ✓ for any value. Those paths name
files on machines that are gone. The seed's step clears every value that is not an ``r2://`` URI::

    UPDATE validation_results SET checkpoint_path = NULL
    WHERE checkpoint_path IS NOT NULL AND checkpoint_path NOT LIKE 'r2://%';

This does the same, more carefully:

- **It never clears a path the promotion wrote.** Kept are: ``r2://`` URIs (the UI's rule), URIs of the configured
  ``CHECKPOINT_URI_SCHEME`` (what the promotion writes in this deployment, when it is not ``r2``), and any value a
  promotion record of the job lists as written (its ``row_paths`` and canonical URIs: a deployment whose scheme
  changed keeps what it wrote before). In the transaction, the rows are locked (``FOR UPDATE``) and each is
  cleared only while it still holds the value read, so a promotion committing meanwhile keeps its URI.
- **A dry run first** (``--dry-run``): the count per job and a sample, nothing changed.
- **One transaction**: the clearing and its record, in the service's own tables (revision 0002):
  ``ckpt_path_migrations`` (one row per run: when, the kept schemes, the counts) and ``ckpt_cleared_paths`` (each
  cleared row's id, job, epoch and former value, so a run can be audited and undone by hand). The platform's
  table changes only in ``checkpoint_path``; its schema never.
- **Optionally re-promotes** (``--repromote``) the affected jobs whose staging still holds a manifest, through
  ``Promoter.reprocess``: their best and last rows get their ``r2://`` URIs back.

``kept_schemes``, ``clears`` and ``paths_written`` are the pure rules; the rest is the shell.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, inspect, select, update

from ckpt.adapters.db.errors import database_errors
from ckpt.adapters.db.schema import cleared_paths, path_migrations, promotions, validation_results
from ckpt.contract.keys import JobRef, Layout, LayoutError
from ckpt.contract.outcome import Outcome, Status
from ckpt.errors import ConfigurationError, DatabaseUnavailable, Rejected, TransientError
from ckpt.operations.backfill import StagingReader
from ckpt.promotion.promoter import Promoter

# The scheme the platform's UI marks with ✓, whatever this deployment writes.
UI_SCHEME = "r2"

# --- the rules (pure) ---------------------------------------------------------------------------------------


def kept_schemes(configured_scheme: str) -> tuple[str, ...]:
    """The URI schemes whose values are never cleared: the UI's ``r2`` and the one the promotion writes."""
    return tuple(dict.fromkeys((UI_SCHEME, configured_scheme)))


def clears(path: str | None, schemes: Sequence[str], written: frozenset[str] | set[str] = frozenset()) -> bool:
    """Whether a ``checkpoint_path`` value is one of the old behaviour's to clear: set, no URI of a kept scheme,
    and no value a promotion wrote."""
    if path is None:
        return False
    if any(path.startswith(f"{scheme}://") for scheme in schemes):
        return False
    return path not in written


def paths_written(details: Iterable[Mapping[str, Any]]) -> set[str]:
    """Every value promotion records say they wrote: their ``row_paths`` and the canonical URIs of their files."""
    written: set[str] = set()
    for record in details:
        if not isinstance(record, Mapping):
            continue
        row_paths = record.get("row_paths")
        if isinstance(row_paths, Mapping):
            written.update(value for value in row_paths.values() if isinstance(value, str))
        files = record.get("files")
        if isinstance(files, Mapping):
            for entry in files.values():
                uri = entry.get("canonical_uri") if isinstance(entry, Mapping) else None
                if isinstance(uri, str):
                    written.add(uri)
    return written


@dataclass(frozen=True)
class LocalPath:
    """A ``validation_results`` row whose ``checkpoint_path`` is to be cleared."""

    row_id: int
    job_id: int
    epoch: int
    path: str


@dataclass(frozen=True)
class LocalPathPlan:
    schemes: tuple[str, ...]
    rows: list[LocalPath]  # ordered by job, epoch

    @property
    def per_job(self) -> dict[int, int]:
        return dict(sorted(Counter(row.job_id for row in self.rows).items()))

    def sample(self, size: int = 10) -> list[LocalPath]:
        """Up to ``size`` rows, spread over the jobs (each job's first rows first)."""
        by_job: dict[int, list[LocalPath]] = {}
        for row in self.rows:
            by_job.setdefault(row.job_id, []).append(row)
        picked: list[LocalPath] = []
        depth = 0
        while len(picked) < size and any(depth < len(rows) for rows in by_job.values()):
            picked += [rows[depth] for rows in by_job.values() if depth < len(rows)][: size - len(picked)]
            depth += 1
        return sorted(picked, key=lambda row: (row.job_id, row.epoch))

    def describe(self, sample_size: int = 10) -> list[str]:
        """The dry run's lines: what is kept, the count per job, a sample."""
        kept = ", ".join(f"{scheme}://" for scheme in self.schemes)
        jobs = self.per_job
        lines = [
            f"validation_results: {len(self.rows)} checkpoint_path value{'s' if len(self.rows) != 1 else ''} "
            f"in {len(jobs)} job{'s' if len(jobs) != 1 else ''} to clear (kept: {kept} URIs and every value a "
            "promotion wrote)"
        ]
        lines += [f"  job {job_id}: {count}" for job_id, count in jobs.items()]
        if self.rows:
            lines.append("sample:")
            lines += [f"  job {row.job_id} epoch {row.epoch}: {row.path}" for row in self.sample(sample_size)]
        return lines


# --- the shell ----------------------------------------------------------------------------------------------


def plan_local_paths(engine: Engine, layout: Layout) -> LocalPathPlan:
    """What a run would clear, read without changing anything (the dry run)."""
    check_tables(engine)
    with database_errors(), engine.connect() as connection:
        return _plan(connection, kept_schemes(layout.uri_scheme), lock=False)


@dataclass(frozen=True)
class ClearedLocalPaths:
    plan: LocalPathPlan  # the rows cleared
    migration_id: int | None  # the ckpt_path_migrations row; None when there was nothing to clear

    def describe(self) -> str:
        if self.migration_id is None:
            return "nothing to clear: every checkpoint_path is empty, an r2:// URI or a value a promotion wrote"
        jobs = len(self.plan.per_job)
        return (
            f"cleared {len(self.plan.rows)} checkpoint_path value{'s' if len(self.plan.rows) != 1 else ''} in "
            f"{jobs} job{'s' if jobs != 1 else ''} in one transaction; recorded as ckpt_path_migrations id "
            f"{self.migration_id} (the former values are in ckpt_cleared_paths)"
        )


# Rows per UPDATE/INSERT statement: far below every database's limit on parameters.
ROWS_PER_STATEMENT = 500


def clear_local_paths(
    engine: Engine, layout: Layout, now: datetime | None = None, *, rows_per_statement: int = ROWS_PER_STATEMENT
) -> ClearedLocalPaths:
    """Clear them, and record it, in one transaction: the plan is read again inside it with the rows locked."""
    check_tables(engine)
    schemes = kept_schemes(layout.uri_scheme)
    with database_errors(), _transaction(engine) as connection:
        plan = _plan(connection, schemes, lock=True)
        if not plan.rows:
            return ClearedLocalPaths(plan=plan, migration_id=None)
        migration_id = int(
            connection.execute(
                insert(path_migrations)
                .values(
                    created_at=now or datetime.now(UTC),
                    kept_schemes=",".join(schemes),
                    rows_cleared=len(plan.rows),
                    jobs_affected=len(plan.per_job),
                    details={"per_job": {str(job): count for job, count in plan.per_job.items()}},
                )
                .returning(path_migrations.c.id)
            ).scalar_one()
        )
        for start in range(0, len(plan.rows), rows_per_statement):
            _clear_rows(connection, migration_id, plan.rows[start : start + rows_per_statement], schemes)
    return ClearedLocalPaths(plan=plan, migration_id=migration_id)


def check_tables(engine: Engine) -> None:
    """The tables a run reads and writes must be there: the record's come with ``ckpt db upgrade`` (revision 0002)."""
    with database_errors(), engine.connect() as connection:
        existing = set(inspect(connection).get_table_names())
    missing = sorted({validation_results.name, promotions.name, path_migrations.name, cleared_paths.name} - existing)
    if missing:
        hint = "run `ckpt db upgrade`" if any(name.startswith("ckpt_") for name in missing) else "the platform's table"
        raise ConfigurationError(f"missing tables {', '.join(missing)}: {hint}")


def _clear_rows(connection: Connection, migration_id: int, rows: Sequence[LocalPath], schemes: Sequence[str]) -> None:
    connection.execute(
        insert(cleared_paths),
        [
            {
                "migration_id": migration_id,
                "validation_result_id": row.row_id,
                "job_id": row.job_id,
                "epoch": row.epoch,
                "checkpoint_path": row.path,
            }
            for row in rows
        ],
    )
    columns = validation_results.c
    # The rule again in the statement: under the row locks the rows still hold the values read (and recorded), and
    # whatever happens, no value of a kept scheme is ever cleared.
    cleared = connection.execute(
        update(validation_results)
        .where(columns.id.in_([row.row_id for row in rows]), *_not_kept(schemes))
        .values(checkpoint_path=None)
    ).rowcount
    if cleared != len(rows):
        raise DatabaseUnavailable(
            f"{len(rows) - cleared} of {len(rows)} rows changed while they were being cleared; nothing was cleared, "
            "run it again"
        )


def _not_kept(schemes: Sequence[str]) -> list[Any]:
    """SQL: a checkpoint_path that is set and of no kept scheme."""
    path = validation_results.c.checkpoint_path
    return [path.is_not(None), *(~path.startswith(f"{scheme}://", autoescape=True) for scheme in schemes)]


def _plan(connection: Connection, schemes: tuple[str, ...], *, lock: bool) -> LocalPathPlan:
    columns = validation_results.c
    query = (
        select(columns.id, columns.job_id, columns.epoch, columns.checkpoint_path)
        .where(*_not_kept(schemes))
        .order_by(columns.job_id, columns.epoch, columns.id)
    )
    if lock:
        query = query.with_for_update()
    candidates = [LocalPath(row_id=i, job_id=j, epoch=e, path=p) for i, j, e, p in connection.execute(query)]
    written = _written_by_promotions(connection, {row.job_id for row in candidates})
    rows = [row for row in candidates if clears(row.path, schemes, written.get(row.job_id, set()))]
    return LocalPathPlan(schemes=schemes, rows=rows)


def _written_by_promotions(connection: Connection, job_ids: set[int]) -> dict[int, set[str]]:
    """Per job, every value its promotion records say they wrote (read only for jobs with candidates)."""
    columns = promotions.c
    details: dict[int, list[Mapping[str, Any]]] = {}
    ordered = sorted(job_ids)
    for start in range(0, len(ordered), ROWS_PER_STATEMENT):
        query = select(columns.job_id, columns.details).where(
            columns.job_id.in_(ordered[start : start + ROWS_PER_STATEMENT]),
            columns.outcome.in_([str(Status.PROMOTED), str(Status.DUPLICATE)]),
        )
        for job_id, record in connection.execute(query):
            details.setdefault(int(job_id), []).append(record)
    return {job_id: paths_written(records) for job_id, records in details.items()}


# --- re-promotion --------------------------------------------------------------------------------------------


def staged_jobs(storage: StagingReader, layout: Layout, job_ids: Iterable[int]) -> list[JobRef]:
    """The jobs among ``job_ids`` whose staging holds a manifest (one listing of the staging prefix: the platform's
    rows name a job, not its project, and the keys do)."""
    wanted = set(job_ids)
    found: set[JobRef] = set()
    for item in storage.list_objects(layout.staging_prefix):
        try:
            ref = layout.parse_manifest_key(item.key)
        except LayoutError:
            continue
        if ref.job.job_id in wanted:
            found.add(ref.job)
    return sorted(found, key=lambda job: (job.job_id, job.project_id or 0))


@dataclass(frozen=True)
class Repromoted:
    job: JobRef
    outcome: Outcome | None
    error: str | None = None  # why it was not promoted: a transient failure, or nothing to promote

    def describe(self) -> str:
        if self.outcome is None:
            return f"  {self.job}: failed: {self.error}"
        return f"  {self.job}: {self.outcome.status}: {self.outcome.reason}"


def repromote(promoter: Promoter, jobs: Iterable[JobRef]) -> list[Repromoted]:
    """Re-run each job's promotion of its newest staged attempt (``Promoter.reprocess``)."""
    results: list[Repromoted] = []
    for job in jobs:
        try:
            results.append(Repromoted(job, promoter.reprocess(job)))
        except Rejected as exc:
            results.append(Repromoted(job, None, exc.reason))
        except TransientError as exc:
            results.append(Repromoted(job, None, f"{type(exc).__name__}: {exc}"))
    return results


# --- connections ---------------------------------------------------------------------------------------------


@contextmanager
def _transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction, whatever the engine's default (the store's PostgreSQL engine runs in autocommit; SQLite's
    begins with BEGIN IMMEDIATE)."""
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level="READ COMMITTED")
    with engine.begin() as connection:
        yield connection
