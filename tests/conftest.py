"""Shared fixtures: a real PostgreSQL and SQLite behind the same tests, moto's S3, and a trainer stand-in.

PostgreSQL is required, never skipped: a missing server fails the run (CI starts it in .ci/run).
``CKPT_TEST_PG_ADMIN_URL`` points the tests at another server.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ckpt.adapters.db.engine import make_engine
from ckpt.adapters.db.store import PromotionStore
from ckpt.adapters.storage import S3Storage, make_client
from ckpt.contract.keys import Layout
from ckpt.promotion.promoter import Promoter
from tests.moto_conformance import enforce_copy_conditions
from tests.support import BUCKET, Trainer, reset_database

enforce_copy_conditions()

PG_ADMIN_URL = os.environ.get("CKPT_TEST_PG_ADMIN_URL", "postgresql+pg8000://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(autouse=True)
def ckpt_logs_reach_pytest() -> Iterator[None]:
    """Importing a function's handler gives the ``ckpt`` logger Powertools' JSON handler and stops it from
    propagating (in Lambda the root logger prints too). In tests the root logger is pytest's capture (caplog):
    let the package's records reach it whatever was imported before."""
    package = logging.getLogger("ckpt")
    saved = package.propagate
    package.propagate = True
    yield
    package.propagate = saved


# --- databases -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A database of its own on the real PostgreSQL server, dropped at the end of the session."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"ckpt_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except SQLAlchemyError as exc:
        pytest.fail(
            f"PostgreSQL is required for these tests and was not reachable at {PG_ADMIN_URL}: {exc}. "
            "Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            pytrace=False,
        )
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test that takes this runs on both databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ckpt.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def _fresh_engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url, lock_timeout_seconds=5)
    reset_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """For the tests of PostgreSQL-only behaviour: a reset database on the real server."""
    yield from _fresh_engine(pg_url)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A reset database, on SQLite and on PostgreSQL."""
    yield from _fresh_engine(database_url)


@pytest.fixture
def store(engine: Engine) -> PromotionStore:
    return PromotionStore(engine)


# --- object store ---------------------------------------------------------------------------------------


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_S3_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def s3(aws_credentials: None) -> Iterator[Any]:
    """An S3 client on moto's in-process mock, with the bucket created."""
    from moto import mock_aws

    with mock_aws():
        client = make_client()
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def layout() -> Layout:
    return Layout(bucket=BUCKET)


@pytest.fixture
def storage(s3: Any) -> S3Storage:
    return S3Storage(s3, BUCKET)


@pytest.fixture
def promoter(layout: Layout, storage: S3Storage, store: PromotionStore) -> Promoter:
    return Promoter(layout, storage, store)


# --- the trainer's side -----------------------------------------------------------------------------------


@pytest.fixture
def trainer(s3: Any, layout: Layout) -> Trainer:
    return Trainer(s3, layout)
