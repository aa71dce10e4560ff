"""TLS to the real PostgreSQL server: libpq's sslmode values, the default, and fallbacks that never downgrade a
failed verification. Needs the local server with ``ssl = on`` (CI turns it on with Debian's snakeoil certificate);
a server that refuses TLS is played by a small proxy that answers the TLS request with 'N'."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from ckpt.adapters.db.engine import make_engine
from ckpt.adapters.db.store import PromotionStore
from ckpt.config import database_url_from_secret
from ckpt.errors import ConfigurationError
from tests.conftest import PG_ADMIN_URL
from tests.support import self_signed_ca_pem

pytestmark = pytest.mark.postgres

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
ENABLE_TLS = """the local PostgreSQL must offer TLS for these tests; as root:
  [ -f /etc/ssl/certs/ssl-cert-snakeoil.pem ] || make-ssl-cert generate-default-snakeoil
  psql -h 127.0.0.1 -U postgres -c "ALTER SYSTEM SET ssl_cert_file = '/etc/ssl/certs/ssl-cert-snakeoil.pem'" \\
       -c "ALTER SYSTEM SET ssl_key_file = '/etc/ssl/private/ssl-cert-snakeoil.key'" \\
       -c "ALTER SYSTEM SET ssl = on" -c "SELECT pg_reload_conf()\""""


@dataclass(frozen=True)
class Server:
    """The local server as these tests see it."""

    url: URL  # the admin URL: user, database, and the address it listens on
    certificate: Path  # the certificate it presents (self-signed: its own CA)
    names: frozenset[str]  # the DNS names and IP addresses the certificate is valid for
    named_host: str  # one of those names that resolves to this machine: what verify-full can connect by

    def at(self, host: str | None = None, port: int | None = None, **parameters: str) -> URL:
        return self.url.set(host=host or self.url.host, port=port or self.url.port, query=parameters)


@pytest.fixture(scope="session")
def server() -> Server:
    admin = make_url(PG_ADMIN_URL)
    engine = create_engine(admin)
    try:
        with engine.connect() as connection:
            ssl_on = connection.execute(text("SHOW ssl")).scalar_one()
            cert_file = Path(connection.execute(text("SHOW ssl_cert_file")).scalar_one())
            data_directory = Path(connection.execute(text("SHOW data_directory")).scalar_one())
    finally:
        engine.dispose()
    if ssl_on != "on":
        pytest.fail(ENABLE_TLS, pytrace=False)
    certificate = cert_file if cert_file.is_absolute() else data_directory / cert_file
    names = certificate_names(certificate.read_bytes())
    local = [name for name in sorted(names) if not _is_ip(name) and resolves_to_loopback(name)]
    if not local:
        pytest.fail(
            f"no name in {certificate} ({', '.join(sorted(names))}) resolves to this machine, so verify-full cannot "
            "be tested: Debian's snakeoil certificate names `hostname -f`, which /etc/hosts must map to 127.0.0.1",
            pytrace=False,
        )
    return Server(url=admin, certificate=certificate, names=frozenset(names), named_host=local[0])


def certificate_names(pem: bytes) -> set[str]:
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(pem)
    try:
        alternative = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common = certificate.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        return {str(attribute.value) for attribute in common}
    return {*alternative.get_values_for_type(x509.DNSName)} | {
        str(address) for address in alternative.get_values_for_type(x509.IPAddress)
    }


def resolves_to_loopback(name: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(address).is_loopback for address in addresses)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


@pytest.fixture(scope="session")
def unrelated_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed nothing the server presents."""
    path = tmp_path_factory.mktemp("ca") / "unrelated-ca.pem"
    path.write_bytes(self_signed_ca_pem("Unrelated Test CA"))
    return path


@pytest.fixture
def system_cas(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[Path], None]:
    """Replace what OpenSSL takes for the system's trusted CAs (read when an engine's SSL context is made)."""

    def trust_only(bundle: Path) -> None:
        empty = tmp_path / "no-certs"
        empty.mkdir(exist_ok=True)
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        monkeypatch.setenv("SSL_CERT_DIR", str(empty))

    return trust_only


def ssl_in_use(url: URL | str) -> bool:
    """Connect as the service does and ask the server whether this connection is encrypted."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            query = text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return bool(connection.execute(query).scalar_one())
    finally:
        engine.dispose()


# --- a server that offers no TLS ------------------------------------------------------------------------------


class TlsRefusingProxy:
    """Forwards connections to the real server, but answers a client's TLS request with 'N' itself, as a server
    with ``ssl = off`` does; everything after that passes through unencrypted."""

    def __init__(self, listen_host: str, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.refused = 0
        self._listener = socket.create_server((listen_host, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            first = _read_exactly(client, 8)
            if first == SSL_REQUEST:
                self.refused += 1
                client.sendall(b"N")
                first = b""
            with socket.create_connection(self.upstream) as server:
                server.sendall(first)
                back = threading.Thread(target=_pipe, args=(server, client), daemon=True)
                back.start()
                _pipe(client, server)
                back.join(timeout=5)

    def close(self) -> None:
        self._listener.close()


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):  # either side closing ends the copy
        while chunk := source.recv(65536):
            target.sendall(chunk)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


@pytest.fixture
def refusing_proxy(server: Server) -> Iterator[TlsRefusingProxy]:
    assert server.url.host is not None
    proxy = TlsRefusingProxy("127.0.0.1", (server.url.host, server.url.port or 5432))
    yield proxy
    proxy.close()


# --- the sslmode values --------------------------------------------------------------------------------------


def test_require_encrypts_without_verifying_the_certificate(server: Server, system_cas, unrelated_ca: Path) -> None:
    system_cas(unrelated_ca)  # nothing could verify the server's certificate: require must not try
    assert ssl_in_use(server.at(sslmode="require")) is True


def test_disable_is_plaintext(server: Server) -> None:
    assert ssl_in_use(server.at(sslmode="disable")) is False


def test_allow_is_plaintext_when_the_server_accepts_it(server: Server) -> None:
    assert ssl_in_use(server.at(sslmode="allow")) is False


def test_verify_full_connects_by_the_certificates_name_with_its_ca(server: Server) -> None:
    url = server.at(server.named_host, sslmode="verify-full", sslrootcert=str(server.certificate))
    assert ssl_in_use(url) is True


def test_verify_full_refuses_an_address_the_certificate_does_not_name(server: Server) -> None:
    host = next((h for h in ("127.0.0.1", "localhost") if h not in server.names), None)
    assert host, f"the server's certificate names both 127.0.0.1 and localhost: {sorted(server.names)}"
    with pytest.raises(ConfigurationError, match=f"{host}:5432 failed verification .*(mismatch|not valid)"):
        ssl_in_use(server.at(host, sslmode="verify-full", sslrootcert=str(server.certificate)))


def test_verify_full_against_a_ca_that_did_not_sign_it_fails_and_names_the_fix(
    server: Server, unrelated_ca: Path
) -> None:
    url = server.at(server.named_host, sslmode="verify-full", sslrootcert=str(unrelated_ca))
    with pytest.raises(ConfigurationError, match=r"failed verification.*sslrootcert.*global-bundle\.pem") as caught:
        ssl_in_use(url)
    assert "self-signed" in str(caught.value) or "unable to get" in str(caught.value)


def test_verify_ca_checks_the_chain_but_not_the_name(server: Server, unrelated_ca: Path) -> None:
    assert ssl_in_use(server.at("127.0.0.1", sslmode="verify-ca", sslrootcert=str(server.certificate))) is True
    with pytest.raises(ConfigurationError, match="failed verification"):
        ssl_in_use(server.at("127.0.0.1", sslmode="verify-ca", sslrootcert=str(unrelated_ca)))


def test_an_sslrootcert_makes_require_verify_the_chain_as_in_libpq(server: Server, unrelated_ca: Path) -> None:
    with pytest.raises(ConfigurationError, match="failed verification"):
        ssl_in_use(server.at(sslmode="require", sslrootcert=str(unrelated_ca)))


# --- the default -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_default_on_loopback_is_plaintext_as_the_tests_and_demo_expect(server: Server, host: str) -> None:
    assert ssl_in_use(server.at(host)) is False


def test_the_url_the_test_suite_uses_still_connects(server: Server) -> None:
    assert ssl_in_use(PG_ADMIN_URL) is False


def test_the_default_elsewhere_is_tls_verified_against_the_system_cas(server: Server, system_cas) -> None:
    system_cas(server.certificate)
    assert ssl_in_use(server.at(server.named_host)) is True


def test_the_default_never_falls_back_to_plaintext_when_verification_fails(
    server: Server, system_cas, unrelated_ca: Path
) -> None:
    system_cas(unrelated_ca)
    engine = make_engine(server.at(server.named_host))
    with pytest.raises(ConfigurationError, match=f"{server.named_host}:5432 failed verification"):
        # Through the store too: a configuration error, not a DatabaseUnavailable to retry until the DLQ.
        PromotionStore(engine).missing_tables()
    engine.dispose()


def test_the_default_elsewhere_is_plaintext_when_the_server_offers_no_tls(
    server: Server, refusing_proxy: TlsRefusingProxy, system_cas, unrelated_ca: Path
) -> None:
    system_cas(unrelated_ca)  # irrelevant here: no certificate is ever presented
    assert ssl_in_use(server.at(server.named_host, refusing_proxy.port)) is False
    assert refusing_proxy.refused >= 1


def test_prefer_with_a_ca_falls_back_only_because_the_server_refused(
    server: Server, refusing_proxy: TlsRefusingProxy
) -> None:
    url = server.at("127.0.0.1", refusing_proxy.port, sslmode="prefer", sslrootcert=str(server.certificate))
    assert ssl_in_use(url) is False
    assert refusing_proxy.refused >= 1


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full"])
def test_modes_that_require_tls_fail_clearly_when_the_server_offers_none(
    server: Server, refusing_proxy: TlsRefusingProxy, sslmode: str
) -> None:
    url = server.at(server.named_host, refusing_proxy.port, sslmode=sslmode, sslrootcert=str(server.certificate))
    with pytest.raises(ConfigurationError, match=f"does not offer TLS, which sslmode={sslmode} requires"):
        ssl_in_use(url)


# --- the secret and the other parameters ---------------------------------------------------------------------


def test_the_secret_can_require_tls(server: Server) -> None:
    secret = {
        "username": server.url.username,
        "password": "p@ss:w/rd?#% (trust auth ignores it)",
        "host": server.url.host,
        "port": server.url.port,
        "dbname": server.url.database,
        "sslmode": "require",
    }
    assert ssl_in_use(database_url_from_secret(secret)) is True


def test_application_name_and_connect_timeout_are_translated(server: Server) -> None:
    engine = make_engine(server.at(sslmode="require", application_name="tls-test", connect_timeout="5"))
    with engine.connect() as connection:
        name = connection.execute(text("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"))
        assert name.scalar_one() == "tls-test"
    engine.dispose()


# --- values the server refuses only at connect time are refused before connecting ----------------------------
# These used to reach the server: a NUL breaks the startup packet and a 100k-character name overflows it, so the
# server closed the connection and the store raised DatabaseUnavailable, retried on every delivery for a setting
# that could never work; a huge connect_timeout was an OverflowError in the socket call. (A password holding NUL
# only got through because this server trusts local connections: no PostgreSQL password can hold one.)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"query": {"application_name": "a\x00b"}}, id="application-name-nul"),
        pytest.param({"query": {"application_name": "a" * 100_000}}, id="application-name-100k"),
        pytest.param({"query": {"application_name": "a" * 64}}, id="application-name-64"),
        pytest.param({"query": {"connect_timeout": "99999999999999999999"}}, id="connect-timeout-huge"),
        pytest.param({"query": {"connect_timeout": "²"}}, id="connect-timeout-superscript"),
        pytest.param({"username": "post\x00gres"}, id="user-nul"),
        pytest.param({"username": "p" * 20_000}, id="user-20k"),
        pytest.param({"database": "post\x00gres"}, id="database-nul"),
        pytest.param({"password": "Zq7\x00Xw9"}, id="password-nul"),
    ],
)
def test_values_the_server_would_refuse_are_configuration_errors_not_outages(
    server: Server, changes: dict[str, object]
) -> None:
    url = server.url.set(**changes)
    with pytest.raises(ConfigurationError) as caught:
        PromotionStore(make_engine(url)).missing_tables()  # before: DatabaseUnavailable, or OverflowError
    assert "Zq7" not in str(caught.value) and "aaaaaaaa" not in str(caught.value)
    assert len(str(caught.value)) < 700


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param(
            {"query": {"application_name": "ckpt promoter: eu-west-1/prod #3 (a~z) " + "x" * 24}}, id="name-63"
        ),
        pytest.param({"query": {"connect_timeout": "3600"}}, id="connect-timeout-3600"),
        pytest.param({"query": {"connect_timeout": "0"}}, id="connect-timeout-0"),
    ],
)
def test_values_at_the_limits_reach_the_server_intact(server: Server, changes: dict[str, object]) -> None:
    url = server.url.set(**changes)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            name = connection.execute(
                text("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
            ).scalar_one()
    finally:
        engine.dispose()
    expected = dict(url.query).get("application_name", "checkpoint-promotion")
    assert name == expected and len(name) <= 63
