"""Settings, read once from the environment at the edge (handler, CLI) and passed in as values."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL

from ckpt.adapters.db.engine import check_database_url, parse_database_url
from ckpt.adapters.profiles import StorageProfile, profile_for
from ckpt.contract.keys import Layout
from ckpt.errors import ConfigurationError
from ckpt.setting_values import flag, shown_setting

DEFAULT_BUCKET = "vision-platform-prod"


@dataclass(frozen=True)
class Settings:
    bucket: str = DEFAULT_BUCKET
    endpoint_url: str | None = None
    database_url: str | None = None
    database_secret_arn: str | None = None
    # Access keys for an S3-compatible store (R2), where an IAM role means nothing.
    storage_credentials_secret_arn: str | None = None
    staging_prefix: str = "staging/"
    canonical_prefix: str = "checkpoints/"
    uri_scheme: str = "r2"
    # "s3" or "r2": whose documented limits every storage call respects; None = decided by the endpoint.
    storage_profile: str | None = None
    # After a committed promotion, delete the staged best.pt/last.pt it let go of (ckpt.contract.cleanup).
    delete_staged_after_promotion: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        def value(name: str, default: str | None = None) -> str | None:
            return env.get(name) or default  # an empty variable counts as unset, as SAM passes ""

        return cls(
            bucket=value("CHECKPOINT_BUCKET", DEFAULT_BUCKET) or DEFAULT_BUCKET,
            endpoint_url=value("AWS_S3_ENDPOINT_URL"),
            database_url=value("DATABASE_URL"),
            database_secret_arn=value("DATABASE_SECRET_ARN"),
            storage_credentials_secret_arn=value("STORAGE_CREDENTIALS_SECRET_ARN"),
            staging_prefix=value("STAGING_PREFIX", "staging/") or "staging/",
            canonical_prefix=value("CANONICAL_PREFIX", "checkpoints/") or "checkpoints/",
            uri_scheme=value("CHECKPOINT_URI_SCHEME", "r2") or "r2",
            storage_profile=value("STORAGE_PROFILE"),
            delete_staged_after_promotion=flag("DELETE_STAGED_AFTER_PROMOTION", value("DELETE_STAGED_AFTER_PROMOTION")),
        )

    def profile(self) -> StorageProfile:
        try:
            return profile_for(self.storage_profile, self.endpoint_url)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None

    def layout(self) -> Layout:
        try:
            return Layout(
                bucket=self.bucket,
                staging_prefix=self.staging_prefix,
                canonical_prefix=self.canonical_prefix,
                uri_scheme=self.uri_scheme,
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None


def _json_object(secret: str | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    try:
        document = json.loads(secret) if isinstance(secret, str) else secret
    except (ValueError, RecursionError):  # not JSON; a number of 5,000 digits (ValueError); nesting too deep
        document = None
    if not isinstance(document, Mapping):
        raise ConfigurationError(f"{what} secret must be a JSON object")
    return document


STORAGE_CREDENTIAL_FIELDS = ("access_key_id", "secret_access_key")


def storage_credentials_from_secret(secret: str | Mapping[str, Any]) -> dict[str, str]:
    """boto3 credentials from a secret holding ``access_key_id`` and ``secret_access_key``: non-empty JSON strings
    of printable ASCII without spaces, as every access key is. Anything else would fail every request (botocore
    asserts on a key that is not a string; a pasted line break fails every signature), so it is refused here,
    naming the field and never showing its value."""
    document = _json_object(secret, "storage credentials")
    missing = [name for name in STORAGE_CREDENTIAL_FIELDS if document.get(name) in (None, "")]
    if missing:
        raise ConfigurationError(f"storage credentials secret lacks {', '.join(missing)}")
    not_text = [name for name in STORAGE_CREDENTIAL_FIELDS if not isinstance(document[name], str)]
    if not_text:
        raise ConfigurationError(
            f"storage credentials secret: {' and '.join(not_text)} must be "
            f"{'a JSON string' if len(not_text) == 1 else 'JSON strings'} (the key as the store issued it)"
        )
    malformed = [name for name in STORAGE_CREDENTIAL_FIELDS if not re.fullmatch(r"[!-~]+", document[name])]
    if malformed:
        raise ConfigurationError(
            f"storage credentials secret: {', '.join(malformed)} must be printable ASCII without spaces or line "
            "breaks, as access keys are: copy the key again as the store issued it"
        )
    return {
        "aws_access_key_id": document["access_key_id"],
        "aws_secret_access_key": document["secret_access_key"],
    }


def database_url_from_secret(secret: str | Mapping[str, Any]) -> URL:
    """A pg8000 URL from a Secrets Manager secret in the RDS layout (``username``, ``password``, ``host``,
    ``port``, ``dbname``, and optionally ``sslmode``, ``sslrootcert``), or one that holds a ``url``.
    Every problem is a ConfigurationError that names the field and never quotes the password."""
    document = _json_object(secret, "database (RDS layout, or one with a 'url' field)")
    if document.get("url"):
        if not isinstance(document["url"], str):
            raise ConfigurationError("database secret: url must be a string")
        return parse_database_url(document["url"], "the database secret's url")
    engine = document.get("engine")
    if engine is not None and not (isinstance(engine, str) and "postgres" in engine.lower()):
        raise ConfigurationError(f"database secret is for engine {shown_setting(engine)}: only PostgreSQL is supported")
    missing = [name for name in ("username", "password", "host") if not document.get(name)]
    if missing:
        raise ConfigurationError(f"database secret lacks {', '.join(missing)}")
    not_text = [name for name in (*SECRET_TEXT_FIELDS, *SECRET_TLS_FIELDS) if _present_but_not_text(document, name)]
    if not_text:
        raise ConfigurationError(f"database secret: {', '.join(not_text)} must be JSON strings")
    url = URL.create(
        "postgresql+pg8000",
        username=document["username"],
        password=document["password"],
        host=document["host"],
        port=_secret_port(document.get("port")),
        database=document.get("dbname") or document.get("database") or "postgres",
        query={name: document[name] for name in SECRET_TLS_FIELDS if document.get(name)},
    )
    return check_database_url(url, "the database secret")


SECRET_TEXT_FIELDS = ("username", "password", "host", "dbname", "database")
SECRET_TLS_FIELDS = ("sslmode", "sslrootcert")  # "the secret can require TLS": libpq's names and meanings


def _present_but_not_text(document: Mapping[str, Any], name: str) -> bool:
    return document.get(name) is not None and not isinstance(document[name], str)


def _secret_port(value: Any) -> int:
    """The RDS layout's port: a JSON number or a string of ASCII digits; absent means PostgreSQL's 5432.
    The digits are checked before int(), which takes '²' as a digit and refuses 5,000 digits with ValueError."""
    if value is None or value == "":
        return 5432
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,5}", value.strip()):
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    raise ConfigurationError(f"database secret: port {shown_setting(value)} is not a number from 1 to 65535")
