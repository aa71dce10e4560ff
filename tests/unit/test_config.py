"""Settings from the environment (the contract's configuration table) and database URLs from secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from ckpt.config import Settings, database_url_from_secret
from ckpt.contract.keys import Layout
from ckpt.errors import ConfigurationError

VARIABLES = {
    "CHECKPOINT_BUCKET": "bucket",
    "AWS_S3_ENDPOINT_URL": "endpoint_url",
    "DATABASE_URL": "database_url",
    "DATABASE_SECRET_ARN": "database_secret_arn",
    "STAGING_PREFIX": "staging_prefix",
    "CANONICAL_PREFIX": "canonical_prefix",
    "CHECKPOINT_URI_SCHEME": "uri_scheme",
}

# The contract's defaults, written out rather than read from the dataclass.
DEFAULTS = {
    "bucket": "vision-platform-prod",
    "endpoint_url": None,
    "database_url": None,
    "database_secret_arn": None,
    "staging_prefix": "staging/",
    "canonical_prefix": "checkpoints/",
    "uri_scheme": "r2",
}


def fields(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in DEFAULTS}


def test_from_env_defaults_are_the_contract_table() -> None:
    assert fields(Settings.from_env({})) == DEFAULTS


def test_from_env_treats_empty_strings_as_unset() -> None:
    assert fields(Settings.from_env(dict.fromkeys(VARIABLES, ""))) == DEFAULTS


def test_from_env_ignores_unrelated_variables() -> None:
    assert fields(Settings.from_env({"AWS_REGION": "eu-west-1", "BUCKET": "other"})) == DEFAULTS


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHECKPOINT_BUCKET", "vision-platform-staging"),
        ("AWS_S3_ENDPOINT_URL", "https://0123456789abcdef.r2.cloudflarestorage.com"),
        ("DATABASE_URL", "postgresql+pg8000://ckpt:secret@db:5432/platform"),
        ("DATABASE_SECRET_ARN", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ckpt-db-AbCdEf"),
        ("STAGING_PREFIX", "ml/staging/"),
        ("CANONICAL_PREFIX", "ml/checkpoints/"),
        ("CHECKPOINT_URI_SCHEME", "s3"),
    ],
)
def test_from_env_reads_each_variable_into_its_setting(variable: str, value: str) -> None:
    assert fields(Settings.from_env({variable: value})) == {**DEFAULTS, VARIABLES[variable]: value}


def test_sam_local_env_file_gives_usable_settings() -> None:
    env = json.loads((Path(__file__).resolve().parents[2] / "events" / "env.json").read_text())
    settings = Settings.from_env(env["PromoteCheckpointsFunction"])
    assert settings.database_secret_arn is None  # "" in env.json means unset
    assert settings.layout() == Layout(bucket=settings.bucket)


def test_layout_is_built_from_the_settings() -> None:
    settings = Settings.from_env(
        {
            "CHECKPOINT_BUCKET": "models",
            "STAGING_PREFIX": "ml/staging/",
            "CANONICAL_PREFIX": "ml/checkpoints/",
            "CHECKPOINT_URI_SCHEME": "s3",
        }
    )
    assert settings.layout() == Layout(
        bucket="models", staging_prefix="ml/staging/", canonical_prefix="ml/checkpoints/", uri_scheme="s3"
    )


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"STAGING_PREFIX": "staging"}, id="staging-without-slash"),
        pytest.param({"CANONICAL_PREFIX": "/checkpoints/"}, id="canonical-leading-slash"),
        pytest.param({"STAGING_PREFIX": "checkpoints/"}, id="same-prefixes"),
        pytest.param({"STAGING_PREFIX": "data/", "CANONICAL_PREFIX": "data/checkpoints/"}, id="nested-prefixes"),
    ],
)
def test_layout_errors_become_configuration_errors(env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    with pytest.raises(ConfigurationError, match="prefix"):
        settings.layout()


# --- database secrets ---------------------------------------------------------------------------------------

RDS_SECRET = {
    "username": "ckpt_service",
    "password": "p@ss:w/rd?#%",
    "engine": "postgres",
    "host": "platform.cluster-c1a2b3.eu-west-1.rds.amazonaws.com",
    "port": 5432,
    "dbname": "platform",
    "dbClusterIdentifier": "platform",
}


@pytest.mark.parametrize("secret", [RDS_SECRET, json.dumps(RDS_SECRET)], ids=["dict", "json-string"])
def test_rds_secret_becomes_a_pg8000_url(secret: Any) -> None:
    url = database_url_from_secret(secret)
    assert url.drivername == "postgresql+pg8000"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "ckpt_service",
        "p@ss:w/rd?#%",
        "platform.cluster-c1a2b3.eu-west-1.rds.amazonaws.com",
        5432,
        "platform",
    )


def test_rds_secret_url_survives_rendering_with_special_characters_in_the_password() -> None:
    url = database_url_from_secret(RDS_SECRET)
    assert make_url(url.render_as_string(hide_password=False)).password == RDS_SECRET["password"]


@pytest.mark.parametrize(
    ("changes", "port", "database"),
    [
        pytest.param({"port": "6432"}, 6432, "platform", id="port-as-string"),
        pytest.param({"port": None}, 5432, "platform", id="port-null"),
        pytest.param({"dbname": None, "database": "analytics"}, 5432, "analytics", id="database-field"),
        pytest.param({"dbname": None}, 5432, "postgres", id="no-database"),
    ],
)
def test_rds_secret_optional_fields(changes: dict[str, Any], port: int, database: str) -> None:
    secret = {**RDS_SECRET, **changes}
    url = database_url_from_secret({k: v for k, v in secret.items() if v is not None})
    assert (url.port, url.database) == (port, database)


@pytest.mark.parametrize(
    "url",
    ["postgresql+pg8000://ckpt:secret@db.internal:6543/platform", "sqlite:////tmp/ckpt.db"],
)
def test_secret_with_url_field_uses_it(url: str) -> None:
    assert database_url_from_secret({"url": url}) == make_url(url)
    assert database_url_from_secret(json.dumps({"url": url})) == make_url(url)


def test_secret_url_field_wins_over_rds_fields() -> None:
    url = "postgresql+pg8000://other:pw@elsewhere:5432/db"
    assert database_url_from_secret({**RDS_SECRET, "url": url}) == make_url(url)


@pytest.mark.parametrize(
    ("secret", "missing"),
    [
        pytest.param({}, ["username", "password", "host"], id="empty"),
        pytest.param({"username": "u", "password": "p"}, ["host"], id="no-host"),
        pytest.param({"username": "u", "host": "h"}, ["password"], id="no-password"),
        pytest.param({"password": "p", "host": "h", "port": 5432}, ["username"], id="no-username"),
        pytest.param({"username": "u", "password": "", "host": "h"}, ["password"], id="empty-password"),
        pytest.param({"url": "", "engine": "postgres"}, ["username", "password", "host"], id="empty-url"),
    ],
)
def test_secret_missing_fields_is_a_configuration_error_naming_them(secret: dict[str, Any], missing: list[str]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        database_url_from_secret(secret)
    message = str(caught.value)
    for name in ("username", "password", "host"):
        assert (name in message) == (name in missing), f"{name!r} in {message!r}"


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("postgres://not-json", id="plain-text"),
        pytest.param('["username", "password"]', id="json-array"),
    ],
)
def test_secret_that_is_not_a_json_object_is_a_configuration_error(secret: str) -> None:
    with pytest.raises(ConfigurationError):
        database_url_from_secret(secret)


def test_storage_credentials_come_from_their_secret() -> None:
    from ckpt.config import storage_credentials_from_secret

    assert storage_credentials_from_secret('{"access_key_id": "AK", "secret_access_key": "SK"}') == {
        "aws_access_key_id": "AK",
        "aws_secret_access_key": "SK",
    }


@pytest.mark.parametrize(
    ("secret", "message"),
    [('{"access_key_id": "AK"}', "secret_access_key"), ("not json", "JSON object"), ("[1]", "JSON object")],
)
def test_bad_storage_credentials_secrets_are_configuration_errors(secret: str, message: str) -> None:
    from ckpt.config import storage_credentials_from_secret

    with pytest.raises(ConfigurationError, match=message):
        storage_credentials_from_secret(secret)


# --- red-team findings: secrets whose values escaped as raw library errors ------------------------------------

SECRET_TOKEN = "Zq7Xw9Kp3"  # in no field name or message: if it shows up in one, a value leaked


def assert_not_shown(exc: BaseException, *values: str) -> None:
    """No value in the message, the repr, or any exception chained to it."""
    chained: BaseException | None = exc
    while chained is not None:
        for text in (str(chained), repr(chained)):
            for value in values:
                assert value not in text, f"{value!r} leaked in {text!r}"
        chained = chained.__cause__ or chained.__context__


# Findings 1 and 3: the secret's port went through isdigit() and int(): '²' was a ValueError, 5,000 digits too.
@pytest.mark.parametrize(
    "port",
    [
        pytest.param("9" * 5000, id="5000-digits"),
        pytest.param("²", id="superscript-two"),
        pytest.param("\u0665\u0664\u0663\u0662", id="arabic-indic-digits"),
        pytest.param("\uff15\uff14\uff13\uff12", id="fullwidth-digits"),
        pytest.param("+5432", id="plus-sign"),
        pytest.param("5_432", id="underscore"),
        pytest.param("054320", id="six-digits"),
        pytest.param(10**5000, id="5000-digit-number"),  # repr() of it raises ValueError
        pytest.param(float("inf"), id="infinity"),
        pytest.param([5432], id="list"),
        pytest.param({"value": 5432}, id="object"),
    ],
)
def test_a_secret_port_that_is_not_ascii_digits_is_a_configuration_error(port: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"database secret: port .* is not a number from 1 to 65535") as caught:
        database_url_from_secret({**RDS_SECRET, "port": port})
    assert len(str(caught.value)) < 200
    assert_not_shown(caught.value, RDS_SECRET["password"], "99999")


@pytest.mark.parametrize("port", ["6432", " 6432 ", "06432", 6432])
def test_a_secret_port_in_ascii_digits_is_read(port: Any) -> None:
    assert database_url_from_secret({**RDS_SECRET, "port": port}).port == 6432


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param('{"username": "u", "password": "p", "host": "h", "port": ' + "9" * 5000 + "}", id="json-bigint"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="json-nested-too-deep"),
        pytest.param('{"a": ' * 100_000 + "1" + "}" * 100_000, id="json-objects-too-deep"),
    ],
)
def test_a_secret_json_cannot_parse_is_a_configuration_error(secret: str) -> None:
    from ckpt.config import storage_credentials_from_secret

    for read in (database_url_from_secret, storage_credentials_from_secret):
        with pytest.raises(ConfigurationError, match="must be a JSON object"):
            read(secret)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"username": "ckpt\x00service"}, id="user-nul"),
        pytest.param({"username": "u" * 64}, id="user-too-long"),
        pytest.param({"username": "ckpt\ud800"}, id="user-surrogate"),
        pytest.param({"dbname": "plat\x00form"}, id="dbname-nul"),
        pytest.param({"password": f"{SECRET_TOKEN}\x00"}, id="password-nul"),
        pytest.param({"password": f"{SECRET_TOKEN}\udcff"}, id="password-surrogate"),
        pytest.param({"sslrootcert": "/certs/\x00ca.pem"}, id="sslrootcert-nul"),
        pytest.param({"sslrootcert": "/certs/\udcffca.pem"}, id="sslrootcert-surrogate"),
        pytest.param({"sslmode": f"{SECRET_TOKEN}" * 20}, id="sslmode-long"),
        pytest.param({"engine": 10**5000}, id="engine-huge-number"),
        pytest.param({"engine": ["postgres"]}, id="engine-list"),
    ],
)
def test_secret_fields_postgresql_cannot_take_are_configuration_errors(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="database secret") as caught:
        database_url_from_secret({**RDS_SECRET, **changes})
    assert len(str(caught.value)) < 500
    assert_not_shown(caught.value, RDS_SECRET["password"], SECRET_TOKEN)


# Finding 5: a numeric or list secret_access_key, or an object as access_key_id, reached botocore, which failed
# every record with a bare AssertionError.
@pytest.mark.parametrize(
    ("secret", "field"),
    [
        pytest.param({"access_key_id": "AK", "secret_access_key": 12345}, "secret_access_key", id="number"),
        pytest.param({"access_key_id": "AK", "secret_access_key": [SECRET_TOKEN]}, "secret_access_key", id="list"),
        pytest.param({"access_key_id": {"id": SECRET_TOKEN}, "secret_access_key": "SK"}, "access_key_id", id="object"),
        pytest.param({"access_key_id": True, "secret_access_key": "SK"}, "access_key_id", id="bool"),
        pytest.param({"access_key_id": "AK", "secret_access_key": 1.5e300}, "secret_access_key", id="float"),
        pytest.param({"access_key_id": "", "secret_access_key": "SK"}, "access_key_id", id="empty"),
        pytest.param({"access_key_id": "AK", "secret_access_key": []}, "secret_access_key", id="empty-list"),
        pytest.param({"access_key_id": "AK", "secret_access_key": 0}, "secret_access_key", id="zero"),
        pytest.param({"access_key_id": "AK", "secret_access_key": f"{SECRET_TOKEN}\n"}, "secret_access_key", id="nl"),
        pytest.param({"access_key_id": f" {SECRET_TOKEN}", "secret_access_key": "SK"}, "access_key_id", id="space"),
        pytest.param(
            {"access_key_id": "AK", "secret_access_key": f"{SECRET_TOKEN}\x00"}, "secret_access_key", id="nul"
        ),
        pytest.param(
            {"access_key_id": "AK", "secret_access_key": f"{SECRET_TOKEN}é"}, "secret_access_key", id="accent"
        ),
    ],
)
def test_storage_credentials_must_be_non_empty_strings_and_the_error_names_the_field(
    secret: dict[str, Any], field: str
) -> None:
    from ckpt.config import storage_credentials_from_secret
    from ckpt.service import s3_client

    settings = Settings(storage_credentials_secret_arn="arn:aws:secretsmanager:eu-west-1:123456789012:secret:r2")
    for read in (
        lambda: storage_credentials_from_secret(secret),
        lambda: storage_credentials_from_secret(json.dumps(secret)),
        lambda: s3_client(settings, lambda _arn: json.dumps(secret)),
    ):
        with pytest.raises(ConfigurationError, match=f"storage credentials secret.*{field}") as caught:
            read()
        other = "secret_access_key" if field == "access_key_id" else "access_key_id"
        assert other not in str(caught.value)  # only the field that is wrong is named
        assert_not_shown(caught.value, SECRET_TOKEN, "12345", "1.5e+300")


def test_storage_credentials_accept_keys_with_the_punctuation_aws_secret_keys_have() -> None:
    from ckpt.config import storage_credentials_from_secret

    keys = {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCY+EXAMPLEKEY"}
    assert storage_credentials_from_secret(keys) == {
        "aws_access_key_id": keys["access_key_id"],
        "aws_secret_access_key": keys["secret_access_key"],
    }


# Finding 7: the secret's url echoed the values of its query parameters.
@pytest.mark.parametrize("query", [f"pwd={SECRET_TOKEN}", f"token={SECRET_TOKEN}", f"options=-c%20x%3D{SECRET_TOKEN}"])
def test_the_secret_url_never_shows_a_parameter_value(query: str) -> None:
    with pytest.raises(ConfigurationError, match=r"secret's url .*does not understand") as caught:
        database_url_from_secret({"url": f"postgresql+pg8000://ckpt:pw@db.internal/platform?{query}"})
    assert_not_shown(caught.value, SECRET_TOKEN)
