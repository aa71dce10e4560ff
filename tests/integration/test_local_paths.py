"""``ckpt migrate-local-paths`` (the seed's migration step 2) on SQLite and PostgreSQL, with moto's S3."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, text, update

from ckpt.adapters.db.schema import cleared_paths, path_migrations, validation_results
from ckpt.cli import main
from ckpt.contract.keys import JobRef, Layout
from ckpt.errors import DatabaseUnavailable
from ckpt.operations import local_paths
from ckpt.operations.local_paths import clear_local_paths, plan_local_paths
from ckpt.promotion.promoter import Promoter
from tests.support import BUCKET, add_epochs, attempt, paths

OLD_BEST = "/data/outputs/job_41/weights/best.pt"
OLD_LAST = "/data/outputs/job_41/weights/last.pt"


def job(job_id: int) -> JobRef:
    return JobRef(job_id=job_id, project_id=7)


def set_path(engine, job_id: int, epoch: int, path: str | None) -> None:
    """Act as the platform's old code: write a checkpoint_path during training."""
    rows = validation_results.c
    with engine.begin() as connection:
        connection.execute(
            update(validation_results).where(rows.job_id == job_id, rows.epoch == epoch).values(checkpoint_path=path)
        )


def table(engine) -> list[tuple]:
    rows = validation_results.c
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(select(validation_results).order_by(rows.id))]


def migrations(engine) -> list[dict]:
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(select(path_migrations)).mappings()]


def cleared(engine) -> list[tuple]:
    columns = cleared_paths.c
    query = select(columns.migration_id, columns.job_id, columns.epoch, columns.checkpoint_path).order_by(columns.id)
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


@pytest.fixture
def mixed(engine, trainer, promoter):
    """Old local paths, a promoted job, a job promoted later whose other rows the old code wrote, a foreign URI."""
    add_epochs(engine, 41, {1: 0.1, 2: 0.2, 3: 0.15})  # the old behaviour: a local path on every epoch
    set_path(engine, 41, 1, OLD_BEST)
    set_path(engine, 41, 2, OLD_BEST)
    set_path(engine, 41, 3, OLD_LAST)
    add_epochs(engine, 42, {18: 0.6, 19: 0.5, 20: 0.55, 21: 0.4})  # promoted, then epoch 21 written the old way
    trainer.finish(attempt(1, job(42)))
    promoter.promote_key(BUCKET, promoter.layout.manifest_key(attempt(1, job(42))), trigger="sqs:s3")
    set_path(engine, 42, 21, "runs\\job_42\\weights\\last.pt")
    add_epochs(engine, 43, {1: 0.3})  # some other store's URI: not r2://, so not the UI's ✓
    set_path(engine, 43, 1, "s3://elsewhere/job_43/best.pt")
    add_epochs(engine, 44, {1: 0.3, 2: 0.4})  # nothing written
    return engine


R2_BEST = f"r2://{BUCKET}/checkpoints/projects/7/jobs/42/best.pt"
R2_LAST = f"r2://{BUCKET}/checkpoints/projects/7/jobs/42/last.pt"


def test_the_dry_run_counts_per_job_and_changes_nothing(mixed, layout):
    before = table(mixed)

    plan = plan_local_paths(mixed, layout)

    assert plan.per_job == {41: 3, 42: 1, 43: 1}
    assert [(row.job_id, row.epoch, row.path) for row in plan.sample(3)] == [
        (41, 1, OLD_BEST),
        (42, 21, "runs\\job_42\\weights\\last.pt"),
        (43, 1, "s3://elsewhere/job_43/best.pt"),
    ]
    assert table(mixed) == before
    assert migrations(mixed) == []


def test_the_run_clears_only_paths_that_are_no_r2_uri_and_records_them(mixed, layout):
    result = clear_local_paths(mixed, layout)

    assert paths(mixed, 41) == {1: None, 2: None, 3: None}
    assert paths(mixed, 42) == {18: R2_BEST, 19: None, 20: R2_LAST, 21: None}
    assert paths(mixed, 43) == {1: None}
    [record] = migrations(mixed)
    assert (record["id"], record["rows_cleared"], record["jobs_affected"], record["kept_schemes"]) == (
        result.migration_id,
        5,
        3,
        "r2",
    )
    assert record["details"] == {"per_job": {"41": 3, "42": 1, "43": 1}}
    assert cleared(mixed) == [
        (result.migration_id, 41, 1, OLD_BEST),
        (result.migration_id, 41, 2, OLD_BEST),
        (result.migration_id, 41, 3, OLD_LAST),
        (result.migration_id, 42, 21, "runs\\job_42\\weights\\last.pt"),
        (result.migration_id, 43, 1, "s3://elsewhere/job_43/best.pt"),
    ]

    # nothing left: a second run changes and records nothing
    assert clear_local_paths(mixed, layout).migration_id is None
    assert len(migrations(mixed)) == 1


def test_the_run_is_one_transaction(mixed, layout, monkeypatch):
    before = table(mixed)
    calls = 0
    clear_rows = local_paths._clear_rows

    def fail_on_the_second_statement(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise DatabaseUnavailable("connection lost")
        clear_rows(*args, **kwargs)

    monkeypatch.setattr(local_paths, "_clear_rows", fail_on_the_second_statement)

    with pytest.raises(DatabaseUnavailable):
        clear_local_paths(mixed, layout, rows_per_statement=2)

    assert calls == 2
    assert table(mixed) == before
    assert migrations(mixed) == []
    assert cleared(mixed) == []


def test_it_never_clears_what_a_promotion_wrote_under_another_scheme(engine, s3, storage, store, trainer):
    """A deployment that writes s3:// URIs (CHECKPOINT_URI_SCHEME=s3) keeps them; and a value a promotion record
    says it wrote is kept even after the scheme changed back to r2."""
    s3_layout = Layout(bucket=BUCKET, uri_scheme="s3")
    add_epochs(engine, 42, {18: 0.6, 20: 0.5})
    trainer.finish(attempt(1, job(42)))
    Promoter(s3_layout, storage, store).promote_key(
        BUCKET, s3_layout.manifest_key(attempt(1, job(42))), trigger="sqs:s3"
    )
    written = paths(engine, 42)
    assert written[18] == f"s3://{BUCKET}/checkpoints/projects/7/jobs/42/best.pt"

    assert plan_local_paths(engine, s3_layout).rows == []
    assert plan_local_paths(engine, Layout(bucket=BUCKET)).rows == []  # the records name them
    assert clear_local_paths(engine, Layout(bucket=BUCKET)).migration_id is None
    assert paths(engine, 42) == written


def test_the_run_plans_again_inside_its_transaction(mixed, layout):
    plan = plan_local_paths(mixed, layout)
    set_path(mixed, 41, 3, f"r2://{BUCKET}/checkpoints/projects/7/jobs/41/last.pt")  # promoted after the dry run

    result = clear_local_paths(mixed, layout)

    assert paths(mixed, 41)[3] == f"r2://{BUCKET}/checkpoints/projects/7/jobs/41/last.pt"
    assert len(result.plan.rows) == len(plan.rows) - 1


def test_a_promotion_committing_during_the_run_keeps_its_uri(pg_engine, layout):
    """A promotion's transaction holds a row the run wants: the run's FOR UPDATE waits for its commit, then sees
    the row's new value (an r2:// URI) and leaves it alone."""
    add_epochs(pg_engine, 41, {1: 0.1, 2: 0.2})
    set_path(pg_engine, 41, 1, OLD_BEST)
    set_path(pg_engine, 41, 2, OLD_LAST)
    promoted = f"r2://{BUCKET}/checkpoints/projects/7/jobs/41/last.pt"
    rows = validation_results.c
    with pg_engine.connect() as promotion:
        promotion.exec_driver_sql("BEGIN")
        promotion.execute(
            update(validation_results).where(rows.job_id == 41, rows.epoch == 2).values(checkpoint_path=promoted)
        )
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(clear_local_paths, pg_engine, layout)
            time.sleep(0.5)
            assert not run.done()  # waiting for the promotion's row lock
            promotion.exec_driver_sql("COMMIT")
            result = run.result(timeout=10)

    assert paths(pg_engine, 41) == {1: None, 2: promoted}
    assert [(row.epoch, row.path) for row in result.plan.rows] == [(1, OLD_BEST)]
    assert cleared(pg_engine) == [(result.migration_id, 41, 1, OLD_BEST)]


@pytest.fixture
def cli_env(monkeypatch, database_url, engine, s3):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CHECKPOINT_BUCKET", BUCKET)


def test_the_command_dry_run_then_run_then_repromote(cli_env, engine, trainer, capsys):
    # job 41: local paths of the old behaviour, and its staging still holds a manifest (never promoted)
    add_epochs(engine, 41, {18: 0.6, 19: 0.5, 20: 0.55})
    for epoch in (18, 19, 20):
        set_path(engine, 41, epoch, OLD_BEST)
    trainer.finish(attempt(1, job(41)))
    # job 43: local paths and nothing staged
    add_epochs(engine, 43, {1: 0.2})
    set_path(engine, 43, 1, "/tmp/job_43/best.pt")
    before = table(engine)

    assert main(["migrate-local-paths", "--dry-run", "--repromote", "--sample", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("validation_results: 4 checkpoint_path values in 2 jobs to clear (kept: r2:// URIs")
    assert out[1:3] == ["  job 41: 3", "  job 43: 1"]
    assert out[3:6] == ["sample:", f"  job 41 epoch 18: {OLD_BEST}", "  job 43 epoch 1: /tmp/job_43/best.pt"]
    assert out[-2:] == [
        "would re-promote (staging holds a manifest): job 41 of project 7",
        "dry run: nothing changed",
    ]
    assert table(engine) == before

    assert main(["migrate-local-paths", "--repromote"]) == 0
    out = capsys.readouterr().out
    assert "cleared 4 checkpoint_path values in 2 jobs in one transaction" in out
    assert "job 41 of project 7: promoted" in out
    assert paths(engine, 41) == {
        18: f"r2://{BUCKET}/checkpoints/projects/7/jobs/41/best.pt",
        19: None,
        20: f"r2://{BUCKET}/checkpoints/projects/7/jobs/41/last.pt",
    }
    assert paths(engine, 43) == {1: None}


def test_the_command_asks_for_the_upgrade_when_the_record_table_is_missing(cli_env, engine, capsys):
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE ckpt_cleared_paths"))

    assert main(["migrate-local-paths", "--dry-run"]) == 2
    assert "missing tables ckpt_cleared_paths: run `ckpt db upgrade`" in capsys.readouterr().err
