"""HTTPS: the server's TLS context, and connections that speak TLS.

The accept loop never does TLS work: an accepted socket is handed to its
connection's greenlet as for plain HTTP, and the handshake runs there, as the
last step of the prelude (after a PROXY header, which comes first on the
wire). It is driven on the non-blocking socket with the connection's own
interruptible waits, so it is bounded by the prelude's deadline
(``read_header_timeout`` after the accept) and, the connection being NEW
until its first request byte, a shutdown cuts it to ``idle_grace`` like any
other NEW connection's wait.

Reads go straight to OpenSSL (``_ssl._SSLSocket.read``), waiting as plain
reads do; writes go through gevent's ``SSLSocket.sendall`` under
``write_timeout``. Closing: a connection closed between requests (idle at a
shutdown, after ``Connection: close``, after an error response) first sends
TLS ``close_notify``, so the client sees a clean end, then FIN; one forced
closed mid-response does not, so the client can tell a cut-off response from
a complete one.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any, Optional

from gevent import ssl as gevent_ssl
from gevent.socket import wait_write

from gshutdown.config.server_config import Config
from gshutdown.server.connection import Connection
from gshutdown.server.errors import ClientDisconnected
from gshutdown.server.socket_io import RECV_SIZE
from gshutdown.server.state import ConnState

log = logging.getLogger("gshutdown")

#: Longest wait, in seconds, for room in the send buffer to send
#: ``close_notify`` (only a client that stopped reading makes us wait).
CLOSE_NOTIFY_TIMEOUT = 1.0

_VERIFY_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class TLSConfigError(ValueError):
    """A TLS setting cannot be used (missing file, bad key, bad cipher list); one line, naming it."""


def _refuse_password() -> str:
    # Without a callback, OpenSSL would prompt on the terminal for the
    # passphrase of an encrypted key, and a server would hang at start.
    raise TLSConfigError("keyfile is encrypted; give an unencrypted key")


def server_context(config: Config) -> gevent_ssl.SSLContext:
    """The server-side TLS context that ``config``'s TLS fields describe.

    TLS 1.2 and newer, ALPN ``http/1.1``, no renegotiation. Built once per
    server, at construction, so a bad setting fails the start, not the first
    handshake.

    Raises:
        TLSConfigError: a file is missing or unreadable, the key does not
            match the certificate, or the cipher list selects nothing.
    """
    assert config.certfile is not None
    context = gevent_ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    setting = "certfile"
    try:
        context.load_cert_chain(config.certfile, config.keyfile, password=_refuse_password)
        if config.ciphers is not None:
            setting = "ciphers"
            context.set_ciphers(config.ciphers)
        if config.ca_certs is not None:
            setting = "ca_certs"
            context.load_verify_locations(config.ca_certs)
    except TLSConfigError:
        raise
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        if setting == "certfile" and config.keyfile is not None:
            setting = "certfile/keyfile"
        value = {"ciphers": config.ciphers, "ca_certs": config.ca_certs}.get(setting, config.certfile)
        raise TLSConfigError(f"{setting} {value}: {getattr(exc, 'strerror', None) or exc}") from None
    reqs = config.cert_reqs or ("required" if config.ca_certs is not None else "none")
    context.verify_mode = _VERIFY_MODES[reqs]
    context.set_alpn_protocols(["http/1.1"])
    return context


class TLSConnection(Connection):
    """A connection that speaks HTTP over TLS once its handshake is done.

    Until then (PROXY header, handshake) it is a plain connection: errors in
    the prelude are answered, if at all, in the clear.
    """

    #: The OpenSSL object once the handshake is complete; None before, and
    #: again once ``close_notify`` has been sent (what follows is raw bytes
    #: to discard while lingering).
    _tls: Any = None
    #: Set with the ``close_notify``: nothing may be sent after it.
    _tls_closed = False

    def _prepare(self) -> bool:
        return super()._prepare() and self._handshake()

    def _handshake(self) -> bool:
        """Wrap the socket and complete the server handshake; False: close."""
        deadline = self._prelude_deadline()
        context: gevent_ssl.SSLContext = self.server.ssl_context
        try:
            # Takes over the file descriptor (the plain socket object is detached).
            wrapped: Any = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            log.debug("TLS with %s: %s", self.peer, exc)
            return False
        self.sock = wrapped
        # The stdlib socket and the OpenSSL object under gevent's SSLSocket,
        # for waits and reads that the server's deadlines can interrupt.
        self._raw = wrapped._sock
        tls = wrapped._sslobj
        if tls is None:  # the client was already gone
            return False
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if not self._wait_readable(self._prelude_timeout(deadline)):
                    log.debug("TLS handshake with %s: no progress by its deadline; closing", self.peer)
                    return False
            except ssl.SSLWantWriteError:
                if not self._wait_writable(self._prelude_timeout(deadline)):
                    return False
            except ssl.SSLError as exc:
                log.debug("TLS handshake with %s failed: %s", self.peer, exc)
                if exc.reason == "HTTP_REQUEST":
                    self._refuse_plain_http()
                return False
            except OSError as exc:
                log.debug("TLS handshake with %s failed: %s", self.peer, exc)
                return False
        self._tls = tls
        return True

    def _refuse_plain_http(self) -> None:
        # A plain HTTP request on the HTTPS port: say so, in plain HTTP (no
        # TLS session yet, so send() writes in the clear).
        self.send_error(400, "Bad Request (plain HTTP sent to the HTTPS port)")
        self._linger_close()

    def _wait_writable(self, timeout: Optional[float]) -> bool:
        try:
            wait_write(self._raw.fileno(), timeout=timeout)
        except TimeoutError:
            return False
        return True

    # -- reading and writing ---------------------------------------------------

    def _recv(self, timeout: Optional[float], wait_first: bool = False, size: int = RECV_SIZE) -> Optional[bytes]:
        tls = self._tls
        if tls is None:
            return super()._recv(timeout, wait_first, size)
        # Decrypted bytes OpenSSL already holds do not make the socket readable.
        if wait_first and not tls.pending() and not self._wait_readable(timeout):
            return None
        while True:
            try:
                data: bytes = tls.read(size)
                return data
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLWantWriteError:
                if not self._wait_writable(timeout):
                    return None
                continue
            except (ssl.SSLError, ConnectionError) as exc:
                # close_notify (SSLZeroReturnError), EOF without it, or a
                # broken record: the stream ends here either way.
                if not isinstance(exc, ssl.SSLZeroReturnError):
                    log.debug("TLS read from %s ended: %s", self.peer, exc)
                return b""
            if timeout is not None and timeout <= 0:
                return None
            if not self._wait_readable(timeout):
                return None

    def send(self, data: bytes) -> None:
        if self._tls is None:
            if self._tls_closed:
                raise ClientDisconnected("the TLS session is closed")
            super().send(data)  # the prelude's answers, in the clear
            return
        try:
            self.sock.sendall(data)
        except OSError as exc:  # ssl.SSLError, and TimeoutError at write_timeout
            raise ClientDisconnected(f"sending the response failed: {exc}") from exc

    # -- closing -----------------------------------------------------------------

    def send_parts(self, head: bytes, body: bytes) -> None:
        self.send(head + body)  # one TLS record stream: no sendmsg on the plain socket

    def _may_park(self) -> bool:
        # Decrypted bytes OpenSSL already holds would never make the socket readable.
        tls = self._tls
        return tls is not None and not tls.pending() and not self.server.shutdown_started

    def _close_parked(self) -> None:
        # From the hub, which cannot wait: close_notify is sent if the send
        # buffer takes it at once (an idle connection's is empty), then FIN.
        tls, self._tls = self._tls, None
        if tls is not None:
            self._tls_closed = True
            try:
                tls.shutdown()
            except OSError:
                pass
        super()._close_parked()

    def _bytes_waiting(self) -> bool:
        # Decrypted bytes OpenSSL holds are not in the kernel's count.
        tls = self._tls
        return (tls is not None and tls.pending() > 0) or super()._bytes_waiting()

    def _send_close_notify(self) -> None:
        """Tell the client, over TLS, that we are done writing (without waiting for its reply)."""
        tls, self._tls = self._tls, None
        if tls is None:
            return
        self._tls_closed = True
        deadline = time.monotonic() + CLOSE_NOTIFY_TIMEOUT
        while True:
            try:
                tls.shutdown()
                return
            except ssl.SSLWantWriteError:
                if not self._wait_writable(max(0.0, deadline - time.monotonic())):
                    return
            except OSError:
                # SSLWantReadError included: ours is sent, and the client's
                # reply is not worth waiting for.
                return

    def _linger_close(self) -> None:
        if not self.state.terminal:
            self._send_close_notify()
        super()._linger_close()

    def _end_output(self) -> None:
        self._send_close_notify()  # a clean end of the TLS session; later sends fail
        super()._end_output()

    def _close_now(self) -> None:
        if self.state in (ConnState.NEW, ConnState.IDLE):
            # Between requests: a clean end. ACTIVE here means cut off (a
            # forced close, an application error mid-response): no close_notify.
            self._send_close_notify()
        self._tls = None
        super()._close_now()
