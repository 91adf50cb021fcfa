"""One accepted connection: its parser, its state, its request loop, its body.

(Over 500 lines on purpose: the request loop, body reads and the closes share
the parser, the per-request state and the wait state, and each piece is
short; the socket waits and writes under them are ``socket_io.SocketIO``.)

Strategy: the connection's greenlet pulls events from the parser and reads
the socket only when the parser needs more bytes, so a request body is read as
fast as the application reads ``wsgi.input`` and a pipelined request waits,
unread by the application, until the response before it is complete.

Every wait for bytes is a wait on "readable, or a deadline". The deadline is a
timer the server may shorten from outside (``shorten_wait()``), which is how a
shutdown gives an idle connection a short read deadline without throwing an
exception into a greenlet that may, by the time it lands, be serving a request.

Before the first request comes the prelude (``_prepare()``): the PROXY
protocol header when configured, and in ``gshutdown.server.tls`` the TLS handshake,
all within ``read_header_timeout`` of the accept, the connection NEW all along.

States move only through ``state.move()``: NEW on accept, ACTIVE on the first
byte of a request (or when a pipelined one is already buffered), IDLE after a
response when nothing of the next request has arrived, and CLOSED or HIJACKED
exactly once at the end, however the connection ends (``serve()``'s finally).
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Optional

from gevent import GreenletExit, getcurrent, idle
from gevent import socket as gsocket

from gshutdown.protocol import (
    Data,
    EndOfMessage,
    Event,
    ProtocolError,
    Request,
    RequestParser,
)
from gshutdown.protocol.proxy_protocol import V1_MAX_LENGTH, ProxyHeader, ProxyProtocolError, parse_proxy_header
from gshutdown.protocol.writer import error_response
from gshutdown.server.errors import BadRequestBody, BodyTimeout, ClientDisconnected, HijackRefused
from gshutdown.server.socket_io import RECV_SIZE, SocketIO
from gshutdown.server.state import ACTIVE, CLOSED, HIJACKED, IDLE, NEW, TERMINAL_STATES, ConnState, move

if TYPE_CHECKING:  # pragma: no cover
    from gshutdown.server.going_away import GoingAway
    from gshutdown.server.http_server import HTTPServer

log = logging.getLogger("gshutdown")

#: Per read of a request body: bigger reads drain the socket in fewer turns
#: (a 1 MiB POST went from ~800 to ~2,800 requests/s on loopback).
BODY_RECV_SIZE = 256 * 1024
#: A body read gives the other greenlets a turn after this many bytes, or
#: ``YIELD_CHUNKS`` chunks, read without one: a client that sends faster than
#: the server parses never makes the connection wait, and so would never let
#: anything else run (about 0.5 ms of parsing at most, for 1,024 small chunks).
YIELD_BYTES = 1024 * 1024
YIELD_CHUNKS = 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLIENT_GONE = (ConnectionError, TimeoutError, BrokenPipeError)
# Connection ids: a global counter (a class attribute is a slower lookup).
_connection_ids = itertools.count(1)
#: Seconds a connection waits for its next request on its greenlet, after a
#: response, before it parks (gives the greenlet up and waits on its watcher
#: alone). A client that sends its next request within it (load, a page's
#: next resource) costs no greenlet spawn; an idle one holds no greenlet
#: past it.
PARK_AFTER = 0.05


class _ReadTimeout(Exception):
    """A read deadline passed before the bytes we waited for arrived."""


class Connection(SocketIO):
    """A client connection, from accept to its terminal state.

    Attributes users may read (e.g. in a ``conn_state`` hook):
        id: a number unique within the process.
        peer: the client's address (``(host, port)``; ``""`` for unix sockets).
        state: the current ``ConnState``.
        created: ``time.monotonic()`` at accept, in seconds.
        request_line: the current or last request line, e.g. ``"GET / HTTP/1.1"``.
        requests: how many requests have been read on this connection.
        proxy_header: the PROXY protocol header it began with (with
            ``Config.proxy_protocol``), a ``ProxyHeader``; else None.
        response_status: the status line of the current or last response whose
            head was sent, e.g. ``"200 OK"`` (``""`` while none was).
    """

    # The parking, reclaiming and per-request state lives in slots, outside
    # the instance dict: past 30 attributes CPython gives every instance a
    # dict of its own (1.5 KiB) instead of one sharing its class's keys
    # (issue 21's RSS per idle connection; tests/test_connection_parking.py
    # checks the dict stays shared).
    __slots__ = (
        "_body_started",
        "_body_wait_left",
        "_bytes_since_yield",
        "_chunks_at_yield",
        "_idle_deadline",
        "_reclaimed",
        "body_done",
        "body_received",
        "expect_continue",
        "head_started",
        "idle_since",
        "parked",
        "reading_head",
        "response_started",
        "response_status",
    )
    #: True while the connection waits between requests with no greenlet
    #: (``_park``): its watcher and deadline timer call back in the hub.
    parked: bool
    #: ``time.monotonic()`` by which an idle connection's next request must
    #: begin (None: no limit); kept while parked, for the greenlet that resumes it.
    _idle_deadline: Optional[float]
    #: Set when the server reclaims the connection's slot (``reclaim``).
    _reclaimed: bool
    #: ``time.monotonic()`` when the connection last became IDLE, and when the
    #: first byte of the request whose head is being read arrived (while
    #: ``reading_head``): what reclaiming at the connection cap orders by.
    idle_since: float
    head_started: float
    #: True from the first byte of a request until its head is complete.
    reading_head: bool

    # Class-level defaults: set per connection only when in use.
    proxy_header: Optional[ProxyHeader] = None
    #: Whether the application took a hijacked socket over for good (``detach()``).
    detached = False
    #: Whether the current request's body was cut for being too slow (the
    #: server answered 408 if the response had not started, and closes).
    body_cut = False
    #: Then, the status line the client got: ``"408 Request Timeout"``, or the
    #: application's if its response had begun. (``response_status`` is the
    #: application's last try, which goes nowhere after a cut.)
    cut_status = ""
    #: Whether this connection's forwarding headers are believed (set by the WSGI adapter).
    forwarded_trusted = False
    #: Set by the owner of a hijacked connection that can end it when a
    #: shutdown asks (a WebSocket): see ``gshutdown.server.going_away``.
    going_away: Optional[GoingAway] = None

    def __init__(self, server: HTTPServer, sock: Any, peer: Any) -> None:
        self.id = next(_connection_ids)
        self.server = server
        self.config = server.config
        SocketIO.__init__(self, sock, server.config.write_timeout)
        self.peer = peer
        self.state = NEW
        self.observer = server.registry.observe
        self.created = time.monotonic()
        self.requests = 0
        #: The greenlet serving this connection (set by the server at spawn).
        self.greenlet: Any = None
        self._parser = self._new_parser()
        self.parked = False
        self._idle_deadline = None
        self._reclaimed = False
        self.idle_since = self.head_started = 0.0
        self.reading_head = False
        # Per-request state, reset by _begin_request().
        self.request: Optional[Request] = None
        self.body_done = True
        self.body_received = 0
        # Seconds read_body() may still wait for the client, this body (see
        # Config.min_body_rate); None: no total bound.
        self._body_wait_left: Optional[float] = None
        # time.monotonic() when the body's request head was read (set when it has a body).
        self._body_started = 0.0
        # Body bytes and the parser's chunk count since the last turn given to
        # the other greenlets (see YIELD_BYTES).
        self._bytes_since_yield = 0
        self._chunks_at_yield = 0
        self.expect_continue = False
        self.response_started = False
        self.response_status = ""
        #: The WSGI adapter's environ entries for this connection (built on first use).
        self.environ_base: Optional[dict[str, Any]] = None
        server.registry.register(self)

    def __repr__(self) -> str:
        return f"<Connection #{self.id} {self.peer!r} {self.state.name}>"

    def _new_parser(self) -> RequestParser:
        config = self.config
        return RequestParser(
            max_request_line=config.max_request_line,
            max_header_bytes=config.max_header_bytes,
            max_header_count=config.max_header_count,
            max_field_size=config.max_field_size,
            max_body_size=config.max_body_size,
        )

    @property
    def request_line(self) -> str:
        """The current or last request line, e.g. ``"GET / HTTP/1.1"`` (``""`` before any)."""
        request = self.request
        if request is None:
            return ""
        return f"{request.method} {request.target} HTTP/{request.http_version}"

    @property
    def waiting(self) -> bool:
        """True while the connection waits, NEW or IDLE, for the first byte of a request."""
        return (self._wake is not None or self.parked) and (self.state is IDLE or self.state is NEW)

    @property
    def age(self) -> float:
        """Seconds since the connection was accepted."""
        return time.monotonic() - self.created

    # -- the request loop ---------------------------------------------------

    def serve(self) -> None:
        """Serve requests until the connection closes or is hijacked."""
        try:
            if self.requests:
                # A parked connection resumed (serve() runs once otherwise,
                # before any request): the prelude is long done.
                self._serve_requests()
                return
            raw = self._raw
            if raw.family in (socket.AF_INET, socket.AF_INET6):
                # Without it every kept-alive response waits ~40 ms on Nagle
                # plus the client's delayed ACK.
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.sock is not raw:
                self.sock.settimeout(self.config.write_timeout)
            if self._prepare():
                self._serve_requests()
        except GreenletExit:
            pass  # forced close by the server: nothing to report per request
        except _CLIENT_GONE:
            pass
        except OSError as exc:
            log.debug("connection %r ended: %s", self, exc)
        except Exception:
            log.exception("internal error on %r", self)
        finally:
            if self.parked:
                # Waiting on its watcher, greenlet-free: nothing to close.
                return  # noqa: B012 - every exception was handled above
            if self.state is not HIJACKED:
                self._close_now()
            elif not self.detached:
                # The handler is done, and nobody took the socket over: close
                # it (the peer is often gone already) rather than leave it and
                # its registry entry to the next shutdown.
                self._close_socket()
                self.server.registry.forget(self)
            self._parser.close()
            self._close_waits()

    def _prepare(self) -> bool:
        """What comes before the first request (the PROXY header); False: close."""
        if self.config.proxy_protocol:
            return self._read_proxy_header()
        return True

    def _prelude_timeout(self, deadline: Optional[float]) -> Optional[float]:
        """Seconds the next wait before the first request may take.

        The whole prelude (PROXY header, TLS handshake) must end by
        ``deadline`` (``read_header_timeout`` after the accept). The
        connection is NEW all along, so once a shutdown has started each wait
        gets ``idle_grace`` at most, as a NEW connection waiting for its
        first byte does.
        """
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if self.server.shutdown_started and (timeout is None or timeout > self.config.idle_grace):
            timeout = self.config.idle_grace
        return timeout

    def _prelude_deadline(self) -> Optional[float]:
        """``time.monotonic()`` by which the prelude must be over (None: no limit)."""
        timeout = self.config.read_header_timeout
        return None if timeout is None else self.created + timeout

    def _read_proxy_header(self) -> bool:
        """Read exactly the PROXY header (the next byte may be TLS's); False: close.

        Bytes are peeked, and only those known to be header are taken, so a
        client's first bytes stay in the socket for whoever reads next. A
        malformed header gets 400 and the connection closes: nothing reaches
        the application.
        """
        raw = self._raw
        deadline = self._prelude_deadline()
        received = b""
        wanted = V1_MAX_LENGTH
        while True:
            try:
                peeked = raw.recv(wanted - len(received), socket.MSG_PEEK)
            except BlockingIOError:
                peeked = None
            except InterruptedError:
                continue
            except ConnectionError:
                return False
            if peeked is not None:
                if not peeked:
                    return False
                try:
                    header, length = parse_proxy_header(received + peeked)
                except ProxyProtocolError as exc:
                    log.info("connection from %s refused: %s", self.peer, exc)
                    self.send_error(400, "Bad Request (invalid PROXY protocol header)")
                    self._linger_close()
                    return False
                # Peeked bytes are in the socket already: these reads take
                # them without waiting. Incomplete, every byte peeked is header.
                taken = raw.recv(len(peeked) if header is None else length - len(received))
                received += taken
                if header is not None:
                    self.proxy_header = header
                    return True
                wanted = length
            if not self._wait_readable(self._prelude_timeout(deadline)):
                return False

    def _serve_requests(self) -> None:
        server = self.server
        parser = self._parser
        while True:
            if not parser.in_message and not parser.has_events:
                # Between requests: nothing of the next one has arrived yet.
                after_response = self.state is ACTIVE
                if after_response:
                    move(self, IDLE)
                    self.idle_since = time.monotonic()
                if not self._await_next_request(after_response):
                    return
            event = parser.next_event()
            if event is None:  # the head is incomplete (usually it came whole in one read)
                self.reading_head = True
                event = self._read_head()
                self.reading_head = False
            if event is None:
                return
            if type(event) is ProtocolError:
                self._reject(event.status, event.reason)
                return
            if type(event) is not Request:
                return  # ConnectionClosed
            keep_alive = self._serve_request(event)
            if self.state is HIJACKED:
                return
            if not keep_alive or not server.keep_alives_enabled or not (self.body_done or self._finish_body()):
                self._linger_close()
                return

    def _await_next_request(self, after_response: bool) -> bool:
        """Wait, NEW or IDLE, for the first byte of a request; False: close.

        Right after a response, a client that waits for it has sent nothing
        yet: wait for readability before reading rather than read, fail with
        EAGAIN, and then wait anyway.
        """
        server = self.server
        parser = self._parser
        timeout = self.config.idle_grace if server.shutdown_started else self.config.idle_timeout
        if self.state is IDLE and not after_response:
            # Resumed after parking: the deadline set when it went idle stands.
            deadline = self._idle_deadline
            if deadline is not None:
                timeout = (
                    max(0.0, deadline - time.monotonic())
                    if timeout is None
                    else min(timeout, max(0.0, deadline - time.monotonic()))
                )
        else:
            deadline = None if timeout is None else time.monotonic() + timeout
        if after_response and self._may_park() and (timeout is None or timeout > PARK_AFTER):
            data = self._recv(PARK_AFTER, wait_first=True)
            if data is None and server.keep_alives_enabled and not self._reclaimed:
                # Quiet: wait on the watcher alone, and let the greenlet go.
                self._park(deadline)
                return False
            # A shutdown or keep-alive's end cut the wait: the loop decides.
        else:
            data = self._recv(timeout, wait_first=after_response)
        while True:
            if data is None and server.shutdown_started and self._bytes_waiting():
                # The deadline and a request may have crossed: take what is
                # already here rather than close under it.
                data = self._recv(0)
            if not data:
                # At EOF, or on an idle connection at shutdown (nothing of ours
                # is unread), serve() closes at once: a client that keeps its
                # end open cannot hold up the shutdown. An idle timeout lingers.
                if data is None and not server.shutdown_started:
                    self._linger_close()
                return False
            parser.feed(data)
            if parser.in_message or parser.has_events:
                move(self, ACTIVE)
                self.head_started = time.monotonic()
                return True
            # Empty lines only, which RFC 9112 2.2 says to ignore: still idle,
            # and the wait goes on to the same deadline. A shutdown that began
            # meanwhile could not shorten this wait (none was pending): cut it.
            now = time.monotonic()
            if server.shutdown_started:
                grace_end = now + self.config.idle_grace
                deadline = grace_end if deadline is None else min(deadline, grace_end)
            data = self._recv(None if deadline is None else deadline - now, wait_first=True)

    # -- parking: idle with no greenlet ------------------------------------------

    def _may_park(self) -> bool:
        """True if nothing of the next request is buffered above the socket (TLS: in OpenSSL)."""
        return self.sock is self._raw and not self.server.shutdown_started

    def _park(self, deadline: Optional[float]) -> None:
        """Give the greenlet up; readable bytes or the deadline resume the connection (in the hub).

        The connection stays IDLE in the registry, unchanged for the hook and
        for a shutdown, which closes it from the hub (``end_wait``).
        """
        self.parked = True
        self._idle_deadline = deadline
        self.greenlet = None
        # Nothing is buffered in them: a new parser and environ cache on
        # resuming cost less than keeping these (2.8 KiB) per idle connection.
        self._parser.close()
        self._parser = None  # type: ignore[assignment]
        self.environ_base = None
        if self._reusable_timer is not None:
            # Only a parked deadline runs while parked: one timer per idle
            # connection, not two. The next wait makes its own again.
            self._reusable_timer.close()
            self._reusable_timer = None
            self._reusable_seconds = -1.0
        self._watch_parked(
            self._parked_readable,
            self._parked_deadline_passed,
            None if deadline is None else deadline - time.monotonic(),
        )

    def _parked_readable(self) -> None:
        # In the hub: the next request (or EOF) arrived.
        self._unwatch_parked()
        self._resume()

    def _parked_deadline_passed(self) -> None:
        # In the hub: idle_timeout passed, or the shutdown's grace ended (end_wait).
        self._unwatch_parked()
        if self.server.shutdown_started and not self._bytes_waiting():
            # Nothing of ours is unread: close() sends FIN, not RST, with no greenlet.
            self._close_parked()
        else:
            # Bytes crossed the deadline (served), or the idle timeout's lingering close.
            self._resume()

    def _resume(self) -> None:
        """Serve the parked connection on a greenlet again, from where it parked."""
        self.parked = False
        self._parser = self._new_parser()
        self.greenlet = self.server.spawn_connection(self)

    def _close_parked(self) -> None:
        """Close a parked connection now, from whatever greenlet or hub callback calls."""
        # Parked, it has no reusable timer (_park closed it), and _close_now()
        # closes the watcher before the socket.
        self.parked = False
        self._end_deadline_timer()
        self._close_now()

    def _read_head(self) -> Optional[Event]:
        """The next request head (or error), once the rest of it arrives; sends 408 itself on a timeout."""
        timeout = self.config.read_header_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self._next_event(deadline)
        except _ReadTimeout:
            self._reject(408, "Request Timeout")
            return None

    def _serve_request(self, request: Request) -> bool:
        self.requests += 1
        server = self.server
        server.requests_total += 1
        if server.requests_total >= server.request_limit:
            server.request_limit_reached()
        self.request = request
        self.body_done = not request.has_body
        self.body_received = 0
        config = self.config
        if self.body_done:
            self._body_wait_left = None
        else:
            self._body_started = time.monotonic()
            self._chunks_at_yield = 0
            if config.min_body_rate is None or config.read_body_timeout is None:
                self._body_wait_left = None
            else:
                self._body_wait_left = config.read_body_timeout
        if self.body_done:
            # Pull the EndOfMessage that follows a body-less head right away,
            # so the connection knows the request is complete.
            event = self._parser.next_event()
            if type(event) is not EndOfMessage:  # pragma: no cover - llhttp invariant
                raise RuntimeError(f"expected EndOfMessage, got {event!r}")
        self.expect_continue = request.expect_continue
        self.response_started = False
        self.response_status = ""
        observer = server.request_observer
        if observer is None:
            return server.handler.handle(self, request)
        started = time.perf_counter()
        keep_alive = server.handler.handle(self, request)
        if self.body_cut:
            self.response_status = self.cut_status  # what the observer counts is what went out
        observer(self, started)
        return keep_alive

    # -- what the WSGI layer calls -------------------------------------------

    def read_body(self, size: int = BODY_RECV_SIZE) -> bytes:
        """The next piece of request body; ``b""`` once it is complete.

        A piece read from the socket is at most ``size`` bytes; one the parser
        already holds (received with the head, or de-chunked) may be longer.

        A body that comes too slowly (``read_body_timeout`` for one wait, or
        under ``min_body_rate``) is cut: the client gets 408 unless the
        response has begun, one line is logged, the request counts as cut
        (``HTTPServer.requests_cut``), nothing more is sent on the connection,
        and it closes.

        Raises:
            BodyTimeout: the body was cut for being too slow (a ClientDisconnected).
            ClientDisconnected: the client closed mid-body.
            BadRequestBody: the body's framing is invalid.
        """
        try:
            return self._read_body(size)
        except BodyTimeout as exc:
            self._cut_body(exc)
            raise

    def _read_body(self, size: int) -> bytes:
        """``read_body()`` without what a cut does (``_finish_body()`` reads through it)."""
        if self.body_done:
            return b""
        if self.expect_continue:
            self.expect_continue = False
            if not self.response_started:
                self.send(_CONTINUE)
        config = self.config
        per_wait = config.read_body_timeout
        wait_left = self._body_wait_left  # None unless per_wait and min_body_rate are set
        slow = wait_left is not None and per_wait is not None and wait_left < per_wait
        timeout = wait_left if slow else per_wait
        started = time.monotonic()
        parser = self._parser
        left = parser.body_remaining
        try:
            if left:
                # A Content-Length body: straight from the socket to the caller.
                data = self._recv(timeout, size=min(size, left))
                if data is None:
                    raise _ReadTimeout()
                if data:
                    parser.skip_body(len(data))
                    event: Event = Data(data)
                else:
                    parser.feed(b"")
                    event = self._next_event(None, BODY_RECV_SIZE)
            else:
                event = self._next_event(None if timeout is None else started + timeout, BODY_RECV_SIZE)
        except _ReadTimeout:
            raise BodyTimeout(
                "request body slower than min_body_rate" if slow else "timed out reading the request body"
            ) from None
        kind = type(event)
        if kind is Data:
            received = len(event.data)  # type: ignore[union-attr]
            self.body_received += received
            rate = config.min_body_rate
            if wait_left is not None and rate is not None:
                # Waiting for the client costs budget; bytes received earn it.
                self._body_wait_left = wait_left - (time.monotonic() - started) + received / rate
            unyielded = self._bytes_since_yield = self._bytes_since_yield + received
            if unyielded >= YIELD_BYTES or parser.chunk_count - self._chunks_at_yield >= YIELD_CHUNKS:
                self._yield_to_others()
            return event.data  # type: ignore[union-attr]
        if kind is EndOfMessage:
            self.body_done = True
            return b""
        if kind is ProtocolError:
            raise BadRequestBody(event.status, event.reason)  # type: ignore[union-attr]
        raise ClientDisconnected("client closed the connection mid-body")

    def _yield_to_others(self) -> None:
        """Let the hub poll for I/O and run what is ready, then go on reading.

        ``idle()``, not ``sleep(0)``: gevent runs callbacks (what ``sleep(0)``
        waits on) until 50 of them have run and its switch interval (5 ms)
        has passed before it polls again, so greenlets that take turns with
        ``sleep(0)`` still keep every socket waiting (a probe's p99 went from
        4 to 144 ms beside two uploads that did).
        """
        self._bytes_since_yield = 0
        self._chunks_at_yield = self._parser.chunk_count
        idle()

    def _cut_body(self, exc: BodyTimeout) -> None:
        """A body was too slow: log it, count it, answer 408 if nothing was sent, and end the output."""
        self.body_cut = True
        self.server.requests_cut += 1
        log.info(
            "%s from %s: request body cut after %d bytes in %.1f s: %s",
            self.request_line,
            self.peer,
            self.body_received,
            time.monotonic() - self._body_started,
            exc,
        )
        if not self.response_started:
            self.send_error(408, "Request Timeout")
        self.cut_status = self.response_status
        # Nothing more goes out: whatever the application still writes fails
        # (ClientDisconnected), so a 408 is never followed by its response.
        self._end_output()

    def _end_output(self) -> None:
        """Send nothing more (FIN): later writes fail; reads go on until the close."""
        try:
            self._raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def hijack(self) -> tuple[socket.socket, bytes]:
        """Hand the socket to the application; see ``environ['gshutdown.hijack']``.

        Returns the socket, with no timeout (a gevent socket: blocking calls
        are cooperative), and the bytes already received after the head. The
        server closes the socket when the handler returns, unless it was
        ``detach()``ed.

        Raises:
            HijackRefused: ``Config.max_hijacked`` connections are hijacked
                already (the WSGI adapter answers 503).
        """
        if self.response_started:
            raise RuntimeError("cannot hijack after the response has started")
        if self.state is not ConnState.ACTIVE:
            raise RuntimeError(f"cannot hijack a {self.state.name} connection")
        limit = self.config.max_hijacked
        if limit is not None and self.server.registry.count(HIJACKED) >= limit:
            raise HijackRefused(f"{limit} connections are hijacked already (max_hijacked)")
        move(self, ConnState.HIJACKED)
        sock = self.sock
        if sock is self._raw:
            # The application gets a gevent socket: its blocking calls must
            # be cooperative. Same descriptor, so the watcher stays valid.
            raw = self._raw
            sock = self.sock = gsocket.socket(raw.family, raw.type, raw.proto, fileno=raw.detach())
            self._raw = sock._sock
        # The application decides how long its protocol may stay quiet: the
        # server's write_timeout would end every idle WebSocket, say.
        sock.settimeout(None)
        tunnelled = self._parser.tunnel_bytes
        self._parser.close()  # llhttp's ~1 KiB, held for as long as a WebSocket lives otherwise
        return sock, tunnelled

    def detach(self) -> None:
        """Tell the server a hijacked socket is no longer its business.

        Without it the server closes a hijacked socket when its handler
        returns, or when a shutdown ends if the handler is still running.
        Call this before the handler returns to keep the socket open past
        both (e.g. after handing it to another greenlet, which must then
        close it).
        """
        self.detached = True
        self.server.registry.forget(self)
        pool = self.server.pool
        if pool is not None and self.greenlet in pool:
            # Nor is whoever serves it: the shutdown must not join or kill it.
            pool.discard(self.greenlet)

    # -- shutdown support (called by the server from its own greenlet) --------

    def shorten_wait(self, seconds: float) -> bool:
        """Cut a pending wait for the next request to at most ``seconds``.

        Returns False when the connection is not waiting between requests.
        """
        if not self.waiting:
            return False
        self._end_deadline_timer()
        timer = self._hub.loop.timer(seconds)
        if self.parked:
            self._idle_deadline = time.monotonic() + seconds
            timer.start(self._parked_deadline_passed)
        else:
            timer.start(self._wake, False)
        self._deadline_timer = timer
        return True

    def end_wait(self) -> bool:
        """End a pending wait for the next request now, as its deadline would; False if not waiting.

        Called from the hub (a timer's callback): the shutdown ends the waits
        of every idle connection with one timer rather than one each. A
        parked connection is closed here, a waiting greenlet runs at once and
        closes its own; either is served instead if a request crossed the
        deadline.
        """
        if self.parked:
            # The common case, once per idle connection: closed here, with no
            # greenlet, unless a request crossed the deadline (then served).
            if self._bytes_waiting():
                self._idle_deadline = time.monotonic()
                self._unwatch_parked()
                self._resume()
            else:
                self._close_parked()
            return True
        if not self.waiting:
            return False
        self._wake(False)  # type: ignore[misc]
        return True

    def reclaim(self) -> bool:
        """Close this connection to free its slot for one waiting at the cap; False if it cannot be now.

        Only a connection waiting for bytes is reclaimed: IDLE (parked or
        not), NEW, or ACTIVE with its request head incomplete (answered 408).
        A request whose head is complete is never touched. The close lingers
        as an idle timeout's does, but the connection is CLOSED, and its slot
        free, before it lingers. Called from the hub.
        """
        if self.parked:
            if self._bytes_waiting():
                return False  # its next request is here: the watcher resumes it
            self._unwatch_parked()
            self._reclaimed = True
            self._idle_deadline = time.monotonic()
            self._resume()
            return True
        state = self.state
        if self._wake is None or not (state is IDLE or state is NEW or (state is ACTIVE and self.reading_head)):
            return False
        self._reclaimed = True
        self._wake(False)  # as the wait's deadline would: the greenlet closes it now
        return True

    def force_close(self) -> None:
        """End the connection now (the deadline path).

        A hijacked socket is closed under its owner. Otherwise the greenlet is
        killed and closes the socket on its way out (closing it here, under a
        pending wait, would leave a watcher on a dead descriptor).
        """
        if self.state is ConnState.HIJACKED:
            self.sock.close()
            self.server.registry.forget(self)
            return
        if self.parked:
            self._close_parked()
            return
        glet = self.greenlet
        if glet is not None and glet is not getcurrent() and not glet.dead:
            running = glet.gr_frame is not None
            glet.kill(block=False)
            if running:
                return
        # Never ran (or is us): nobody else will close it.
        self._close_now()

    # -- reading ---------------------------------------------------------------

    def _next_event(self, deadline: Optional[float], size: int = RECV_SIZE) -> Event:
        parser = self._parser
        while True:
            event = parser.next_event()
            if event is not None:
                return event
            data = self._recv(None if deadline is None else deadline - time.monotonic(), size=size)
            if data is None:
                raise _ReadTimeout()
            parser.feed(data)

    def _finish_body(self) -> bool:
        """Discard what the application left unread; False: too much, close."""
        if self.body_cut:
            return False
        budget = self.config.max_discard_body
        try:
            while not self.body_done:
                self.expect_continue = False  # never invite a body we will discard
                budget -= len(self._read_body(BODY_RECV_SIZE))
                if budget < 0:
                    return False
        except (ClientDisconnected, BadRequestBody):
            return False
        return True

    # -- writing and closing -------------------------------------------------

    def send_error(self, status: int, reason: str) -> None:
        """Send a complete error response that announces the close."""
        server = self.server
        self.response_started = True
        self.response_status = f"{status} {reason}"
        try:
            self.send(error_response(status, reason, date=server.http_date(), server=self.config.server_header))
        except OSError:
            pass

    def _reject(self, status: int, reason: str) -> None:
        """Answer a request head the server refuses (it never reaches the application), then close."""
        self.send_error(status, reason)
        observer = self.server.request_observer
        if observer is not None:
            observer(self, None)
        self._linger_close()

    def _linger_close(self) -> None:
        """Close gracefully: FIN first, then read until the peer's FIN.

        Closing with unread bytes in the receive queue makes the kernel send a
        reset, which can destroy a response the client has not read yet.
        """
        if self.state in TERMINAL_STATES:
            return
        move(self, CLOSED)
        try:
            self._raw.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_socket()
            return
        deadline = time.monotonic() + self.config.linger_timeout
        discarded = 0
        try:
            while discarded < self.config.max_discard_body:
                data = self._recv(deadline - time.monotonic())
                if not data:
                    break
                discarded += len(data)
        finally:
            self._close_socket()

    def _close_now(self) -> None:
        if self.state not in TERMINAL_STATES:
            move(self, CLOSED)
        self._close_socket()
