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

A value PostgreSQL or SQLite would only refuse at connect time (a NUL in a name, an application name or a user
name longer than PostgreSQL keeps, a SQLite file in a folder that does not exist) is refused here too: such a
failure is permanent, and at connect time it would look like an outage and be retried. Messages show the
names of query parameters but only the values of those that cannot be secret (``SHOWN_PARAMETERS``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pg8000.exceptions import DatabaseError, InterfaceError
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError

from ckpt.errors import ConfigurationError
from ckpt.setting_values import shown_setting

URL_FORMS = "postgresql+pg8000://USER:PASSWORD@HOST:PORT/DATABASE or sqlite:///PATH"
PERCENT_ENCODING = (
    "percent-encode special characters in the user name and password "
    "(@ as %40, : as %3A, / as %2F, ? as %3F, # as %23, % as %25; urllib.parse.quote(password, safe='') does it)"
)
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SUPPORTED_PARAMETERS = ("sslmode", "sslrootcert", "connect_timeout", "application_name")
# The parameters whose values a message may show: none of them can hold a secret. Any other value is ***.
SHOWN_PARAMETERS = ("sslmode", "sslrootcert", "connect_timeout")
DEFAULT_APPLICATION_NAME = "checkpoint-promotion"
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10
MAX_CONNECT_TIMEOUT_SECONDS = 3600  # an hour: far beyond any Lambda's patience; 0 still means no limit (libpq)
# PostgreSQL keeps NAMEDATALEN - 1 bytes of a name (a role, a database, an application name) and cuts the rest.
MAX_NAME_BYTES = 63
SQLITE_HEADER = b"SQLite format 3\x00"
RDS_CA_HINT = (
    "Amazon RDS: download AWS's global-bundle.pem into the layer; layers/ckpt/certs/global-bundle.pem is "
    "/opt/python/certs/global-bundle.pem in Lambda"
)

# --- reading and checking URLs ------------------------------------------------------------------------------


def parse_database_url(text: str, source: str = "the database URL") -> URL:
    """``text`` as a checked SQLAlchemy URL, or a ConfigurationError that names ``source`` and hides credentials."""
    text = text.strip()
    if _not_utf8(text):  # e.g. an environment variable with bytes that are not UTF-8; nothing could encode it
        raise ConfigurationError(f"{source} is not valid UTF-8 text: write it again, percent-encoding the password")
    scheme, separator, rest = text.partition("://")
    if not separator or not re.fullmatch(r"[\w+]+", scheme):
        raise ConfigurationError(f"{source} is not a database URL: expected {URL_FORMS}")
    if rest.count("@") > 1:
        # user:p@ss@host reads as password "p" on host "ss@host": refuse to guess where the host starts.
        raise ConfigurationError(
            f"{source} ({redacted(text)}) has more than one '@', so its host cannot be told from its password: "
            f"{PERCENT_ENCODING}"
        )
    parsed = _port_problem(rest) or _sqlalchemy_url(text)
    if isinstance(parsed, str):  # raised here, outside the except, so no library error (and its text) is chained
        raise ConfigurationError(f"{source} ({redacted(text)}) {parsed}")
    blank = _parameters_without_values(rest)
    if blank:  # SQLAlchemy drops "?sslmode" and "?sslmode=" without a word: the setting would silently not apply
        raise ConfigurationError(
            f"{source} ({redacted(text)}) has parameters without a value: {', '.join(blank)}; write name=value"
        )
    if "@" in rest and not parsed.username:
        raise ConfigurationError(
            f"{source} ({redacted(text)}) has an '@' but no user name before it "
            f"(expected {URL_FORMS}): {PERCENT_ENCODING}"
        )
    return check_database_url(parsed, source)


PORT_TEXT = re.compile(r"[0-9]{1,5}")  # ASCII digits only: int() also takes '٥٤٣٢', ' 5432' and '+5432'


def _port_problem(rest: str) -> str | None:
    """What is wrong with the port written after the host (SQLAlchemy's reading of where it is), if anything."""
    authority = rest.rpartition("@")[2] if "@" in rest else rest
    port = re.match(r"(?:\[[^/?]*\]|[^/:?]*)(?::([^/?]*))?", authority)
    text = port.group(1) if port else None
    if text is None or PORT_TEXT.fullmatch(text):
        return None
    return f"has a port that is not a number from 1 to 65535; if the password holds ':' or '@', {PERCENT_ENCODING}"


def _parameters_without_values(rest: str) -> list[str]:
    query = rest.rpartition("@")[2].partition("?")[2] if "@" in rest else rest.partition("?")[2]
    pairs = [pair.partition("=") for pair in query.split("&") if pair]
    return [_shown_name(name) for name, _, value in pairs if not value]


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
            raise _invalid(url, source, f"asks for the SQLite driver {shown_setting(driver)}; use sqlite:///PATH")
        _check_sqlite_url(url, source)
        return url
    if backend not in ("postgresql", "postgres"):
        raise _invalid(url, source, f"is for {shown_setting(backend)}, which is not supported: use {URL_FORMS}")
    if driver not in ("", "pg8000"):
        raise _invalid(
            url,
            source,
            f"asks for the driver {shown_setting(driver)}; only pg8000 is installed: use postgresql+pg8000://",
        )
    url = url.set(drivername="postgresql+pg8000")
    if not url.username:
        raise _invalid(url, source, f"has no user name: expected {URL_FORMS}")
    if not url.host:
        raise _invalid(url, source, f"has no host: expected {URL_FORMS}")
    if not is_host_name(url.host):
        # Not shown: a password with an unescaped '@', ':' or '/' is what usually ends up here.
        hidden = url.set(host="...")
        raise _invalid(hidden, source, f"has a host that is not a host name or an IP address: {PERCENT_ENCODING}")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise _invalid(url, source, "has a port that is not a number from 1 to 65535")
    for part, value in (("user name", url.username), ("password", url.password), ("database name", url.database)):
        problem = _name_problem(value, limit=None if part == "password" else MAX_NAME_BYTES)
        if problem:  # the password and the user name are never shown; nor is a database name that is wrong
            shown_url = url.set(database="...") if part == "database name" else url
            raise _invalid(shown_url, source, f"has a {part} that {problem}")
    _check_parameters(url, source)
    return url


def _name_problem(value: str | None, limit: int | None) -> str | None:
    """Why PostgreSQL cannot take ``value`` as a name or password (it is sent as a NUL-terminated string)."""
    if value is None:
        return None
    if _not_utf8(value):
        return "is not valid UTF-8 text"
    if "\x00" in value:
        return "holds a NUL character, which PostgreSQL cannot take"
    if limit is not None and len(value.encode("utf-8")) > limit:
        return f"is longer than {limit} bytes, PostgreSQL's limit for names (it would cut the rest off)"
    return None


def _not_utf8(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (an undecodable byte of an environment variable, or JSON's \\ud800)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_sqlite_url(url: URL, source: str) -> None:
    if url.username or url.password or url.host or url.port:
        raise _invalid(
            url, source, "names a server, but SQLite opens a file: use sqlite:///PATH (or sqlite:// for memory)"
        )
    if url.query:
        # pysqlite would take timeout, isolation_level, uri... from the URL and fight this service's own settings
        # (its lock timeout, its BEGIN IMMEDIATE), or silently ignore the rest.
        names = sorted({_shown_name(name) for name in url.query})
        raise _invalid(
            url,
            source,
            f"has parameters ({', '.join(names)}), but a SQLite URL takes none here: use sqlite:///PATH "
            "(the lock timeout is the service's own)",
        )
    if url.database and ("\x00" in url.database or _not_utf8(url.database)):
        raise _invalid(url.set(database="..."), source, "has a path with a NUL character or that is not valid text")


def _check_parameters(url: URL, source: str) -> None:
    unsupported = sorted({_shown_name(name) for name in url.query} - set(SUPPORTED_PARAMETERS))
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
        raise _invalid(url, source, f"has sslmode={shown_setting(sslmode)}; use one of {', '.join(SSL_MODES)}")
    if sslrootcert is not None and (_not_utf8(sslrootcert) or not sslrootcert.isprintable()):
        raise _invalid(
            url, source, "has an sslrootcert with a NUL, a control character or invalid text: give the CA file's path"
        )
    if sslrootcert == "system" and sslmode not in (None, "verify-full"):
        # libpq's rule: trusting every public CA is only safe if the host name is checked too.
        raise _invalid(url, source, f"has sslrootcert=system with sslmode={sslmode}; system needs verify-full")
    if "connect_timeout" in parameters and connect_timeout(parameters["connect_timeout"]) is None:
        raise _invalid(
            url,
            source,
            f"has a connect_timeout that is not a whole number of seconds from 0 to {MAX_CONNECT_TIMEOUT_SECONDS} "
            "(0: no limit; written in ASCII digits)",
        )
    if "application_name" in parameters:
        problem = _application_name_problem(parameters["application_name"])
        if problem:
            raise _invalid(url, source, f"has an application_name that {problem}")


def connect_timeout(text: str) -> int | None:
    """``connect_timeout`` in seconds, or None when it is not 0 to MAX_CONNECT_TIMEOUT_SECONDS in ASCII digits.
    The digits are checked before int(): int() takes '²'-like digits and refuses 5,000 of them with ValueError."""
    if not re.fullmatch(r"[0-9]{1,9}", text):
        return None
    seconds = int(text)
    return seconds if seconds <= MAX_CONNECT_TIMEOUT_SECONDS else None


def _application_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the application name. PostgreSQL takes only printable ASCII (it rewrites the rest)
    and keeps 63 bytes; a NUL breaks the startup packet and a long name overflows it. Refused, not rewritten or
    cut, so what pg_stat_activity shows is exactly what was configured."""
    if not re.fullmatch(r"[ -~]*", name):
        return "holds characters other than printable ASCII (letters, digits, punctuation, spaces)"
    if len(name) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} characters, PostgreSQL's limit (it would cut the rest off)"
    return None


def _invalid(url: URL, source: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"{source} ({redacted(_renderable(url).render_as_string())}) {problem}")


def _renderable(url: URL) -> URL:
    """``url`` without its credentials (*** in their place, as redacted() shows them), and with any text that
    cannot be encoded (a lone surrogate, from a secret's JSON) as "...", so rendering it cannot fail."""

    def clean(text: str) -> str:
        return "..." if _not_utf8(text) else text

    query = {
        clean(name): tuple(map(clean, value)) if isinstance(value, tuple) else clean(value)
        for name, value in url.query.items()
    }
    credentials = "***" if url.username or url.password else None
    database = clean(url.database) if url.database else url.database
    return url._replace(username=credentials, password=None, database=database).set(query=query)


def _shown_name(name: str) -> str:
    """A query parameter's name as a message shows it: a plain word, or a placeholder for anything else."""
    return name if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) else "(a name that is not a plain word)"


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
    scheme = scheme if len(scheme) <= 40 else "..."
    if "@" in rest:
        return f"{scheme}://***@{_masked_parameters(rest.rpartition('@')[2])}"
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    _, colon, port = authority.rpartition(":")
    if colon and not PORT_TEXT.fullmatch(port):
        return f"{scheme}://***"
    return f"{scheme}://{_masked_parameters(rest)}"


def _masked_parameters(text: str) -> str:
    """The query's names (a name that is not a plain word as ***), with only SHOWN_PARAMETERS' values: any
    other value may be a secret (?pwd=, ?token=, ?options=-c...). Very long text is cut."""
    head, question_mark, query = text.partition("?")
    head = head if len(head) <= 200 else f"{head[:200]}..."
    if not question_mark:
        return head
    pairs = [pair.partition("=") for pair in query.split("&")]
    masked = []
    for name, equals, value in pairs:
        plain = re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) is not None
        limit = 300 if name == "sslrootcert" else 40  # a path may be long; an sslmode or a timeout never is
        visible = plain and name in SHOWN_PARAMETERS and re.fullmatch(rf"[A-Za-z0-9_.~%+/:-]{{0,{limit}}}", value)
        masked.append(f"{name if plain else '***'}{equals}{value if visible or not value else '***'}")
    return f"{head}?{'&'.join(masked)}"


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
    except ValueError:  # a NUL or a lone surrogate in the path (check_database_url refuses both in URLs)
        problem = "the path is not valid text"
    else:
        context.check_hostname = policy.verification == "full"
        context.verify_mode = ssl.CERT_NONE if policy.verification == "none" else ssl.CERT_REQUIRED
        return context
    path = policy.rootcert if policy.rootcert is None or len(policy.rootcert) <= 300 else "(a very long path)"
    raise ConfigurationError(
        f"sslrootcert {path!r} is not a readable file of PEM CA certificates ({problem}); "
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


def _check_sqlite_file(database: str | None) -> None:
    """Refuse, before any connection, a SQLite file that could never be opened: at connect time SQLite says only
    "unable to open database file", which looks like an outage and is retried. :memory: needs no file."""
    if not database or database == ":memory:":
        return
    path = os.path.abspath(database)  # pysqlite's reading of a relative path: from the working directory
    folder = os.path.dirname(path)
    shown_path, shown_folder = (text if len(text) <= 300 else f"{text[:300]}..." for text in (path, folder))
    if os.path.isdir(path):
        raise ConfigurationError(
            f"the SQLite database {shown_path} is a folder: name a file in it "
            f"(sqlite:///{os.path.join(shown_path, 'ckpt.db')})"
        )
    if not os.path.isdir(folder):
        raise ConfigurationError(
            f"the SQLite database {shown_path} cannot be created: its folder {shown_folder} "
            "does not exist (or is not a folder); create it, or name a file in an existing folder"
        )
    try:
        with open(path, "rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return  # SQLite creates it
    except OSError as exc:
        raise ConfigurationError(
            f"the SQLite database {shown_path} cannot be read ({exc.strerror}): "
            "fix its permissions or name another file"
        ) from None
    if header and header != SQLITE_HEADER:  # an empty file is an empty database to SQLite
        raise ConfigurationError(
            f"the SQLite database {shown_path} is not a SQLite database file: name another file (or move this one)"
        )


def make_engine(url: str | URL, *, lock_timeout_seconds: int = 30, idle_timeout_seconds: int = 900) -> Engine:
    url = parse_database_url(url) if isinstance(url, str) else check_database_url(url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, lock_timeout_seconds)
    return _postgresql_engine(url, lock_timeout_seconds, idle_timeout_seconds)


def _sqlite_engine(url: URL, lock_timeout_seconds: int) -> Engine:
    _check_sqlite_file(url.database)
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
    timeout = connect_timeout(parameters.get("connect_timeout", str(DEFAULT_CONNECT_TIMEOUT_SECONDS)))
    server = f"{url.host}:{url.port or 5432}"
    engine = create_engine(
        url.set(query={}),  # the parameters are translated below; pg8000 would take them as unknown keywords
        # Autocommit: a statement alone is its own transaction, and the store sends BEGIN/COMMIT itself where
        # it needs one (one round trip each; pg8000's DBAPI commit() and rollback() spend three). Nothing is
        # rolled back on checkin, since autocommit leaves nothing open (the store rolls back what it began).
        isolation_level="AUTOCOMMIT",
        skip_autocommit_rollback=True,
        pool_reset_on_return=None,
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

    _ping_when_idle(engine, PING_AFTER_IDLE_SECONDS)

    @event.listens_for(engine, "do_connect")
    def _connect_by_policy(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        def connect(ssl_context: Any) -> Any:
            return dialect.loaded_dbapi.connect(*cargs, **{**cparams, "ssl_context": ssl_context})

        return open_connection(connect, policy, context, server)

    return engine


# A connection idle this long may have been closed by the server, a proxy or a NAT (a Lambda environment is
# frozen between invocations): it is pinged before use. A busy one is not, which saves a round trip each time.
PING_AFTER_IDLE_SECONDS = 30.0


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """SQLAlchemy's pool_pre_ping, but only for a connection idle longer than ``idle_seconds``."""

    @event.listens_for(engine, "checkin")
    def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("checked_in")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        except Exception as exc:  # gone: the pool discards it and connects anew
            raise DisconnectionError(f"connection idle for {time.monotonic() - idle_since:.0f} s is gone") from exc
