"""Database URLs: every malformed one is a ConfigurationError that says what to fix and never shows the password;
libpq's TLS parameters become pg8000's ssl_context, never raw keywords; the TLS policy and its fallbacks."""

from __future__ import annotations

import itertools
import json
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from pg8000.exceptions import DatabaseError, InterfaceError
from sqlalchemy.engine import URL

from ckpt.adapters.db.engine import (
    SHOWN_PARAMETERS,
    SUPPORTED_PARAMETERS,
    TlsPolicy,
    make_engine,
    open_connection,
    parse_database_url,
    redacted,
    ssl_context_for,
    tls_policy,
)
from ckpt.config import Settings, database_url_from_secret
from ckpt.errors import ConfigurationError
from ckpt.service import database_url, engine_from_settings
from tests.support import self_signed_ca_pem

# Three tokens no URL part ever contains by chance: if one shows up in a message, a password leaked.
TOKENS = ("Zq7", "Xw9", "Kp3")
SPECIALS = ("@", ":", "/", "#", "?", "%", " ", "&", "=")
HOSTILE_PASSWORDS = [f"{TOKENS[0]}{a}{TOKENS[1]}{b}{TOKENS[2]}" for a, b in itertools.product(SPECIALS, repeat=2)] + [
    f"@{TOKENS[0]}",
    f"{TOKENS[0]}@",
    f"{TOKENS[0]}@{TOKENS[1]}:5432",
    f"{TOKENS[0]}:{TOKENS[1]}@db.internal:5432/{TOKENS[2]}",
    f"{TOKENS[0]}/{TOKENS[1]}@other-host",
    f"{TOKENS[0]}://{TOKENS[1]}",
    f"{TOKENS[0]}\t{TOKENS[1]}",
    f"{TOKENS[0]}@{TOKENS[1]}@{TOKENS[2]}@",
]


def url_with_raw_password(password: str, user: str = "ckpt", tail: str = "db.internal:5432/platform") -> str:
    """The URL as people write it by hand: the password pasted in, not percent-encoded."""
    return f"postgresql+pg8000://{user}:{password}@{tail}"


def assert_hidden(exc: BaseException, *secrets: str) -> None:
    """No token of ``secrets`` in the message, the repr, or any exception chained to it."""
    shown = [str(exc), repr(exc)]
    chained: BaseException | None = exc
    while chained is not None:
        shown += [str(chained), repr(chained)]
        chained = chained.__cause__ or chained.__context__
    tokens = [token for secret in secrets for token in TOKENS if token in secret] or list(secrets)
    for text in shown:
        for token in tokens:
            assert token not in text, f"{token!r} leaked in {text!r}"


# --- the class: a hostile password either parses exactly or is an error that hides it -------------------------


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
@pytest.mark.parametrize("read", [parse_database_url, make_engine], ids=["parse", "make_engine"])
def test_a_raw_password_is_read_exactly_or_refused_without_showing_it(password: str, read: Callable[..., Any]) -> None:
    text = url_with_raw_password(password)
    try:
        result = read(text)
    except ConfigurationError as exc:
        assert_hidden(exc, password)
        assert "percent-encode" in str(exc)
        assert exc.__context__ is None and exc.__cause__ is None  # no library error, with its text, is chained
        return
    url = result if read is parse_database_url else result.url
    # Accepted only when nothing was misread: the whole password, and the host the writer meant.
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "ckpt",
        password,
        "db.internal",
        5432,
        "platform",
    )


@pytest.mark.parametrize(
    "password",
    [
        "Zq7@Xw9",
        "Zq7@Xw9:Kp3",
        "Zq7:Xw9@Kp3",
        "Zq7/Xw9@Kp3",
        "Zq7#Xw9@Kp3",
        "Zq7?Xw9@Kp3",
        "Zq7@Xw9/Kp3",
        "Zq7@Xw9@Kp3",
    ],
)
def test_an_unescaped_at_sign_in_the_password_is_refused_naming_the_fix(password: str) -> None:
    with pytest.raises(ConfigurationError, match="more than one '@'") as caught:
        parse_database_url(url_with_raw_password(password), "DATABASE_URL")
    assert str(caught.value).startswith("DATABASE_URL (postgresql+pg8000://***@db.internal:5432/platform)")
    assert "%40" in str(caught.value)
    assert_hidden(caught.value, password)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        pytest.param("postgresql+pg8000://ck/pt:Zq7Xw9@db.internal/platform", "Zq7Xw9", id="slash-in-user"),
        pytest.param("postgresql+pg8000://:Zq7Xw9@db.internal/platform", "Zq7Xw9", id="no-user"),
        pytest.param("postgresql+pg8000://ckpt:Zq7Xw9/platform", "Zq7Xw9", id="password-without-host"),
        pytest.param("postgresql+pg8000://ckpt:Zq7/Xw9", "Zq7/Xw9", id="password-with-slash-without-host"),
        pytest.param("postgresql+pg8000://ckpt:Zq7Xw9@db.internal:54x32/platform", "Zq7Xw9", id="port-not-a-number"),
        pytest.param("postgresql+pg8000://ckpt:Zq7Xw9@db.internal:/platform", "Zq7Xw9", id="port-empty"),
        pytest.param("postgresql+pg8000://ckpt:Zq7Xw9@db.internal:99999/platform", "Zq7Xw9", id="port-too-large"),
        pytest.param("postgresql+pg8000://ckpt:Zq7Xw9@db.internal:0/platform", "Zq7Xw9", id="port-zero"),
        pytest.param("postgresql+pg8000://ckpt:Zq7Xw9@db.internal:5432:5433/platform", "Zq7Xw9", id="two-ports"),
        pytest.param("postgresql+pg8000://ckpt:Zq7Xw9@/platform", "Zq7Xw9", id="no-host"),
        pytest.param("postgresql+pg8000://ckpt:Zq7Xw9@db internal/platform", "Zq7Xw9", id="space-in-host"),
        pytest.param("postgresql+pg8000://ckpt:Zq7Xw9@db.internal/platform?password=Kp3", "Kp3", id="password-param"),
        pytest.param("Zq7Xw9", "Zq7Xw9", id="just-a-password"),
        pytest.param("ckpt:Zq7Xw9@db.internal:5432/platform", "Zq7Xw9", id="no-scheme"),
        pytest.param("postgresql+pg8000:/ckpt:Zq7Xw9@db.internal/platform", "Zq7Xw9", id="one-slash"),
        pytest.param("   ", "", id="blank"),
    ],
)
def test_malformed_urls_are_configuration_errors_that_hide_the_password(text: str, secret: str) -> None:
    for read in (parse_database_url, make_engine, lambda t: database_url(Settings(database_url=t))):
        with pytest.raises(ConfigurationError) as caught:
            read(text)
        if secret:
            assert_hidden(caught.value, secret)
        assert caught.value.__context__ is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("postgresql+pg8000://ckpt:pw@db.internal:54x32/platform", "port that is not a number"),
        ("postgresql+pg8000://ckpt:pw@db.internal:70000/platform", "port that is not a number"),
        ("postgresql+pg8000://ckpt:pw@/platform", "has no host"),
        ("postgresql+pg8000://db.internal/platform", "has no user name"),
        ("postgresql+pg8000://ckpt:pw@db..internal/platform", "not a host name"),
        ("db.internal:5432/platform", "not a database URL: expected postgresql\\+pg8000://"),
        ("mysql://ckpt:pw@db.internal/platform", "'mysql', which is not supported"),
        ("mysql+pymysql://ckpt:pw@db.internal/platform", "'mysql', which is not supported"),
        ("oracle://ckpt:pw@db.internal/platform", "'oracle', which is not supported"),
        ("postgresql+psycopg2://ckpt:pw@db.internal/platform", "driver 'psycopg2'; only pg8000"),
        ("postgresql+asyncpg://ckpt:pw@db.internal/platform", "driver 'asyncpg'; only pg8000"),
        ("sqlite+aiosqlite:///ckpt.db", "SQLite driver 'aiosqlite'"),
    ],
)
def test_each_problem_is_named(text: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words) as caught:
        parse_database_url(text, "DATABASE_URL")
    assert str(caught.value).startswith("DATABASE_URL")
    assert "pw@" not in str(caught.value) and ":pw" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "postgresql+pg8000://postgres@127.0.0.1:5432/postgres",
        "postgresql://ckpt:pw@db.internal/platform",
        "postgres://ckpt:pw@db.internal/platform",
        "postgresql+pg8000://ckpt:p%40ss%3Aw%2Frd%3F%23%25@db.internal/platform",
        "  postgresql+pg8000://ckpt:pw@db.internal/platform\n",  # a pasted secret's newline
        "postgresql+pg8000://ckpt:pw@[::1]:5432/platform",
        "postgresql+pg8000://ckpt:pw@db_1.internal/platform",
    ],
)
def test_good_postgresql_urls_get_the_pg8000_driver(text: str) -> None:
    url = parse_database_url(text)
    assert url.drivername == "postgresql+pg8000"
    assert url.username in ("postgres", "ckpt")


def test_an_encoded_password_is_decoded_exactly() -> None:
    url = parse_database_url("postgresql+pg8000://ckpt:p%40ss%3Aw%2Frd%3F%23%25@db.internal/platform")
    assert (url.password, url.host) == ("p@ss:w/rd?#%", "db.internal")


@pytest.mark.parametrize("text", ["sqlite:///ckpt.db", "sqlite://", "sqlite+pysqlite:////tmp/ckpt.db"])
def test_sqlite_urls_pass_unchanged(text: str) -> None:
    assert parse_database_url(text).render_as_string() == text


# --- query parameters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("sslcert=/c.pem&sslkey=/k.pem", "sslcert, sslkey; supported: sslmode, sslrootcert"),
        ("timeout=5", "does not understand: timeout"),
        ("ssl_context=1", "does not understand: ssl_context"),
        ("target_session_attrs=read-write", "does not understand: target_session_attrs"),
        ("sslmode=required", "sslmode='required'; use one of disable, allow, prefer, require, verify-ca, verify-full"),
        ("sslmode=REQUIRE", "sslmode='REQUIRE'"),
        ("sslmode=require&sslmode=disable", "gives sslmode more than once"),
        ("sslmode=%20", "gives sslmode an empty value"),
        ("connect_timeout=ten", "connect_timeout that is not a whole number"),
        ("connect_timeout=-1", "connect_timeout that is not a whole number"),
        ("sslrootcert=system&sslmode=require", "system needs verify-full"),
    ],
)
def test_unsupported_or_bad_parameters_are_configuration_errors(query: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        make_engine(f"postgresql+pg8000://ckpt:Zq7Xw9@db.internal/platform?{query}")


def test_the_supported_parameters_are_the_documented_ones() -> None:
    assert SUPPORTED_PARAMETERS == ("sslmode", "sslrootcert", "connect_timeout", "application_name")


def test_libpq_parameters_never_reach_pg8000_as_keywords() -> None:
    engine = make_engine(
        "postgresql+pg8000://ckpt:pw@db.internal/platform"
        "?sslmode=require&connect_timeout=3&application_name=promoter-test"
    )
    _, keywords = engine.dialect.create_connect_args(engine.url)
    assert not set(keywords) & set(SUPPORTED_PARAMETERS)
    assert "sslmode" not in engine.url.query


def test_an_unreadable_sslrootcert_fails_when_the_engine_is_made(tmp_path: Path) -> None:
    not_pem = tmp_path / "bundle.pem"
    not_pem.write_text("not a certificate\n")
    for path, words in [(tmp_path / "missing.pem", "No such file"), (not_pem, "PEM"), (tmp_path, "")]:
        # 192.0.2.1 is TEST-NET: nothing answers there, so only the engine's own checks can fail.
        with pytest.raises(ConfigurationError, match=f"sslrootcert '{path}' is not a readable file.*{words}"):
            make_engine(f"postgresql+pg8000://ckpt:pw@192.0.2.1/platform?sslmode=verify-full&sslrootcert={path}")


# --- the TLS policy ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "db.localhost", "127.0.0.1", "127.3.2.1", "::1"])
def test_loopback_hosts_default_to_plaintext(host: str) -> None:
    assert tls_policy(host) == TlsPolicy("disable", "none", None)


@pytest.mark.parametrize(
    "host", ["db.internal", "platform.cluster-c1a2b3.eu-west-1.rds.amazonaws.com", "10.0.0.5", "vm"]
)
def test_other_hosts_default_to_prefer_with_full_verification_against_the_system_cas(host: str) -> None:
    assert tls_policy(host) == TlsPolicy("prefer", "full", None)


@pytest.mark.parametrize(
    ("host", "sslmode", "sslrootcert", "expected"),
    [
        ("127.0.0.1", None, "/ca.pem", TlsPolicy("prefer", "full", "/ca.pem")),  # a CA given: verify, even locally
        ("db.internal", None, "/ca.pem", TlsPolicy("prefer", "full", "/ca.pem")),
        ("db.internal", None, "system", TlsPolicy("verify-full", "full", None)),
        ("db.internal", "disable", None, TlsPolicy("disable", "none", None)),
        ("db.internal", "allow", None, TlsPolicy("allow", "none", None)),
        ("db.internal", "prefer", None, TlsPolicy("prefer", "none", None)),
        ("db.internal", "require", None, TlsPolicy("require", "none", None)),
        ("db.internal", "require", "/ca.pem", TlsPolicy("require", "chain", "/ca.pem")),  # libpq: a CA file verifies
        ("db.internal", "prefer", "/ca.pem", TlsPolicy("prefer", "chain", "/ca.pem")),
        ("db.internal", "verify-ca", None, TlsPolicy("verify-ca", "chain", None)),
        ("db.internal", "verify-ca", "/ca.pem", TlsPolicy("verify-ca", "chain", "/ca.pem")),
        ("db.internal", "verify-full", None, TlsPolicy("verify-full", "full", None)),
        ("db.internal", "verify-full", "system", TlsPolicy("verify-full", "full", None)),
        ("127.0.0.1", "require", None, TlsPolicy("require", "none", None)),
    ],
)
def test_sslmode_and_sslrootcert_have_their_libpq_meanings(
    host: str, sslmode: str | None, sslrootcert: str | None, expected: TlsPolicy
) -> None:
    assert tls_policy(host, sslmode, sslrootcert) == expected


@pytest.mark.parametrize(
    ("policy", "verify_mode", "check_hostname"),
    [
        (TlsPolicy("require", "none", None), ssl.CERT_NONE, False),
        (TlsPolicy("verify-ca", "chain", None), ssl.CERT_REQUIRED, False),
        (TlsPolicy("verify-full", "full", None), ssl.CERT_REQUIRED, True),
        (TlsPolicy("prefer", "full", None), ssl.CERT_REQUIRED, True),
    ],
)
def test_the_ssl_context_verifies_what_the_policy_says(
    policy: TlsPolicy, verify_mode: int, check_hostname: bool
) -> None:
    context = ssl_context_for(policy)
    assert context is not None
    assert (context.verify_mode, context.check_hostname) == (verify_mode, check_hostname)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_disable_means_no_ssl_context() -> None:
    assert ssl_context_for(TlsPolicy("disable", "none", None)) is None


def test_sslrootcert_replaces_the_system_cas(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(self_signed_ca_pem("Test Root CA"))
    context = ssl_context_for(TlsPolicy("verify-full", "full", str(bundle)))
    assert context is not None
    assert [dict(item[0] for item in ca["subject"])["commonName"] for ca in context.get_ca_certs()] == ["Test Root CA"]


# --- connecting by the policy (pg8000 stood in for) ----------------------------------------------------------


class FakePg8000:
    """pg8000's connect as seen by open_connection: each call takes an ssl_context and answers from a script."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[Any] = []

    def __call__(self, ssl_context: Any) -> Any:
        self.calls.append(ssl_context)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


REFUSED = InterfaceError("Server refuses SSL")
UNVERIFIED = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
CONTEXT = ssl.create_default_context()


def test_disable_connects_in_plaintext_once() -> None:
    connect = FakePg8000("connection")
    assert open_connection(connect, TlsPolicy("disable", "none", None), None, "db:5432") == "connection"
    assert connect.calls == [False]


def test_prefer_falls_back_to_plaintext_only_when_the_server_refuses_tls() -> None:
    connect = FakePg8000(REFUSED, "plaintext connection")
    assert open_connection(connect, TlsPolicy("prefer", "full", None), CONTEXT, "db:5432") == "plaintext connection"
    assert connect.calls == [CONTEXT, False]


@pytest.mark.parametrize("sslmode", ["prefer", "require", "verify-ca", "verify-full", "allow"])
def test_a_certificate_that_fails_verification_is_an_error_never_a_downgrade(sslmode: str) -> None:
    first = [DatabaseError({"C": "28000"})] if sslmode == "allow" else []
    connect = FakePg8000(*first, UNVERIFIED, "plaintext connection")
    with pytest.raises(ConfigurationError, match=r"db:5432 failed verification.*sslrootcert.*global-bundle\.pem"):
        open_connection(connect, TlsPolicy(sslmode, "full", None), CONTEXT, "db:5432")
    assert connect.calls[-1] is CONTEXT  # nothing was tried after the failed verification


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full"])
def test_modes_that_require_tls_refuse_a_server_without_it(sslmode: str) -> None:
    connect = FakePg8000(REFUSED, "plaintext connection")
    with pytest.raises(ConfigurationError, match=f"db:5432 does not offer TLS, which sslmode={sslmode} requires"):
        open_connection(connect, TlsPolicy(sslmode, "full", None), CONTEXT, "db:5432")
    assert connect.calls == [CONTEXT]


def test_allow_tries_tls_only_after_the_server_turned_plaintext_away() -> None:
    connect = FakePg8000(DatabaseError({"C": "28000", "M": "no pg_hba.conf entry ... no encryption"}), "tls")
    assert open_connection(connect, TlsPolicy("allow", "none", None), CONTEXT, "db:5432") == "tls"
    assert connect.calls == [False, CONTEXT]


def test_a_broken_handshake_is_a_retryable_driver_error() -> None:
    connect = FakePg8000(ConnectionResetError("reset by peer"))
    with pytest.raises(InterfaceError, match="TLS negotiation with db:5432 failed"):
        open_connection(connect, TlsPolicy("require", "none", None), CONTEXT, "db:5432")


def test_network_errors_pass_through_unchanged() -> None:
    unreachable = InterfaceError("Can't create a connection to host db and port 5432")
    connect = FakePg8000(unreachable)
    with pytest.raises(InterfaceError) as caught:
        open_connection(connect, TlsPolicy("prefer", "full", None), CONTEXT, "db:5432")
    assert caught.value is unreachable


# --- redaction -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql+pg8000://ckpt:Zq7@Xw9@db:5432/platform", "postgresql+pg8000://***@db:5432/platform"),
        (
            "postgresql+pg8000://ckpt:Zq7/Xw9:Kp3@db/platform?sslmode=require",
            "postgresql+pg8000://***@db/platform?sslmode=require",
        ),
        (
            "postgresql+pg8000://db/platform?password=Zq7&sslmode=require",
            "postgresql+pg8000://db/platform?password=***&sslmode=require",
        ),
        ("postgresql+pg8000://ckpt:Zq7/platform", "postgresql+pg8000://***"),
        ("postgresql+pg8000://db:5432/platform", "postgresql+pg8000://db:5432/platform"),
        ("Zq7Xw9", "not a URL"),
        ("sqlite:///ckpt.db", "sqlite:///ckpt.db"),
    ],
)
def test_redacted_hides_everything_before_the_last_at_sign(text: str, shown: str) -> None:
    assert redacted(text) == shown


# --- the database secret -------------------------------------------------------------------------------------

RDS = {"username": "ckpt", "password": "Zq7@Xw9:Kp3/#", "host": "db.internal", "port": 5432, "dbname": "platform"}


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        pytest.param({"port": "five"}, "port 'five' is not a number", id="port-text"),
        pytest.param({"port": "54 32"}, "port '54 32' is not a number", id="port-with-space"),
        pytest.param({"port": 0}, "port 0 is not a number from 1 to 65535", id="port-zero"),
        pytest.param({"port": 70000}, "port 70000", id="port-too-large"),
        pytest.param({"port": True}, "port True", id="port-bool"),
        pytest.param({"port": 5432.5}, "port 5432.5", id="port-float"),
        pytest.param({"host": "Zq7@db.internal"}, "host that is not a host name", id="host-with-at"),
        pytest.param({"host": "db.internal:5432"}, "host that is not a host name", id="host-with-port"),
        pytest.param({"password": 12345}, "password must be JSON strings", id="password-number"),
        pytest.param({"sslmode": "required"}, "sslmode='required'", id="bad-sslmode"),
        pytest.param({"sslmode": 1}, "sslmode must be JSON strings", id="sslmode-number"),
        pytest.param({"sslrootcert": "system", "sslmode": "require"}, "system needs verify-full", id="system-weak"),
        pytest.param({"engine": "mysql"}, "engine 'mysql': only PostgreSQL", id="mysql-secret"),
        pytest.param({"url": 5}, "url must be a string", id="url-number"),
        pytest.param(
            {"url": "postgresql+pg8000://ckpt:Zq7@Xw9@db/platform"}, "secret's url.*more than one '@'", id="url"
        ),
        pytest.param({"url": "mysql://ckpt:Zq7@db/platform"}, "secret's url.*'mysql'", id="url-mysql"),
    ],
)
def test_secret_problems_are_configuration_errors_that_hide_the_password(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words) as caught:
        database_url_from_secret({**RDS, **changes})
    assert_hidden(caught.value, RDS["password"], str(changes.get("url", "")))
    assert "database secret" in str(caught.value)


def test_the_secret_can_require_tls() -> None:
    url = database_url_from_secret(
        {**RDS, "sslmode": "verify-full", "sslrootcert": "/opt/python/certs/global-bundle.pem"}
    )
    assert dict(url.query) == {"sslmode": "verify-full", "sslrootcert": "/opt/python/certs/global-bundle.pem"}
    assert url.password == RDS["password"]


@pytest.mark.parametrize("engine", ["postgres", "aurora-postgresql", None])
def test_postgresql_engines_in_the_secret_are_accepted(engine: str | None) -> None:
    secret = {**RDS, "engine": engine} if engine else RDS
    assert database_url_from_secret(secret).host == "db.internal"


def test_engine_from_settings_raises_before_connecting() -> None:
    # 192.0.2.1 is TEST-NET: a connection attempt would hang until its timeout, so a quick error proves none was made.
    settings = Settings(database_url="postgresql+pg8000://ckpt:Zq7@Xw9@192.0.2.1/platform")
    with pytest.raises(ConfigurationError, match=r"^DATABASE_URL ") as caught:
        engine_from_settings(settings)
    assert_hidden(caught.value, "Zq7@Xw9")


def test_engine_from_a_secret_with_a_hostile_password_and_tls() -> None:
    secret = {**RDS, "host": "192.0.2.1", "sslmode": "require"}
    settings = Settings(database_secret_arn="arn:aws:secretsmanager:eu-west-1:123456789012:secret:db")
    engine = engine_from_settings(settings, lambda _arn: json.dumps(secret))
    assert engine.url.password == RDS["password"]
    assert "Zq7" not in repr(engine) and "Zq7" not in str(engine.url)


# --- red-team findings: configuration that escaped as a raw library error, or as an outage, or echoed a secret ---
# Each value here used to raise ValueError, OverflowError or TypeError (no once-per-environment log, CLI exit 1),
# or to fail only at connect time as DatabaseUnavailable (retried for ever), or to show a secret in the message.

BASE = "postgresql+pg8000://ckpt:Zq7Xw9@192.0.2.1/platform"  # TEST-NET: nothing answers, nothing may connect
SECRET_VALUE = "Zq7Xw9Kp3"
READERS: list[Callable[[str], Any]] = [
    parse_database_url,
    make_engine,
    lambda text: database_url(Settings(database_url=text)),
    lambda text: database_url_from_secret({"url": text}),
]
READER_IDS = ["parse", "make_engine", "DATABASE_URL", "secret-url"]


class _Captured(Exception):
    """Raised by connect_parameters' listener instead of connecting."""


def connect_parameters(engine: Any) -> dict[str, Any]:
    """The keywords pg8000's connect would be given, captured instead of connecting."""
    seen: dict[str, Any] = {}

    def capture(*_args: Any, **keywords: Any) -> None:
        seen.update(keywords)
        raise _Captured

    with mock.patch.object(engine.dialect.loaded_dbapi, "connect", capture), pytest.raises(_Captured):
        engine.connect()
    engine.dispose()
    return seen


# Finding 1: int() takes any Unicode digit ('²' passes isdigit() and fails int(); '٣' is read as 3).
@pytest.mark.parametrize(
    "value",
    ["%C2%B2", "%D9%A3", "%EF%BC%95", "%E2%91%A0", "+5", "%205", "5%20", "5.0", "1e3", "0x10", "-1", "five"],
)
@pytest.mark.parametrize("read", READERS, ids=READER_IDS)
def test_connect_timeout_must_be_ascii_digits(value: str, read: Callable[[str], Any]) -> None:
    with pytest.raises(ConfigurationError, match="connect_timeout that is not a whole number of seconds from 0 to"):
        read(f"{BASE}?connect_timeout={value}")


@pytest.mark.parametrize(
    "port", ["%C2%B2", "²", "٥٤٣٢", "\uff15\uff14\uff13\uff12", "+5432", " 5432", "5432 ", "005432"]
)
def test_the_url_port_must_be_ascii_digits(port: str) -> None:
    with pytest.raises(ConfigurationError, match="port that is not a number from 1 to 65535") as caught:
        parse_database_url(f"postgresql+pg8000://ckpt:Zq7Xw9@db.internal:{port}/platform")
    assert_hidden(caught.value, "Zq7Xw9")


# Finding 2: a huge connect_timeout was an OverflowError at the first connection.
@pytest.mark.parametrize("value", ["3601", "86400", "99999999999999999999", "9" * 5000])
def test_connect_timeout_is_bounded_when_the_url_is_read(value: str) -> None:
    for read in READERS:
        with pytest.raises(ConfigurationError, match="from 0 to 3600") as caught:
            read(f"{BASE}?connect_timeout={value}")
        assert len(str(caught.value)) < 700


@pytest.mark.parametrize(("value", "timeout"), [("0", None), ("1", 1), ("0010", 10), ("3600", 3600)])
def test_connect_timeout_within_its_bounds_reaches_pg8000_as_seconds(value: str, timeout: int | None) -> None:
    assert connect_parameters(make_engine(f"{BASE}?connect_timeout={value}"))["timeout"] == timeout


def test_the_default_connect_timeout_is_ten_seconds() -> None:
    assert connect_parameters(make_engine(BASE))["timeout"] == 10


# Finding 4: SQLite URLs passed their query to pysqlite: a repeated timeout was a TypeError, mode=ro was ignored.
@pytest.mark.parametrize(
    "query",
    [
        "timeout=1&timeout=2",
        "timeout=5",
        "mode=ro",
        "uri=true&mode=ro",
        "isolation_level=SERIALIZABLE",
        "check_same_thread=false",
        "cache=shared",
        "password=Zq7Xw9Kp3",
    ],
)
@pytest.mark.parametrize("read", READERS, ids=READER_IDS)
def test_sqlite_urls_take_no_parameters(query: str, read: Callable[[str], Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="a SQLite URL takes none here: use sqlite:///PATH") as caught:
        read(f"sqlite:///{tmp_path}/ckpt.db?{query}")
    assert_hidden(caught.value, SECRET_VALUE)


def test_a_sqlite_url_object_with_parameters_is_refused_too(tmp_path: Path) -> None:
    url = URL.create("sqlite", database=str(tmp_path / "ckpt.db"), query={"timeout": ("1", "2")})
    with pytest.raises(ConfigurationError, match=r"parameters \(timeout\)"):
        make_engine(url)


def test_a_sqlite_url_naming_a_server_is_refused_when_read() -> None:
    with pytest.raises(ConfigurationError, match="SQLite opens a file") as caught:
        parse_database_url("sqlite://ckpt:Zq7Xw9@db.internal/ckpt.db")
    assert_hidden(caught.value, "Zq7Xw9")


# Finding 6: values PostgreSQL refuses only in the startup packet were DatabaseUnavailable, retried for ever.
@pytest.mark.parametrize(
    ("value", "words"),
    [
        pytest.param("a%00b", "printable ASCII", id="nul"),
        pytest.param("a%0Ab", "printable ASCII", id="line-break"),
        pytest.param("a%09b", "printable ASCII", id="tab"),
        pytest.param("%C3%A9t%C3%A9", "printable ASCII", id="non-ascii"),
        pytest.param("a" * 64, "longer than 63 characters", id="64-characters"),
        pytest.param("a" * 100_000, "longer than 63 characters", id="100k-characters"),
    ],
)
@pytest.mark.parametrize("read", READERS, ids=READER_IDS)
def test_an_application_name_postgresql_cannot_take_is_refused_when_read(
    value: str, words: str, read: Callable[[str], Any]
) -> None:
    with pytest.raises(ConfigurationError, match=f"application_name that .*{words}") as caught:
        read(f"{BASE}?application_name={value}")
    assert "aaaa" not in str(caught.value) and "t%C3%A9" not in str(caught.value)  # the value is never shown
    assert len(str(caught.value)) < 700


def test_an_application_name_of_63_printable_characters_reaches_pg8000_exactly() -> None:
    name = "ckpt promoter: eu-west-1/prod #3 (a~z) " + "x" * 24
    assert len(name) == 63
    engine = make_engine(URL.create("postgresql+pg8000", "ckpt", "pw", "192.0.2.1", query={"application_name": name}))
    assert connect_parameters(engine)["application_name"] == name


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param(
            "postgresql+pg8000://ck%00pt:Zq7Xw9@db.internal/platform", "user name that holds a NUL", id="user"
        ),
        pytest.param(
            f"postgresql+pg8000://{'u' * 64}:Zq7Xw9@db.internal/platform", "user name that is longer", id="long-user"
        ),
        pytest.param(
            f"postgresql+pg8000://{'%C3%A9' * 32}:Zq7Xw9@db.internal/p", "longer than 63 bytes", id="user-bytes"
        ),
        pytest.param(
            "postgresql+pg8000://ckpt:Zq7%00Xw9@db.internal/platform", "password that holds a NUL", id="password"
        ),
        pytest.param(
            "postgresql+pg8000://ckpt:Zq7Xw9@db.internal/plat%00form", "database name that holds", id="database"
        ),
        pytest.param(
            f"postgresql+pg8000://ckpt:Zq7Xw9@db.internal/{'d' * 64}", "database name that is longer", id="long-db"
        ),
        pytest.param(
            "postgresql+pg8000://ckpt:Zq7Xw9@db.internal/platform?sslmode=verify-full&sslrootcert=/ca%00.pem",
            "sslrootcert with a NUL",
            id="sslrootcert",
        ),
        pytest.param("postgresql+pg8000://ckpt:Zq7\udcffXw9@db.internal/platform", "not valid UTF-8", id="surrogate"),
        pytest.param("sqlite:////tmp/ck%00pt.db", "path with a NUL", id="sqlite-path"),
    ],
)
@pytest.mark.parametrize("read", READERS, ids=READER_IDS)
def test_names_postgresql_or_sqlite_cannot_take_are_refused_when_read(
    text: str, words: str, read: Callable[[str], Any]
) -> None:
    with pytest.raises(ConfigurationError, match=words) as caught:
        read(text)
    assert_hidden(caught.value, "Zq7Xw9")
    assert len(str(caught.value)) < 700


def test_a_name_of_63_bytes_is_accepted() -> None:
    url = parse_database_url(f"postgresql+pg8000://{'%C3%A9' * 31}u:pw@db.internal/{'d' * 63}")
    assert url.username and url.database
    assert (len(url.username.encode()), len(url.database.encode())) == (63, 63)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"username": "ck\x00pt"}, id="user-nul"),
        pytest.param({"username": "ck\ud800pt"}, id="user-surrogate"),
        pytest.param({"password": "Zq7\ud800Xw9"}, id="password-surrogate"),
        pytest.param({"database": "d" * 64}, id="long-database"),
        pytest.param({"query": {"sslrootcert": "/c\udcffa.pem"}}, id="sslrootcert-surrogate"),
    ],
)
def test_url_objects_are_checked_as_url_text_is(changes: dict[str, Any]) -> None:
    url = URL.create("postgresql+pg8000", "ckpt", "Zq7Xw9", "db.internal", database="platform").set(**changes)
    with pytest.raises(ConfigurationError) as caught:
        make_engine(url)
    assert_hidden(caught.value, "Zq7Xw9")


@pytest.mark.parametrize(
    ("make_path", "words"),
    [
        pytest.param(lambda tmp: tmp / "missing" / "ckpt.db", "folder .*missing does not exist", id="no-folder"),
        pytest.param(lambda tmp: tmp, "is a folder: name a file in it", id="a-folder"),
        pytest.param(
            lambda tmp: tmp / "file.txt" / "ckpt.db", "does not exist \\(or is not a folder\\)", id="in-a-file"
        ),
        pytest.param(lambda tmp: tmp / "file.txt", "is not a SQLite database file", id="not-a-database"),
    ],
)
def test_a_sqlite_file_that_cannot_be_opened_is_refused_when_the_engine_is_made(
    make_path: Callable[[Path], Path], words: str, tmp_path: Path
) -> None:
    (tmp_path / "file.txt").write_text("not a database\n")
    text = f"sqlite:///{make_path(tmp_path)}"
    for read in (make_engine, lambda t: engine_from_settings(Settings(database_url=t))):
        with pytest.raises(ConfigurationError, match=words):
            read(text)
    assert parse_database_url(text)  # reading the URL touches no file: only making the engine does


@pytest.mark.parametrize("text", ["sqlite://", "sqlite:///:memory:", "sqlite:///ckpt.db", "sqlite:///data/ckpt.db"])
def test_sqlite_in_memory_and_relative_paths_still_work(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    engine = make_engine(text)
    with engine.begin() as connection:
        assert connection.exec_driver_sql("SELECT 1").scalar_one() == 1
    engine.dispose()


def test_an_existing_or_empty_sqlite_file_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()  # SQLite reads an empty file as an empty database
    for name in (
        "empty.db",
        "ckpt.db",
        "ckpt.db",
    ):  # the second ckpt.db is the file the first one created
        engine = make_engine(f"sqlite:///{tmp_path / name}")
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        engine.dispose()


# Finding 7: the values of query parameters were shown in messages, unless the name held "pass".
@pytest.mark.parametrize(
    "query",
    [
        f"pwd={SECRET_VALUE}",
        f"token={SECRET_VALUE}",
        f"api_key={SECRET_VALUE}",
        f"options=-c%20password%3D{SECRET_VALUE}",
        f"sslkey=/keys/{SECRET_VALUE}.pem",
        f"sslpassword={SECRET_VALUE}",
        f"sslmode=require&secret={SECRET_VALUE}",
        f"sslmode=require&token={SECRET_VALUE}&token=other",
        f"application_name={SECRET_VALUE}%00",
        f"application_name={SECRET_VALUE}{'x' * 60}",
        f"%74oken={SECRET_VALUE}",
        f"t%C3%B6ken={SECRET_VALUE}",
        f"sslmode=require&{SECRET_VALUE[:3]}%00{SECRET_VALUE[3:]}=1",
    ],
)
@pytest.mark.parametrize("read", READERS, ids=READER_IDS)
def test_no_message_shows_a_parameter_value_that_could_be_secret(query: str, read: Callable[[str], Any]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        read(f"{BASE}?{query}")
    assert_hidden(caught.value, SECRET_VALUE, "Zq7Xw9")


def test_messages_name_unknown_parameters_and_show_only_values_that_cannot_be_secret() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_database_url(f"{BASE}?sslmode=require&connect_timeout=5&pwd={SECRET_VALUE}", "DATABASE_URL")
    assert str(caught.value) == (
        "DATABASE_URL (postgresql+pg8000://***@192.0.2.1/platform?connect_timeout=5&pwd=***&sslmode=require) "
        "has parameters this service does not understand: pwd; "
        "supported: sslmode, sslrootcert, connect_timeout, application_name"
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"postgresql+pg8000://db/platform?token={SECRET_VALUE}&sslmode=require", "?token=***&sslmode=require"),
        (f"postgresql+pg8000://db/platform?options=-c%20x%3D{SECRET_VALUE}", "?options=***"),
        (f"postgresql+pg8000://db/platform?application_name={SECRET_VALUE}", "?application_name=***"),
        (
            "postgresql+pg8000://db/platform?sslrootcert=/opt/python/certs/global-bundle.pem&connect_timeout=5",
            "?sslrootcert=/opt/python/certs/global-bundle.pem&connect_timeout=5",
        ),
        (f"postgresql+pg8000://db/platform?sslmode={SECRET_VALUE}{'x' * 200}", "?sslmode=***"),
        (f"postgresql+pg8000://db/platform?sslmode={SECRET_VALUE}#x", "?sslmode=***"),
        (f"postgresql+pg8000://db/platform?{SECRET_VALUE}%00=1", "?***=***"),
        ("postgresql+pg8000://db:%C2%B2/platform", "postgresql+pg8000://***"),
    ],
)
def test_redacted_shows_only_values_that_cannot_be_secret(text: str, shown: str) -> None:
    assert redacted(text).endswith(shown)
    assert SECRET_VALUE not in redacted(text)


@pytest.mark.parametrize("query", ["sslmode", "sslmode=", "sslmode=verify-full&connect_timeout", "a=1&&sslmode="])
def test_a_parameter_without_a_value_is_refused_not_silently_dropped(query: str) -> None:
    with pytest.raises(ConfigurationError, match=r"parameters without a value: (sslmode|connect_timeout)"):
        parse_database_url(f"{BASE}?{query}")


# The class: any value of any supported parameter is either accepted as something pg8000 can use, or refused
# with a ConfigurationError that shows no value a secret could be in.
HOSTILE_VALUES = [
    "%00",
    "a%00b",
    "%C2%B2",
    "%D9%A3",
    "9" * 30,
    "9" * 5000,
    "x" * 100_000,
    "%FF",
    "%ED%A0%80",
    "-1",
    "%0A",
    "%E2%80%8B",
    "%2F" * 3000,
    SECRET_VALUE,
]


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=range(len(HOSTILE_VALUES)))
@pytest.mark.parametrize("name", SUPPORTED_PARAMETERS)
def test_any_value_of_a_supported_parameter_is_usable_or_a_configuration_error(name: str, value: str) -> None:
    try:
        engine = make_engine(f"{BASE}?{name}={value}")
    except ConfigurationError as exc:
        assert len(str(exc)) < 1000
        if name not in SHOWN_PARAMETERS:
            assert_hidden(exc, SECRET_VALUE)
        return
    keywords = connect_parameters(engine)
    assert keywords["timeout"] is None or 0 < keywords["timeout"] <= 3600
    assert re.fullmatch(r"[ -~]{1,63}", keywords["application_name"])


# Finding 8: the CLI exits 2 on a configuration error (1 for the raw errors these were, or a traceback).
@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"{BASE}?connect_timeout=%C2%B2", id="connect-timeout-superscript"),
        pytest.param(f"{BASE}?connect_timeout=99999999999999999999", id="connect-timeout-huge"),
        pytest.param(f"{BASE}?application_name=a%00b", id="application-name-nul"),
        pytest.param(f"{BASE}?token={SECRET_VALUE}", id="unknown-parameter"),
        pytest.param("sqlite:///{tmp}/ckpt.db?timeout=1&timeout=2", id="sqlite-repeated-parameter"),
        pytest.param("sqlite:///{tmp}/missing/ckpt.db", id="sqlite-no-folder"),
        pytest.param("sqlite:///{tmp}", id="sqlite-folder"),
    ],
)
def test_the_cli_exits_2_on_these_configuration_errors(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckpt.cli import main

    monkeypatch.delenv("DATABASE_SECRET_ARN", raising=False)
    assert main(["--database-url", url.replace("{tmp}", str(tmp_path)), "db", "current"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("ckpt: ") and "Traceback" not in error
    assert "Zq7" not in error and "Xw9" not in error
