"""Alembic environment for the service's own tables (run through ckpt.adapters.db.migrate, not the alembic CLI)."""

from alembic import context

from ckpt.adapters.db.schema import VERSION_TABLE, service_metadata

engine = context.config.attributes["engine"]


def include_object(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    # Autogenerate must never propose changes to tables the platform owns.
    return type_ != "table" or name in service_metadata.tables


with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=service_metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
