"""Database URLs: every malformed one is a ConfigurationError that says what to fix and never shows the password;
libpq's TLS parameters become pg8000's ssl_context, never raw keywords; the TLS policy and its fallbacks."""

from __future__ import annotations

import itertools
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pg8000.exceptions import DatabaseError, InterfaceError

from ckpt.config import Settings, database_url_from_secret
from ckpt.db.engine import (
    SUPPORTED_PARAMETERS,
    TlsPolicy,
    make_engine,
    open_connection,
    parse_database_url,
    redacted,
    ssl_context_for,
    tls_policy,
)
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


@pytest.mark.parametrize(
    "text", ["sqlite:///ckpt.db", "sqlite://", "sqlite+pysqlite:////tmp/ckpt.db", "sqlite:///x?mode=ro"]
)
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
