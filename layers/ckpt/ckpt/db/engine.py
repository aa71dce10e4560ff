"""Engines for the two supported databases, each set up so a promotion can lock its job.

- PostgreSQL (pg8000): per-job advisory transaction locks; ``lock_timeout`` so a waiting worker gives up
  (and is retried) instead of outliving its Lambda; ``idle_in_transaction_session_timeout`` so a worker
  that dies mid-promotion cannot hold a lock for ever.
- SQLite (the embedded local default): every transaction is ``BEGIN IMMEDIATE``, a database-wide write
  lock taken up front, because SQLite's deferred transactions would otherwise let two writers read the
  same state and then fail on upgrade.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url


def make_engine(url: str | URL, *, lock_timeout_seconds: int = 30, idle_timeout_seconds: int = 900) -> Engine:
    url = make_url(url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, lock_timeout_seconds)
    if backend == "postgresql":
        return _postgresql_engine(url, lock_timeout_seconds, idle_timeout_seconds)
    raise ValueError(f"unsupported database {backend!r}: use postgresql+pg8000://… or sqlite:///…")


def _sqlite_engine(url: URL, lock_timeout_seconds: int) -> Engine:
    engine = create_engine(url, connect_args={"timeout": lock_timeout_seconds})

    @event.listens_for(engine, "connect")
    def _take_over_transactions(dbapi_connection: Any, _record: Any) -> None:
        # Stop pysqlite from issuing its own BEGIN, so the "begin" hook below decides the kind.
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _postgresql_engine(url: URL, lock_timeout_seconds: int, idle_timeout_seconds: int) -> Engine:
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+pg8000")
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=1,  # one Lambda instance handles one batch at a time
        max_overflow=2,
        connect_args={
            "application_name": "checkpoint-promotion",
            "timeout": 10,
            "startup_params": {
                "lock_timeout": f"{lock_timeout_seconds}s",
                "idle_in_transaction_session_timeout": f"{idle_timeout_seconds}s",
            },
        },
    )
