"""Every timeout and limit of a server, in one frozen dataclass.

Each default names the precedent it follows. Times are in seconds; ``None``
means "no limit" where a field allows it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from gshutdown.protocol.forwarded import TrustedProxies
from gshutdown.protocol.parser import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_REQUEST_LINE,
)

#: Values of ``cert_reqs``.
CERT_REQS = ("none", "optional", "required")


@dataclass(frozen=True)
class Config:
    """Server settings. All times are seconds."""

    #: How long a kept-alive connection may wait for its next request
    #: (uvicorn ``timeout_keep_alive=5``, hypercorn ``keep_alive_timeout=5``).
    idle_timeout: Optional[float] = 5.0
    #: From the first byte of a request to the end of its head; then 408
    #: (Go's ``ReadHeaderTimeout``; slowloris protection).
    read_header_timeout: Optional[float] = 10.0
    #: Longest wait for the next piece of a request body the application is
    #: reading (gunicorn's ``timeout=30`` bounds the same stall).
    read_body_timeout: Optional[float] = 30.0
    #: Slowest request body accepted, in bytes per second: the time spent
    #: waiting for a body's bytes may total ``read_body_timeout`` plus one
    #: second per ``min_body_rate`` bytes received, so a client trickling a
    #: byte at a time cannot hold a connection for ever (Apache
    #: mod_reqtimeout's ``body=20,MinRate=500``; Go bounds the whole request
    #: with ``ReadTimeout``). Time the application spends between reads does
    #: not count. None: only ``read_body_timeout`` per read.
    min_body_rate: Optional[float] = 500.0
    #: Largest request body, in bytes: a larger Content-Length is answered 413
    #: before the application runs, a chunked body with 413 when it passes
    #: the limit (nginx ``client_max_body_size``). None: no limit.
    max_body_size: Optional[int] = None
    #: Longest time one response write may take against a client not reading
    #: (Go's ``WriteTimeout``; gunicorn ``timeout=30``).
    write_timeout: Optional[float] = 30.0
    #: Read deadline given to idle connections when a shutdown starts: a
    #: request that arrives within it is still served (the seed's 100 ms).
    idle_grace: float = 0.1
    #: How long a closing connection keeps reading (and discarding) after
    #: sending FIN, so that unread bytes do not turn the close into a reset
    #: (Apache's lingering close waits up to 2 s).
    linger_timeout: float = 2.0
    #: Unread request body we discard to keep a connection alive, in bytes;
    #: more and the connection is closed instead (Go: 256 KiB).
    max_discard_body: int = 256 * 1024
    #: Longest request line, in bytes (414 beyond).
    max_request_line: int = DEFAULT_MAX_REQUEST_LINE
    #: Largest request head, in bytes (431 beyond).
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    #: Most header fields in a request (431 beyond).
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT
    #: Longest single header field, name and value, in bytes (431 beyond);
    #: None: only ``max_header_bytes`` (gunicorn ``limit_request_field_size=8190``).
    max_field_size: Optional[int] = None
    #: Most connections served at once; the rest wait in the accept backlog
    #: until one closes (gunicorn ``worker_connections=1000`` for its gevent
    #: worker). None: no limit.
    max_connections: Optional[int] = 1000
    #: Most WebSockets open at once; an upgrade beyond it gets 503, so that
    #: WebSockets never take every ``max_connections`` slot from plain HTTP.
    #: None: nine tenths of ``max_connections`` (no limit when that has none).
    max_websockets: Optional[int] = None
    #: Largest WebSocket message received through ``wsgi.websocket``, in bytes
    #: (fragments and decompression included); beyond it, Close 1009 (the
    #: ``websockets`` library's ``max_size``: 1 MiB).
    max_websocket_message: int = 1024 * 1024
    #: Most connections hijacked at once (WebSockets and other upgrades):
    #: they do not count against ``max_connections``, so they can never take
    #: every slot from plain HTTP; past this limit a hijack is refused and
    #: answered 503. None: no limit.
    max_hijacked: Optional[int] = 1000
    #: Listen backlog for sockets the server binds (gunicorn ``backlog=2048``).
    backlog: int = 2048
    #: Permission bits of a unix socket the server binds, e.g. ``0o660``
    #: (connecting needs write permission); None: as the umask leaves them.
    unix_socket_mode: Optional[int] = None
    #: Whether connections may be kept alive between requests.
    keep_alive: bool = True
    #: Whether ``wsgi.file_wrapper`` files on plain sockets go out with
    #: ``sendfile()`` (else reads and writes, as over TLS).
    sendfile: bool = True
    #: ``Server`` header value; empty to send none.
    server_header: str = "gshutdown"
    #: Pin glibc's malloc thresholds when the server starts (process-wide;
    #: see ``gshutdown.server.allocator``): without it, large request bodies can
    #: cost a page fault per 4 KiB received.
    tune_malloc: bool = True

    # -- behind a proxy (see ``gshutdown.protocol.forwarded``) --
    #: Peers whose ``X-Forwarded-For``/``X-Forwarded-Proto``/``Forwarded``
    #: headers and PROXY protocol addresses are believed: comma-separated IP
    #: addresses and CIDR networks, ``"*"`` for every peer; unix-socket peers
    #: always are (gunicorn ``forwarded_allow_ips="127.0.0.1,::1"``).
    forwarded_allow_ips: str = "127.0.0.1,::1"
    #: Take ``REMOTE_ADDR``/``REMOTE_PORT`` and ``wsgi.url_scheme`` from a
    #: trusted peer's forwarding headers (uvicorn ``proxy_headers=True``).
    proxy_headers: bool = True
    #: Every connection begins with a PROXY protocol v1 or v2 header (HAProxy
    #: ``send-proxy``, nginx ``proxy_protocol``, AWS NLB); one that does not
    #: gets 400 and is closed. Read within ``read_header_timeout`` of the
    #: accept (gunicorn ``proxy_protocol=False``).
    proxy_protocol: bool = False
    #: gunicorn's ``secure_scheme_headers``: ``(HEADER, VALUE)`` pairs; from a
    #: trusted peer, a listed header at VALUE makes ``wsgi.url_scheme`` https,
    #: at any other value http, and listed headers that disagree get 400.
    #: None: the scheme comes from ``X-Forwarded-Proto`` or ``Forwarded``.
    secure_scheme_headers: Optional[tuple[tuple[str, str], ...]] = None
    #: gunicorn's ``forwarder_headers``: upper-cased names of headers with
    #: ``_`` that a trusted peer may send into the environ (``SCRIPT_NAME``
    #: mounts the app under its value; the others become ``HTTP_<NAME>``);
    #: ``"*"``: any. Other names with ``_`` are dropped, from every peer.
    forwarder_headers: tuple[str, ...] = ("SCRIPT_NAME", "PATH_INFO")

    # -- TLS (see ``gshutdown.server.tls``) --
    #: PEM certificate chain; setting it serves HTTPS (gunicorn ``certfile``).
    certfile: Optional[str] = None
    #: PEM private key; None: it is in ``certfile`` (gunicorn ``keyfile``).
    keyfile: Optional[str] = None
    #: PEM CA bundle to verify client certificates with (gunicorn ``ca_certs``).
    ca_certs: Optional[str] = None
    #: Client certificates: ``"none"``, ``"optional"`` or ``"required"``;
    #: None: ``"required"`` with ``ca_certs``, else ``"none"`` (gunicorn
    #: ``cert_reqs``, uvicorn ``ssl_cert_reqs``, whose default is none).
    cert_reqs: Optional[str] = None
    #: OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's own);
    #: None: Python's defaults (gunicorn ``ciphers``).
    ciphers: Optional[str] = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{field.name} must not be negative, got {value!r}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.max_websockets is not None:
            if self.max_websockets < 1:
                raise ValueError("max_websockets must be at least 1")
            if self.max_connections is not None and self.max_websockets >= self.max_connections:
                raise ValueError(
                    f"max_websockets ({self.max_websockets}) must be less than max_connections "
                    f"({self.max_connections}), so that plain HTTP keeps a connection slot"
                )
        if self.min_body_rate is not None and self.min_body_rate <= 0:
            raise ValueError("min_body_rate must be more than 0 bytes per second (None: no minimum)")
        if self.unix_socket_mode is not None and self.unix_socket_mode > 0o777:
            raise ValueError(f"unix_socket_mode must be permission bits (0 to 0o777), got {self.unix_socket_mode:#o}")
        TrustedProxies(self.forwarded_allow_ips)  # raises ValueError naming the bad entry
        if self.certfile is None:
            for name in ("keyfile", "ca_certs", "cert_reqs", "ciphers"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} needs certfile (TLS is off without it)")
        if self.cert_reqs not in (None, *CERT_REQS):
            raise ValueError(f"cert_reqs must be one of {', '.join(CERT_REQS)}, not {self.cert_reqs!r}")
        if self.cert_reqs in ("optional", "required") and self.ca_certs is None:
            raise ValueError(f"cert_reqs={self.cert_reqs!r} needs ca_certs to verify client certificates with")

    @property
    def websocket_limit(self) -> Optional[int]:
        """``max_websockets``, or its default: nine tenths of ``max_connections``, rounded down (None: no limit)."""
        if self.max_websockets is not None:
            return self.max_websockets
        if self.max_connections is None:
            return None
        return self.max_connections * 9 // 10  # 0 with a single connection: no WebSockets

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)
