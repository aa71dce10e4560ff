"""The database adapter on the real engines: migrations, NULL/NaN metrics, locking, failures."""

from __future__ import annotations

import math

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, inspect, text

from ckpt.adapters.db import migrate
from ckpt.adapters.db.engine import make_engine
from ckpt.adapters.db.schema import VERSION_TABLE, service_metadata
from ckpt.adapters.db.store import PromotionStore
from ckpt.contract.keys import JobRef
from ckpt.contract.rules import best_epoch, last_epoch
from ckpt.errors import DatabaseUnavailable
from tests.support import add_epochs

JOB = JobRef(job_id=42, project_id=7)


def _drop_everything(engine) -> None:
    with engine.begin() as connection:
        service_tables = [table.name for table in reversed(service_metadata.sorted_tables)]  # dependents first
        for table in (*service_tables, VERSION_TABLE, "validation_results", "alembic_version"):
            connection.execute(text(f"DROP TABLE IF EXISTS {table}"))


def test_upgrade_creates_only_the_service_tables_and_leaves_the_platforms_alone(database_url):
    engine = make_engine(database_url)
    _drop_everything(engine)
    with engine.begin() as connection:  # the platform's own Alembic bookkeeping
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('platform_rev_9')"))

    migrate.upgrade(engine)
    migrate.upgrade(engine)  # idempotent

    tables = set(inspect(engine).get_table_names())
    assert tables == {"alembic_version", VERSION_TABLE, *service_metadata.tables}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "platform_rev_9"
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


def test_the_migrations_build_exactly_the_tables_the_code_uses(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "version_table": VERSION_TABLE,
                # other tests leave platform tables behind; only the service's tables are compared
                "include_name": lambda name, type_, _: type_ != "table" or name in service_metadata.tables,
            },
        )
        assert compare_metadata(context, service_metadata) == []


def test_best_epoch_ignores_null_and_nan_metrics(engine, database_url):
    # PostgreSQL sorts NULL first under DESC and NaN above every number, so a naive
    # ORDER BY primary_metric_value DESC LIMIT 1 would return epoch 3 or 4 there.
    add_epochs(engine, 42, {1: 0.2, 2: 0.7, 3: None, 4: math.nan, 5: 0.5})

    metrics = PromotionStore(engine).snapshot(JOB).rows

    assert best_epoch(metrics, "max") == 2
    assert best_epoch(metrics, "min") == 1
    assert last_epoch(metrics) == 5


def test_postgresql_really_sorts_null_and_nan_first_under_desc(pg_engine):
    """What the rule above guards against, on the real server (SQLite stores NaN as NULL instead)."""
    add_epochs(pg_engine, 42, {1: 0.2, 2: 0.7, 3: math.nan, 4: None})
    with pg_engine.connect() as connection:
        order = connection.execute(
            text("SELECT epoch FROM validation_results WHERE job_id = 42 ORDER BY primary_metric_value DESC")
        ).scalars()
        assert list(order) == [4, 3, 2, 1]
    values = {m.epoch: m.value for m in PromotionStore(pg_engine).snapshot(JOB).rows}
    assert math.isnan(values[3])
    assert values[4] is None
    assert best_epoch(PromotionStore(pg_engine).snapshot(JOB).rows) == 2


def test_a_job_lock_held_elsewhere_times_out_as_a_transient_error(database_url, engine):
    impatient = PromotionStore(make_engine(database_url, lock_timeout_seconds=1))
    holder = PromotionStore(engine)

    with holder.job(JOB), pytest.raises(DatabaseUnavailable):  # noqa: SIM117 - the lock must be held
        with impatient.job(JOB):
            pass
    impatient.engine.dispose()


def test_locks_on_different_jobs_do_not_wait_for_each_other_on_postgresql(pg_url, pg_engine):
    impatient = PromotionStore(make_engine(pg_url, lock_timeout_seconds=1))

    with PromotionStore(pg_engine).job(JOB), impatient.job(JobRef(job_id=43, project_id=7)) as tx:
        assert tx.snapshot().state is None
    impatient.engine.dispose()


def test_an_unreachable_database_is_a_transient_error():
    store = PromotionStore(make_engine("postgresql+pg8000://postgres@127.0.0.1:1/none"))
    with pytest.raises(DatabaseUnavailable):
        store.snapshot(JOB)


def test_missing_tables_are_named(database_url):
    engine = make_engine(database_url)
    _drop_everything(engine)
    assert PromotionStore(engine).missing_tables() == ["ckpt_job_state", "ckpt_promotions", "validation_results"]
    engine.dispose()


def test_values_the_database_refuses_are_permanent_not_retried(pg_engine):
    from ckpt.contract.outcome import Outcome, Status
    from ckpt.errors import Rejected

    add_epochs(pg_engine, 42, {1: 0.5})
    outcome = Outcome(status=Status.PROMOTED, reason="", bucket="b", manifest_key="k", trigger="test")
    with pytest.raises(Rejected, match="too long"), PromotionStore(pg_engine).job(JOB) as tx:
        tx.write(outcome, {1: "r2://b/" + "k" * 600})  # checkpoint_path is VARCHAR(500)


def test_a_connection_the_server_closed_while_idle_is_replaced_before_use(pg_url, pg_engine, monkeypatch):
    monkeypatch.setattr("ckpt.adapters.db.engine.PING_AFTER_IDLE_SECONDS", 0.0)
    engine = make_engine(pg_url)
    store = PromotionStore(engine)
    with engine.connect() as connection:
        first = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    with make_engine(pg_url).connect() as admin:  # as RDS, a proxy or a NAT does to an idle connection
        admin.exec_driver_sql(f"SELECT pg_terminate_backend({first})")

    assert store.snapshot(JOB).state is None  # not DatabaseUnavailable: the ping found it gone
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != first
    engine.dispose()


def test_a_connection_in_use_is_not_pinged(pg_url, pg_engine):
    engine = make_engine(pg_url)
    store = PromotionStore(engine)
    store.snapshot(JOB)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    store.snapshot(JOB)

    assert len(statements) == 1  # the snapshot itself, no SELECT 1 before it
    engine.dispose()
