"""Engines for the two supported databases, each set up so a promotion can lock its job.

- PostgreSQL (pg8000): per-job advisory transaction locks; ``lock_timeout`` so a waiting worker gives up
  (and is retried) instead of outliving its Lambda; ``idle_in_transaction_session_timeout`` so a worker
  that dies mid-promotion cannot hold a lock for ever.
- SQLite (the embedded local default): every transaction is ``BEGIN IMMEDIATE``, a database-wide write
  lock taken up front, because SQLite's deferred transactions would otherwise let two writers read the
  same state and then fail on upgrade.

Database URLs are checked here before any connection: every way one can be wrong is a ``ConfigurationError``
that says what to fix and never shows the credentials. The libpq parameters that make sense here
(``sslmode``, ``sslrootcert``, ``connect_timeout``, ``application_name``) are translated into pg8000's
arguments; pg8000 takes none of them as keywords.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pg8000.exceptions import DatabaseError, InterfaceError
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ckpt.errors import ConfigurationError

URL_FORMS = "postgresql+pg8000://USER:PASSWORD@HOST:PORT/DATABASE or sqlite:///PATH"
PERCENT_ENCODING = (
    "percent-encode special characters in the user name and password "
    "(@ as %40, : as %3A, / as %2F, ? as %3F, # as %23, % as %25; urllib.parse.quote(password, safe='') does it)"
)
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SUPPORTED_PARAMETERS = ("sslmode", "sslrootcert", "connect_timeout", "application_name")
DEFAULT_APPLICATION_NAME = "checkpoint-promotion"
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10
RDS_CA_HINT = (
    "Amazon RDS: AWS's global-bundle.pem, shipped in the layer; layers/ckpt/certs/global-bundle.pem is "
    "/opt/python/certs/global-bundle.pem in Lambda"
)

# --- reading and checking URLs ------------------------------------------------------------------------------


def parse_database_url(text: str, source: str = "the database URL") -> URL:
    """``text`` as a checked SQLAlchemy URL, or a ConfigurationError that names ``source`` and hides credentials."""
    text = text.strip()
    scheme, separator, rest = text.partition("://")
    if not separator or not re.fullmatch(r"[\w+]+", scheme):
        raise ConfigurationError(f"{source} is not a database URL: expected {URL_FORMS}")
    if rest.count("@") > 1:
        # user:p@ss@host reads as password "p" on host "ss@host": refuse to guess where the host starts.
        raise ConfigurationError(
            f"{source} ({redacted(text)}) has more than one '@', so its host cannot be told from its password: "
            f"{PERCENT_ENCODING}"
        )
    parsed = _sqlalchemy_url(text)
    if isinstance(parsed, str):  # raised here, outside the except, so no library error (and its text) is chained
        raise ConfigurationError(f"{source} ({redacted(text)}) {parsed}")
    if "@" in rest and not parsed.username:
        raise ConfigurationError(
            f"{source} ({redacted(text)}) has an '@' but no user name before it "
            f"(expected {URL_FORMS}): {PERCENT_ENCODING}"
        )
    return check_database_url(parsed, source)


def _sqlalchemy_url(text: str) -> URL | str:
    """SQLAlchemy's reading of ``text``, or what is wrong with it, in words that quote none of it."""
    try:
        return make_url(text)
    except ArgumentError:
        return f"is not a URL SQLAlchemy can read: expected {URL_FORMS}; {PERCENT_ENCODING}"
    except ValueError:  # int() of whatever followed the host's ':'
        return f"has a port that is not a number from 1 to 65535; if the password holds ':' or '@', {PERCENT_ENCODING}"


def check_database_url(url: URL, source: str = "the database URL") -> URL:
    """``url`` with its driver made explicit, once it is known to name a supported database sensibly."""
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise _invalid(url, source, f"asks for the SQLite driver {driver!r}; use sqlite:///PATH")
        return url
    if backend not in ("postgresql", "postgres"):
        raise _invalid(url, source, f"is for {backend!r}, which is not supported: use {URL_FORMS}")
    if driver not in ("", "pg8000"):
        raise _invalid(
            url, source, f"asks for the driver {driver!r}; only pg8000 is installed: use postgresql+pg8000://"
        )
    url = url.set(drivername="postgresql+pg8000")
    if not url.username:
        raise _invalid(url, source, f"has no user name: expected {URL_FORMS}")
    if not url.host:
        raise _invalid(url, source, f"has no host: expected {URL_FORMS}")
    if not is_host_name(url.host):
        # Not shown: a password with an unescaped '@', ':' or '/' is what usually ends up here.
        shown = url.set(host="...")
        raise _invalid(shown, source, f"has a host that is not a host name or an IP address: {PERCENT_ENCODING}")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise _invalid(url, source, "has a port that is not a number from 1 to 65535")
    _check_parameters(url, source)
    return url


def _check_parameters(url: URL, source: str) -> None:
    unsupported = sorted(set(url.query) - set(SUPPORTED_PARAMETERS))
    if unsupported:
        raise _invalid(
            url,
            source,
            f"has parameters this service does not understand: {', '.join(unsupported)}; "
            f"supported: {', '.join(SUPPORTED_PARAMETERS)}",
        )
    parameters: dict[str, str] = {}
    for name, value in url.query.items():
        if not isinstance(value, str):
            raise _invalid(url, source, f"gives {name} more than once")
        if not value.strip():
            raise _invalid(url, source, f"gives {name} an empty value")
        parameters[name] = value
    sslmode, sslrootcert = parameters.get("sslmode"), parameters.get("sslrootcert")
    if sslmode is not None and sslmode not in SSL_MODES:
        raise _invalid(url, source, f"has sslmode={sslmode!r}; use one of {', '.join(SSL_MODES)}")
    if sslrootcert == "system" and sslmode not in (None, "verify-full"):
        # libpq's rule: trusting every public CA is only safe if the host name is checked too.
        raise _invalid(url, source, f"has sslrootcert=system with sslmode={sslmode}; system needs verify-full")
    if not parameters.get("connect_timeout", "0").isdigit():
        raise _invalid(url, source, "has a connect_timeout that is not a whole number of seconds (0: no limit)")


def _invalid(url: URL, source: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"{source} ({redacted(url.render_as_string(hide_password=False))}) {problem}")


def is_host_name(host: str) -> bool:
    """A DNS name (underscores allowed, as some internal names have them) or an IP address."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        label = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
        return len(host) <= 253 and re.fullmatch(rf"{label}(\.{label})*\.?", host) is not None


def is_loopback(host: str) -> bool:
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def redacted(text: str) -> str:
    """A database URL safe to show: everything between '://' and the last '@' (the user name and the password,
    even one holding an unescaped '@', ':', '/' or '#') becomes ***, as do the values of password parameters.
    Without an '@', a non-numeric "port" (a password written without its host, most likely) hides the rest."""
    scheme, separator, rest = text.strip().partition("://")
    if not separator:
        return "not a URL"  # it could be anything, a bare password included
    if "@" in rest:
        return f"{scheme}://***@{_masked_parameters(rest.rpartition('@')[2])}"
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    _, colon, port = authority.rpartition(":")
    if colon and not port.isdigit():
        return f"{scheme}://***"
    return f"{scheme}://{_masked_parameters(rest)}"


def _masked_parameters(text: str) -> str:
    head, question_mark, query = text.partition("?")
    if not question_mark:
        return text
    pairs = [pair.partition("=") for pair in query.split("&")]
    shown = [f"{name}{equals}{'***' if 'pass' in name.lower() else value}" for name, equals, value in pairs]
    return f"{head}?{'&'.join(shown)}"


# --- TLS -----------------------------------------------------------------------------------------------------

Verification = Literal["none", "chain", "full"]


@dataclass(frozen=True)
class TlsPolicy:
    """How connections use TLS, in libpq's terms."""

    sslmode: str  # one of SSL_MODES
    verification: Verification  # what of the server's certificate is checked: nothing, its chain, chain and name
    rootcert: str | None  # the CA file to trust; None means the system's trusted CAs


def tls_policy(host: str, sslmode: str | None = None, sslrootcert: str | None = None) -> TlsPolicy:
    """libpq's meaning of ``sslmode``/``sslrootcert``, and this service's default when ``sslmode`` is not given."""
    rootcert = None if sslrootcert in (None, "system") else sslrootcert
    if sslmode is None:
        if sslrootcert == "system":
            return TlsPolicy("verify-full", "full", None)  # libpq 16's default with sslrootcert=system
        if sslrootcert is None and is_loopback(host):
            # This machine's own server: the traffic never crosses a network, and a local server's certificate
            # (Debian's self-signed "snakeoil" one) cannot be verified, while "prefer" must never fall back to
            # plaintext over a failed verification. So plaintext, as the tests and the demo always had.
            return TlsPolicy("disable", "none", None)
        # Production: libpq's "prefer" (TLS whenever the server offers it, plaintext when it does not), except
        # that the certificate and the host name are verified. The secret can require TLS with sslmode.
        return TlsPolicy("prefer", "full", rootcert)
    if sslmode == "verify-full":
        return TlsPolicy(sslmode, "full", rootcert)
    if sslmode == "verify-ca":
        return TlsPolicy(sslmode, "chain", rootcert)
    # libpq verifies the chain in the weaker modes too whenever a root certificate file is given.
    return TlsPolicy(sslmode, "chain" if rootcert else "none", rootcert)


def ssl_context_for(policy: TlsPolicy) -> ssl.SSLContext | None:
    """pg8000's ``ssl_context`` for ``policy``; None when TLS is never used. Reads the CA file now, so a wrong
    path fails when the engine is made, not at the first connection."""
    if policy.sslmode == "disable":
        return None
    try:
        context = ssl.create_default_context(cafile=policy.rootcert)  # the system's CAs when rootcert is None
    except OSError as exc:  # missing, unreadable, or no certificate in it (ssl.SSLError is an OSError)
        problem = exc.strerror or str(exc)
    else:
        context.check_hostname = policy.verification == "full"
        context.verify_mode = ssl.CERT_NONE if policy.verification == "none" else ssl.CERT_REQUIRED
        return context
    raise ConfigurationError(
        f"sslrootcert {policy.rootcert!r} is not a readable file of PEM CA certificates ({problem}); "
        f"give the path of the CA bundle ({RDS_CA_HINT})"
    )


Connect = Callable[[Any], Any]  # pg8000's connect, given its ssl_context (False: plaintext)


class _TlsRefused(Exception):
    """The server answered the TLS request with 'N': it does not offer TLS."""


def open_connection(connect: Connect, policy: TlsPolicy, context: ssl.SSLContext | None, server: str) -> Any:
    """A pg8000 connection made as ``policy`` says. The server refusing TLS is the only reason "prefer" falls
    back to plaintext: a certificate that fails verification is a ConfigurationError, never a downgrade."""
    if context is None:
        return connect(False)
    if policy.sslmode == "allow":
        try:
            return connect(False)
        except DatabaseError:
            pass  # the server turned plaintext away during startup (a hostssl-only pg_hba): TLS, as libpq does
        return _connect_over_tls(connect, context, server)
    try:
        return _connect_over_tls(connect, context, server)
    except _TlsRefused:
        if policy.sslmode != "prefer":
            raise ConfigurationError(
                f"the database server {server} does not offer TLS, which sslmode={policy.sslmode} requires: "
                "turn ssl on in the server's configuration, or lower sslmode (prefer, disable)"
            ) from None
    return connect(False)


def _connect_over_tls(connect: Connect, context: ssl.SSLContext, server: str) -> Any:
    try:
        return connect(context)
    except ssl.SSLCertVerificationError as exc:
        failure = getattr(exc, "verify_message", None) or str(exc)
    except InterfaceError as exc:
        if str(exc) == "Server refuses SSL":  # pg8000's words when the server answers the TLS request with 'N'
            raise _TlsRefused from None
        raise
    except OSError as exc:  # the TLS request or handshake broke off (pg8000 passes these through): retried
        raise InterfaceError(f"TLS negotiation with {server} failed: {exc}") from exc
    raise ConfigurationError(
        f"the TLS certificate of the database server {server} failed verification ({failure}), so nothing was "
        f"sent to it. To fix: name the CA that signed it with sslrootcert ({RDS_CA_HINT}); connect by the host "
        "name the certificate names; or set sslmode=require to encrypt without verifying"
    )


# --- engines ---------------------------------------------------------------------------------------------------


def make_engine(url: str | URL, *, lock_timeout_seconds: int = 30, idle_timeout_seconds: int = 900) -> Engine:
    url = parse_database_url(url) if isinstance(url, str) else check_database_url(url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, lock_timeout_seconds)
    return _postgresql_engine(url, lock_timeout_seconds, idle_timeout_seconds)


def _sqlite_engine(url: URL, lock_timeout_seconds: int) -> Engine:
    try:
        engine = create_engine(url, connect_args={"timeout": lock_timeout_seconds})
    except (ArgumentError, ValueError) as exc:  # a SQLite URL has nothing secret in it
        raise ConfigurationError(f"the SQLite URL {url} is not usable: {exc}") from None

    @event.listens_for(engine, "connect")
    def _take_over_transactions(dbapi_connection: Any, _record: Any) -> None:
        # Stop pysqlite from issuing its own BEGIN, so the "begin" hook below decides the kind.
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _postgresql_engine(url: URL, lock_timeout_seconds: int, idle_timeout_seconds: int) -> Engine:
    assert url.host is not None  # check_database_url insists on one
    parameters = {name: str(value) for name, value in url.query.items()}
    policy = tls_policy(url.host, parameters.get("sslmode"), parameters.get("sslrootcert"))
    context = ssl_context_for(policy)
    timeout = int(parameters.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT_SECONDS))
    server = f"{url.host}:{url.port or 5432}"
    engine = create_engine(
        url.set(query={}),  # the parameters are translated below; pg8000 would take them as unknown keywords
        pool_pre_ping=True,
        pool_size=1,  # one Lambda instance handles one batch at a time
        max_overflow=2,
        connect_args={
            "application_name": parameters.get("application_name", DEFAULT_APPLICATION_NAME),
            "timeout": timeout or None,  # libpq's 0: no limit
            "startup_params": {
                "lock_timeout": f"{lock_timeout_seconds}s",
                "idle_in_transaction_session_timeout": f"{idle_timeout_seconds}s",
            },
        },
    )

    @event.listens_for(engine, "do_connect")
    def _connect_by_policy(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        def connect(ssl_context: Any) -> Any:
            return dialect.loaded_dbapi.connect(*cargs, **{**cparams, "ssl_context": ssl_context})

        return open_connection(connect, policy, context, server)

    return engine
