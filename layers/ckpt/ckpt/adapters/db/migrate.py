"""``ckpt db upgrade``: create or upgrade the service's own tables with Alembic.

Only the tables of ``service_metadata`` are ever touched; the version is kept in ``ckpt_alembic_version``
so a platform that uses Alembic itself keeps its own ``alembic_version``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from ckpt.adapters.db.schema import VERSION_TABLE

MIGRATIONS = Path(__file__).with_name("migrations")


def _config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    # In a transaction, whatever the engine's own default (the store's PostgreSQL engine runs in autocommit):
    # PostgreSQL's DDL is transactional, so a failed upgrade leaves the tables as they were.
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level="READ COMMITTED")
    command.upgrade(_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()
