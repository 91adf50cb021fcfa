"""Certificates for the TLS tests, made by the ``openssl`` binary when the tests run.

Nothing is checked in: a server certificate for ``localhost``, ``127.0.0.1``
and ``::1`` (self-signed, so clients verify against the certificate itself),
a CA with one client certificate for mutual TLS, and the server key again
encrypted with a passphrase. EC P-256 keys: quick to make and to handshake.
A missing ``openssl`` fails the tests that need it (Debian: ``openssl``).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tests.helpers import recv_until_closed

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]


@dataclass(frozen=True)
class TLSFiles:
    #: Server certificate (self-signed) and its key.
    cert: Path
    key: Path
    #: A CA for client certificates, and one client certificate it signed.
    client_ca: Path
    client_cert: Path
    client_key: Path
    #: The server key, encrypted with the passphrase "secret".
    encrypted_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_server_cert(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for localhost, 127.0.0.1 and ::1: ``NAME.pem`` and ``NAME.key``."""
    _openssl(
        "req", "-x509", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1", cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_tls_files(directory: Path) -> TLSFiles:
    """Make every file of ``TLSFiles`` in ``directory``."""
    make_server_cert(directory)
    _openssl(
        "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=gshutdown test CA", cwd=directory
    )
    _openssl("req", *_EC, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=test client", cwd=directory)
    _openssl(
        "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-out", "client.pem", cwd=directory,
    )  # fmt: skip
    _openssl("pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret", "-out", "encrypted.key", cwd=directory)
    return TLSFiles(
        cert=directory / "server.pem",
        key=directory / "server.key",
        client_ca=directory / "ca.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        encrypted_key=directory / "encrypted.key",
    )


def client_context(files: TLSFiles, *, client_cert: bool = False) -> ssl.SSLContext:
    """A client context that trusts the test server's certificate (and presents the client one)."""
    context = ssl.create_default_context(cafile=str(files.cert))
    if client_cert:
        context.load_cert_chain(str(files.client_cert), str(files.client_key))
    return context


def tls_connect(
    files: TLSFiles,
    address: tuple[str, int],
    *,
    timeout: float = 10.0,
    client_cert: bool = False,
    sock: Optional[socket.socket] = None,
) -> ssl.SSLSocket:
    """A TLS client connection to ``address``, handshake done.

    ``suppress_ragged_eofs=False``: a close without ``close_notify`` raises
    ``ssl.SSLEOFError`` instead of reading as a clean end, so tests can tell
    the two apart. ``sock``: an already-connected socket to wrap (after a
    PROXY header, say).
    """
    if sock is None:
        sock = socket.create_connection(address, timeout=timeout)
    sock.settimeout(timeout)
    return client_context(files, client_cert=client_cert).wrap_socket(
        sock, server_hostname="localhost", suppress_ragged_eofs=False
    )


def read_until_close_notify(sock: ssl.SSLSocket, timeout: float = 10.0) -> bytes:
    """Everything until the server's ``close_notify``.

    Raises:
        ssl.SSLEOFError: the server closed without ``close_notify`` (the
            socket came from ``tls_connect``).
    """
    return recv_until_closed(sock, timeout)


def served_certificate(address: tuple[str, int], timeout: float = 10.0) -> bytes:
    """The certificate (DER) the server at ``address`` presents, unverified."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(address, timeout=timeout) as plain, context.wrap_socket(plain) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(pem_file: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_file.read_text())


def raw_after_close_notify(sock: ssl.SSLSocket, timeout: float = 10.0) -> bytes:
    """What the TCP stream holds after the ``close_notify`` was read: ``b""`` is FIN.

    Reads a duplicate of the descriptor, sending nothing: answering with our
    own ``close_notify`` (``unwrap()``) would hit a server that has closed,
    and its reset could beat the FIN we want to see.
    """
    with socket.fromfd(sock.fileno(), sock.family, sock.type) as raw:
        raw.settimeout(timeout)
        return raw.recv(1)
