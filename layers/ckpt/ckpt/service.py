"""Wiring: build the promotion from settings. The handler and the CLI both start here."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from ckpt.adapters.db.engine import make_engine, parse_database_url
from ckpt.adapters.db.store import PromotionStore
from ckpt.adapters.storage import S3Storage, make_client
from ckpt.adapters.threads import Carry, ThreadedCalls
from ckpt.config import Settings, database_url_from_secret, storage_credentials_from_secret
from ckpt.errors import ConfigurationError
from ckpt.promotion.cleanup import StagingCleanup
from ckpt.promotion.promoter import Promoter

SecretReader = Callable[[str], str]


def read_secret(arn: str) -> str:
    """A Secrets Manager secret's value, read with plain boto3: for the CLI and trainers (the functions read
    theirs with Powertools, cached, in promote_checkpoints/secrets.py)."""
    import boto3

    return str(boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"])


def database_url(settings: Settings, read_secret: SecretReader | None = None) -> URL:
    """The checked database URL; any problem with it is a ConfigurationError that never shows the password."""
    if settings.database_url:
        return parse_database_url(settings.database_url, "DATABASE_URL")
    if settings.database_secret_arn:
        if read_secret is None:
            raise ConfigurationError("DATABASE_SECRET_ARN is set but no secret reader was given")
        return database_url_from_secret(read_secret(settings.database_secret_arn))
    raise ConfigurationError(
        "no database configured: set DATABASE_URL (e.g. sqlite:///ckpt.db or postgresql+pg8000://…) "
        "or DATABASE_SECRET_ARN"
    )


def engine_from_settings(settings: Settings, read_secret: SecretReader | None = None) -> Engine:
    """The engine, made without connecting: a malformed URL, an unsupported database or an unreadable
    sslrootcert raise ConfigurationError here; TLS failures that only a server can reveal do at first connect."""
    return make_engine(database_url(settings, read_secret))


def s3_client(settings: Settings, read_secret: SecretReader | None = None) -> object:
    credentials = None
    if settings.storage_credentials_secret_arn:
        if read_secret is None:
            raise ConfigurationError("STORAGE_CREDENTIALS_SECRET_ARN is set but no secret reader was given")
        credentials = storage_credentials_from_secret(read_secret(settings.storage_credentials_secret_arn))
    return make_client(settings.endpoint_url, credentials=credentials)


def build_promoter(
    settings: Settings, engine: Engine, read_secret: SecretReader | None = None, carry: Carry | None = None
) -> Promoter:
    """The promotion wired to real adapters; fails early if the database lacks a table it needs. ``carry``: what
    a call made in another thread needs of the caller's (the function's trace entity)."""
    store = PromotionStore(engine)
    check_schema(store)
    client = s3_client(settings, read_secret)
    layout = settings.layout()
    storage = S3Storage(client, settings.bucket, profile=settings.profile())
    cleanup = StagingCleanup(layout, storage) if settings.delete_staged_after_promotion else None
    return Promoter(layout=layout, storage=storage, store=store, cleanup=cleanup, calls=ThreadedCalls(carry=carry))


def check_schema(store: PromotionStore) -> None:
    """Fail early, with the fix in the message, when a table the promotion needs is missing."""
    missing = store.missing_tables()
    if missing:
        hint = (
            "run `ckpt db upgrade`"
            if any(name.startswith("ckpt_") for name in missing)
            else "validation_results is the platform's table and must exist before promotions run"
        )
        raise ConfigurationError(f"missing tables {', '.join(missing)}: {hint}")
